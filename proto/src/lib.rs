//! Generated protobuf and tonic code for idbase's gRPC interfaces.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("idbase.v1");
}

/// Encoded `FileDescriptorSet` of every idbase proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/idbase_descriptor.bin"));
