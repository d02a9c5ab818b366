//! `signet dev`: a development server on loopback with one RS256 ring.

use std::{io::Write, net::SocketAddr, sync::Arc};

use anyhow::{Context, bail};
use clap::Args;
use tokio::{net::TcpListener, sync::watch};

use super::{ListenArgs, init_logging, shutdown_signal};
use crate::{
    clock::SystemClock,
    crypto::{Algorithm, KeySpec},
    http,
    keyring::KeyManager,
    rpc,
};

/// Options of `signet dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    listen: ListenArgs,
}

fn loopback_only(flag: &str, addr: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!(
            "{flag} {addr}: signet dev serves plaintext without access control and only on \
             loopback (127.0.0.1 or [::1])"
        );
    }
    Ok(())
}

/// Runs the development server until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    init_logging();
    let ListenArgs {
        grpc_listen,
        http_listen,
        data_dir: _,
    } = args.listen;
    loopback_only("--grpc-listen", grpc_listen)?;
    loopback_only("--http-listen", http_listen)?;

    let keys = KeyManager::ephemeral(Arc::new(SystemClock)).await?;
    let ring = keys
        .create_ring(http::DEFAULT_RING, KeySpec::new(Algorithm::Rs256, 0)?)
        .await?;
    let grpc = TcpListener::bind(grpc_listen)
        .await
        .with_context(|| format!("--grpc-listen {grpc_listen}: cannot listen"))?;
    let web = TcpListener::bind(http_listen)
        .await
        .with_context(|| format!("--http-listen {http_listen}: cannot listen"))?;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = web.local_addr()?;
    let kid = ring
        .keys
        .first()
        .map(|k| k.kid.to_string())
        .unwrap_or_default();

    let banner = format!(
        "signet dev: development server (keys in memory only, plaintext, loopback only)\n\
         \x20 gRPC  http://{grpc_addr}   (reflection on: grpcurl -plaintext {grpc_addr} list)\n\
         \x20 JWKS  http://{http_addr}/.well-known/jwks.json\n\
         \x20 ring  default  {spec}  kid {kid}\n\
         try:\n\
         \x20 export SIGNET_ADDR=http://{grpc_addr}\n\
         \x20 signet sign --claims '{{\"sub\":\"alice\"}}'\n\
         \x20 signet jwks\n\
         Ctrl-C stops the server.\n",
        spec = ring.spec,
    );
    let mut out = std::io::stdout().lock();
    out.write_all(banner.as_bytes())?;
    out.flush()?;
    drop(out);
    tracing::warn!("development mode: plaintext gRPC, no access control, keys lost on exit");

    let (stop_tx, stop_rx) = watch::channel(());
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            // Resolves when the sender signals or is dropped.
            let _ = rx.changed().await;
        }
    };
    let grpc_task = tokio::spawn(rpc::serve(grpc, keys.clone(), stopped()));
    let http_task = tokio::spawn(http::serve(web, keys, stopped()));
    shutdown_signal().await;
    tracing::info!("shutting down");
    drop(stop_tx);
    grpc_task.await?.context("gRPC server failed")?;
    http_task.await?.context("HTTP server failed")?;
    tracing::info!("stopped");
    Ok(())
}
