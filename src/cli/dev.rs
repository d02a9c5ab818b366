//! `signet dev`: a development server on loopback with one RS256 ring,
//! keys sealed in its data directory under a KEK file it creates.

use std::{io::Write, net::SocketAddr};

use anyhow::{Context, bail};
use clap::Args;

use super::{ListenArgs, init_logging, shutdown_signal};
use crate::{
    crypto::{Algorithm, KeySpec},
    hardening,
    keyring::{Issuer, RingName},
    seal::{KekSpec, LocalKek},
    server::{self, ServerOptions},
};

/// Options of `signet dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(flatten)]
    listen: ListenArgs,
    /// KEK provider spec (file:PATH, env:VAR, pkcs11:...). Default: the
    /// file DATA_DIR/kek, created with mode 0600 on first start.
    #[arg(long)]
    kek: Option<String>,
    /// Issuer URL of the ring `default`, e.g. http://127.0.0.1:8080 (the
    /// HTTP listener): tokens get it as `iss`, and OIDC discovery is served
    /// at ISSUER/.well-known/openid-configuration.
    #[arg(long)]
    issuer: Option<String>,
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
        data_dir,
    } = args.listen;
    loopback_only("--grpc-listen", grpc_listen)?;
    loopback_only("--http-listen", http_listen)?;
    let issuer = args
        .issuer
        .as_deref()
        .map(|text| Issuer::parse(text, "--issuer"))
        .transpose()?;
    // Development machines rarely allow mlockall; say so and go on.
    hardening::harden_process(true)?;

    let kek = match args.kek {
        Some(spec) => spec.parse::<KekSpec>().context("--kek")?,
        None => {
            let path = data_dir.join("kek");
            server::create_data_dir(&data_dir)?;
            if !path.exists() {
                LocalKek::create_file(&path)?;
                tracing::info!(path = %path.display(), "created a development KEK file");
            }
            KekSpec::File(path)
        }
    };
    let opts = ServerOptions {
        grpc_listen: crate::config::GrpcListen::Tcp(grpc_listen),
        grpc_socket: (0o660, None),
        max_connection_age: (
            std::time::Duration::from_secs(3600),
            std::time::Duration::from_secs(60),
        ),
        shutdown_grace: crate::config::default_shutdown_grace(),
        http_listen,
        metrics_listen: None,
        data_dir: data_dir.clone(),
        store_url: None,
        refresh_interval: std::time::Duration::from_secs(5),
        max_staleness: std::time::Duration::from_secs(300),
        kek: kek.clone(),
        rings: vec![(
            RingName::parse("default", "ring")?,
            KeySpec::new(Algorithm::Rs256, 0)?,
            issuer,
        )],
        start_sealed: false,
        tls: None,
        authz_policy: None,
        audit: crate::audit::AuditConfig::new(vec![crate::audit::SinkConfig::file(
            data_dir.join("audit.log"),
        )]),
        checkpoint_sinks: Vec::new(),
        http_tls: None,
    };
    // Before anything says "listening": a SIGTERM from then on stops the
    // server cleanly.
    let shutdown = shutdown_signal();
    let prepared = server::prepare(&opts).await?;
    let (grpc_addr, http_addr) = (prepared.grpc_addr.clone(), prepared.http_addr);
    let ring = prepared.keys.ring_info("default", "ring")?;
    let active = ring
        .keys
        .iter()
        .find(|k| k.state == crate::keyring::KeyState::Active)
        .map(|k| k.kid.to_string())
        .unwrap_or_default();
    let banner = format!(
        "signet dev: development server (plaintext, no access control, loopback only)\n\
         \x20 gRPC  http://{grpc_addr}   (reflection on: grpcurl -plaintext {grpc_addr} list)\n\
         \x20 JWKS  http://{http_addr}/.well-known/jwks.json\n\
         \x20 metrics http://{http_addr}/metrics  (dev only: signet server keeps them off this listener)\n\
         \x20 status  http://{http_addr}/status  (read-only status page; signet server: on listen.metrics)\n\
         \x20 data  {data}  (keys sealed under KEK {kek}; audit log in it)\n\
         \x20 ring  default  {spec}  active kid {active}\n\
         {oidc}\
         try:\n\
         \x20 export SIGNET_ADDR=http://{grpc_addr}\n\
         \x20 signet sign --claims '{{\"sub\":\"alice\"}}'\n\
         \x20 signet jwks\n\
         Ctrl-C stops the server.\n",
        data = data_dir.display(),
        spec = ring.spec,
        oidc = match &ring.policy.issuer {
            Some(issuer) => format!(
                "  OIDC  {} (issuer {issuer}: the iss of every token)\n",
                issuer.discovery_url()
            ),
            None => String::new(),
        },
    );
    let mut out = std::io::stdout().lock();
    out.write_all(banner.as_bytes())?;
    out.flush()?;
    drop(out);
    tracing::warn!(
        "development mode: plaintext gRPC on loopback; the local caller has every grant"
    );
    prepared.serve(&opts, shutdown).await
}
