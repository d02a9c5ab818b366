//! `signet server --config FILE`: the production server.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{check, init_logging, shutdown_signal};
use crate::{
    config::Config,
    hardening,
    seal::KekSpec,
    server::{self, ServerOptions},
};

/// Options of `signet server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The configuration file (TOML); see signet.example.toml.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration and exit without starting.
    #[arg(long)]
    check_config: bool,
    /// KEK provider spec, overriding seal.kek from the file.
    #[arg(long)]
    kek: Option<String>,
    /// Start sealed: serve Status and Unseal, refuse Sign until unsealed.
    #[arg(long)]
    start_sealed: bool,
    /// Run even if key memory cannot be locked against swapping.
    #[arg(long)]
    allow_unlocked_memory: bool,
}

/// Runs the server until Ctrl-C or SIGTERM.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let checked = Config::load(&args.config)?;
    let kek = match &args.kek {
        Some(spec) => spec.parse::<KekSpec>().context("--kek")?,
        None => checked.kek.clone(),
    };
    let c = &checked.config;
    if args.check_config {
        let report = check::check_all(&checked, &kek, check::When::CheckConfig).await;
        for line in &report.lines {
            println!("{line}");
        }
        report.result()?;
        println!(
            "{}: OK (gRPC {}, HTTP {}, data dir {}, KEK {kek}, {} ring(s))",
            args.config.display(),
            c.listen.grpc,
            c.listen.http,
            c.store.data_dir.display(),
            checked.rings.len()
        );
        return Ok(());
    }
    init_logging();
    let hardened =
        hardening::harden_process(args.allow_unlocked_memory || c.seal.allow_unlocked_memory)?;
    // Everything is checked before anything is created: a configuration
    // that fails leaves no data directory, store or socket behind.
    let report = check::check_all(
        &checked,
        &kek,
        check::When::Startup {
            start_sealed: args.start_sealed,
        },
    )
    .await;
    for line in &report.lines {
        if line.starts_with("FAIL") {
            tracing::error!("check: {line}");
        } else if line.starts_with("wait") {
            tracing::warn!("check: {line}");
        } else {
            tracing::info!("check: {line}");
        }
    }
    report.result()?;
    let mode = crate::config::socket_mode(&c.listen.grpc_socket_mode)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let opts = ServerOptions {
        grpc_listen: c.listen.grpc.clone(),
        grpc_socket: (mode, c.listen.grpc_socket_group.clone()),
        max_connection_age: (
            c.listen.max_connection_age,
            c.listen.max_connection_age_grace,
        ),
        shutdown_grace: c.listen.shutdown_grace,
        http_listen: c.listen.http,
        metrics_listen: Some(c.listen.metrics),
        data_dir: c.store.data_dir.clone(),
        store_url: c.store.url.clone().map(|u| (u, c.store.schema.clone())),
        refresh_interval: std::time::Duration::from_secs(c.store.refresh_interval_secs),
        max_staleness: c.store.max_staleness,
        kek,
        rings: checked.rings.clone(),
        start_sealed: args.start_sealed,
        tls: c.tls.as_ref().map(|t| crate::tls::TlsFiles {
            cert: t.cert.clone(),
            key: t.key.clone(),
            client_ca: t.client_ca.clone(),
            crls: t.crls.clone(),
            allow_cn_identity: t.allow_cn_identity,
        }),
        authz_policy: c.authz.as_ref().map(|a| a.policy.clone()),
        audit: c
            .audit
            .audit_config(&c.store.data_dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?,
        checkpoint_sinks: c
            .audit
            .checkpoint_sinks()
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?,
        http_tls: c.http_tls.as_ref().map(|t| crate::http::HttpTlsFiles {
            cert: t.cert.clone(),
            key: t.key.clone(),
        }),
    };
    // Before anything says "listening": a SIGTERM from then on stops the
    // server cleanly.
    let shutdown = shutdown_signal();
    let prepared = server::prepare(&opts).await?;
    tracing::info!(
        grpc = %prepared.grpc_addr,
        http = %prepared.http_addr,
        metrics = %prepared.metrics_addr.map_or("on http".to_owned(), |a| a.to_string()),
        data_dir = %opts.data_dir.display(),
        kek = %opts.kek,
        memory_locked = hardened.memory_locked,
        sealed = prepared.keys.is_sealed(),
        tls = opts.tls.is_some(),
        "signet server listening"
    );
    prepared.serve(&opts, shutdown).await
}
