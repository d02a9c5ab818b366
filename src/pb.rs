//! Generated protobuf and gRPC code for `signet.v1` (see
//! `proto/signet/v1/signet.proto`, where every message is documented).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("signet.v1");

/// The encoded descriptor set of the API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/signet_descriptor.bin"));
