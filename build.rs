//! The API's code is generated in `signet-proto`. What is left here: the
//! OpenBao/Vault plugin protocol (`signet plugin`), generated with protox
//! (pure Rust, no system `protoc`) from our own files in `proto/`, written
//! from the wire facts of go-plugin and the OpenBao SDK; and telling cargo
//! to rebuild when a migration changes (`sqlx::migrate!` embeds
//! migrations/ at compile time but cannot).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=proto");
    let plugin = protox::compile(
        ["goplugin/plugin.proto", "vaultpb/backend.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure().compile_fds(plugin)?;
    Ok(())
}
