//! `signet status | seal | unseal` (clients) and `signet operator rekey`
//! (offline: on the data directory's store, or on the shared PostgreSQL
//! store with every replica stopped).

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
    store::{KeyStore, PostgresStore, SqliteStore},
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
    /// Why (required; logged and audited with the action).
    #[arg(long, value_parser = non_blank)]
    reason: String,
    #[command(flatten)]
    client: ClientArgs,
}

fn non_blank(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must say why the service is sealed".to_owned())
    } else {
        Ok(s.to_owned())
    }
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
    /// Run even if memory cannot be locked (the data keys it handles could
    /// then be swapped to disk); also `seal.allow_unlocked_memory`.
    #[arg(long)]
    allow_unlocked_memory: bool,
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
            "audit_head_seq": s.audit_head_seq,
            "audit_head_hash": s.audit_head_hash,
            "audit_checkpoint_seq": s.audit_checkpoint_seq,
            "audit_checkpoint_hash": s.audit_checkpoint_hash,
            "audit_public_key_jwk": serde_json::from_str::<serde_json::Value>(&s.audit_public_key_jwk).ok(),
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
        if s.audit_head_hash.is_empty() {
            println!("audit:   no audit log");
        } else {
            // Anchor this elsewhere; `signet audit verify FILE --head HASH`
            // then proves the file was not cut short or replaced.
            println!(
                "audit:   head seq {} hash {}",
                s.audit_head_seq, s.audit_head_hash
            );
            if s.audit_checkpoint_seq > 0 {
                println!(
                    "signed:  checkpoint seq {} hash {} (anchored in the store)",
                    s.audit_checkpoint_seq, s.audit_checkpoint_hash
                );
            } else {
                println!("signed:  no checkpoint yet");
            }
        }
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

/// Opens the store a stopped server uses: the shared PostgreSQL store, or
/// the data directory's SQLite file.
pub(super) async fn open_store(
    data_dir: &std::path::Path,
    shared: Option<(String, Option<String>)>,
) -> anyhow::Result<Box<dyn KeyStore>> {
    Ok(match &shared {
        Some((url, schema)) => {
            let pg = match schema {
                Some(schema) => PostgresStore::open_in_schema(url, schema).await,
                None => PostgresStore::open(url).await,
            };
            Box::new(pg.context("store.url: cannot open the PostgreSQL store")?)
        }
        None => Box::new(
            SqliteStore::open(&server::store_path(data_dir))
                .await
                .context("cannot open the store")?,
        ),
    })
}

async fn rekey(args: RekeyArgs) -> anyhow::Result<()> {
    // The data dir, the current KEK, and the shared store if configured.
    let (data_dir, old, shared, config_allows_unlocked): (
        PathBuf,
        KekSpec,
        Option<(String, Option<String>)>,
        bool,
    ) = match (&args.config, &args.data_dir) {
        (Some(path), _) => {
            let checked = Config::load(path)?;
            let old = match &args.kek {
                Some(s) => s.parse().context("--kek")?,
                None => checked.kek,
            };
            let allow = checked.config.seal.allow_unlocked_memory;
            let store = checked.config.store;
            (
                store.data_dir,
                old,
                store.url.map(|url| (url, store.schema)),
                allow,
            )
        }
        (None, Some(dir)) => {
            let old = args
                .kek
                .as_deref()
                .context("--kek is required with --data-dir")?;
            (dir.clone(), old.parse().context("--kek")?, None, false)
        }
        (None, None) => bail!("give --config FILE, or --data-dir DIR with --kek SPEC"),
    };
    // Every data key and the audit key pass through this process in the
    // clear: the same hardening as the server (no core dump, no ptrace
    // attach, memory locked), before any KEK is opened.
    crate::hardening::harden_process(args.allow_unlocked_memory || config_allows_unlocked)
        .context("operator rekey: cannot harden the process")?;
    let new: KekSpec = args.new_kek.parse().context("--new-kek")?;
    if new == old {
        bail!("--new-kek is the current KEK ({old}); give a different one");
    }
    let _lock = server::lock_data_dir(&data_dir)
        .context("stop the server before re-keying its data directory")?;
    if shared.is_some() {
        eprintln!(
            "re-keying the shared PostgreSQL store: every replica must be stopped \
             (one still running would hold the old KEK and fail to read new keys)"
        );
    }
    let store = open_store(&data_dir, shared).await?;
    let old_kek = old
        .open()
        .await
        .with_context(|| format!("current KEK {old}"))?;
    let new_kek = new.open().await.with_context(|| format!("new KEK {new}"))?;
    // An audit key file from an earlier version joins the store first, so
    // the one transaction below re-wraps it with everything else.
    keyring::adopt_legacy_audit_key(&*store, &*old_kek, &data_dir.join("audit.key")).await?;
    let n = keyring::rekey(&*store, &*old_kek, &old.to_string(), &*new_kek).await?;
    let audit = if store.audit_key().await?.is_some() {
        " and the audit key"
    } else {
        ""
    };
    store.close().await;
    println!("re-wrapped {n} key(s){audit} under {new}; {old} no longer opens this store");
    Ok(())
}
