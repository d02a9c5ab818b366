//! Generates the gRPC code from `proto/` with protox (pure Rust): no system
//! `protoc` is needed. The encoded descriptor set is kept for server
//! reflection, so `grpcurl` works without the .proto file. The server traits
//! are generated only with the `server` feature.
use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["signet/v1/signet.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("signet_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(env::var_os("CARGO_FEATURE_SERVER").is_some())
        .compile_fds(fds)?;
    Ok(())
}
