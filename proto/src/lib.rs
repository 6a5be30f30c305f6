//! idbase's gRPC interfaces: the generated protobuf and tonic code, and the
//! error contract ([`problem`]) its services and clients share.

#![warn(missing_docs)]

pub mod problem;

pub use problem::ProblemType;

/// Generated code: not held to the workspace's lints.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("idbase.v1");
}

/// Encoded `FileDescriptorSet` of every idbase proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/idbase_descriptor.bin"));
