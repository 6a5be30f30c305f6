//! Compiles `idbase/v1/*.proto` with protox, so nobody installs `protoc`.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "idbase/v1/identity.proto",
        "idbase/v1/phases.proto",
        "idbase/v1/admin.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["."])?;
    // Server reflection serves this descriptor set.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("idbase_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
