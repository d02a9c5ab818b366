//! `signet status | seal | unseal` (clients) and `signet operator rekey`
//! (offline, on the data directory).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::{
    ClientArgs,
    client::{connect, status_error},
};
use crate::{
    config::Config,
    keyring,
    pb::{self, operator_client::OperatorClient},
    seal::KekSpec,
    server,
    store::KeyStore as _,
    store::SqliteStore,
};

/// Options of `signet status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Options of `signet seal`.
#[derive(Debug, Args)]
pub struct SealArgs {
    /// Why (logged with the action).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// `signet operator ...`: offline maintenance of a stopped server's data.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Re-wrap every key's data key under a new KEK, in one transaction.
    /// Stop the server first; afterwards only the new KEK opens the store.
    Rekey(RekeyArgs),
}

/// Options of `signet operator rekey`.
#[derive(Debug, Args)]
pub struct RekeyArgs {
    /// The server's configuration file (data dir and current KEK).
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// The data directory, when not using --config.
    #[arg(long, requires = "kek")]
    data_dir: Option<PathBuf>,
    /// The current KEK spec (overrides the config's seal.kek).
    #[arg(long)]
    kek: Option<String>,
    /// The new KEK spec.
    #[arg(long)]
    new_kek: String,
}

fn print_status(s: &pb::StatusResponse, json: bool) -> anyhow::Result<()> {
    if json {
        let v = serde_json::json!({
            "sealed": s.sealed,
            "kek_provider_kind": s.kek_provider_kind,
            "kek_provider": s.kek_provider,
            "store_kind": s.store_kind,
            "rings": s.rings,
            "keys": s.keys,
            "loaded_keys": s.loaded_keys,
            "broken_keys": s.broken_keys,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("sealed:  {}", if s.sealed { "yes" } else { "no" });
        println!("kek:     {} ({})", s.kek_provider_kind, s.kek_provider);
        println!("store:   {}", s.store_kind);
        println!(
            "keys:    {} ring(s), {} key(s), {} loaded, {} broken",
            s.rings, s.keys, s.loaded_keys, s.broken_keys
        );
    }
    Ok(())
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut op = OperatorClient::new(connect(&args.client.addr).await?);
    let s = op
        .status(pb::StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    print_status(&s, args.json)
}

pub async fn seal(args: SealArgs) -> anyhow::Result<()> {
    let mut op = OperatorClient::new(connect(&args.client.addr).await?);
    let s = op
        .seal(pb::SealRequest {
            reason: args.reason,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("sealed: every private key was dropped from memory; `signet unseal` to resume");
    if let Some(s) = s.status {
        print_status(&s, false)?;
    }
    Ok(())
}

pub async fn unseal(client: ClientArgs) -> anyhow::Result<()> {
    let mut op = OperatorClient::new(connect(&client.addr).await?);
    let s = op
        .unseal(pb::UnsealRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if let Some(s) = s.status {
        print_status(&s, false)?;
    }
    Ok(())
}

pub async fn operator(cmd: OperatorCommand) -> anyhow::Result<()> {
    match cmd {
        OperatorCommand::Rekey(args) => rekey(args).await,
    }
}

async fn rekey(args: RekeyArgs) -> anyhow::Result<()> {
    let (data_dir, old): (PathBuf, KekSpec) = match (&args.config, &args.data_dir) {
        (Some(path), _) => {
            let checked = Config::load(path)?;
            let old = match &args.kek {
                Some(s) => s.parse().context("--kek")?,
                None => checked.kek,
            };
            (checked.config.store.data_dir, old)
        }
        (None, Some(dir)) => {
            let old = args
                .kek
                .as_deref()
                .context("--kek is required with --data-dir")?;
            (dir.clone(), old.parse().context("--kek")?)
        }
        (None, None) => bail!("give --config FILE, or --data-dir DIR with --kek SPEC"),
    };
    let new: KekSpec = args.new_kek.parse().context("--new-kek")?;
    if new == old {
        bail!("--new-kek is the current KEK ({old}); give a different one");
    }
    let _lock = server::lock_data_dir(&data_dir)
        .context("stop the server before re-keying its data directory")?;
    let store = SqliteStore::open(&server::store_path(&data_dir))
        .await
        .context("cannot open the store")?;
    let old_kek = old
        .open()
        .await
        .with_context(|| format!("current KEK {old}"))?;
    let new_kek = new.open().await.with_context(|| format!("new KEK {new}"))?;
    let audit_key = data_dir.join("audit.key");
    let had_audit_key = keyring::rekey_audit_key(&audit_key, &*old_kek, &*new_kek).await?;
    let n = keyring::rekey(&store, &*old_kek, &old.to_string(), &*new_kek).await?;
    store.close().await;
    if had_audit_key {
        keyring::finish_audit_rekey(&audit_key)
            .context("cannot move the re-wrapped audit key into place")?;
    }
    println!("re-wrapped {n} key(s) under {new}; {old} no longer opens this store");
    Ok(())
}
