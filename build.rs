//! Generates the gRPC code from `proto/` with protox (pure Rust): no system
//! `protoc` is needed. The encoded descriptor set is kept for server
//! reflection, so `grpcurl` works without the .proto file.
use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds migrations/sqlite at compile time but cannot
    // tell cargo to rebuild when a migration file changes.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile(["signet/v1/signet.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("signet_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // The OpenBao/Vault plugin protocol (`signet plugin`): our own files,
    // from the wire facts of go-plugin and the OpenBao SDK. Not part of the
    // reflected API.
    let plugin = protox::compile(
        ["goplugin/plugin.proto", "vaultpb/backend.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure().compile_fds(plugin)?;
    Ok(())
}
