//! The generated protobuf and gRPC code for `signet.v1`, from the
//! `signet-proto` crate (`signet-proto/proto/signet/v1/signet.proto`, where
//! every message is documented), under the name the server has always used.

pub use signet_proto::{FILE_DESCRIPTOR_SET, v1::*};
