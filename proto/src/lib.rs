//! The lth wire protocol (`lth.v1`), generated from `proto/lth/v1/lth.proto`.
//!
//! Kept in its own crate (as Ballista does) so that lthctl, the coordinator and the worker agree on
//! one definition and none of them has to link the others.

pub mod v1 {
    tonic::include_proto!("lth.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lth_v1_descriptor");
}
