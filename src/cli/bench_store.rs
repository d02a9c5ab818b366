//! `signet bench-store`: what the sealed ring manifests cost where they are
//! read: Unseal and refresh of a store with many rings (SQLite in a
//! temporary directory, an ephemeral KEK). The manifest is not on the Sign
//! path, so Sign throughput is `signet bench`'s business.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;

use crate::{
    clock::SystemClock,
    crypto::{Algorithm, KeySpec},
    keyring::{KeyManager, Policy},
    seal::{EphemeralKek, KekProvider},
    store::{KeyStore, SqliteStore},
};

/// Options of `signet bench-store`.
#[derive(Debug, Args)]
pub struct BenchStoreArgs {
    /// Rings in the store (one Ed25519 key each).
    #[arg(long, default_value_t = 5_000)]
    rings: usize,
}

/// Runs the benchmark and prints one line per phase.
pub async fn run(args: BenchStoreArgs) -> anyhow::Result<()> {
    let dir = super::bench::tempfile_dir().context("temporary directory")?;
    let db = dir.join("signet.db");
    let kek: Arc<dyn KekProvider> = Arc::new(EphemeralKek::new()?);
    let open = || async {
        let store: Arc<dyn KeyStore> = Arc::new(SqliteStore::open(&db).await?);
        anyhow::Ok(KeyManager::open(store, Arc::new(SystemClock), kek.clone()).await?)
    };
    let writer = open().await?;
    writer.unseal().await?;
    let spec = KeySpec::new(Algorithm::EdDsa, 0)?;
    let names: Vec<String> = (0..args.rings).map(|i| format!("ring-{i:05}")).collect();
    let start = Instant::now();
    for name in &names {
        writer.create_ring(name, spec).await?;
    }
    line(
        "create rings (write each, fsync)",
        args.rings,
        start.elapsed(),
    );

    let reader = open().await?;
    let start = Instant::now();
    reader.unseal().await?;
    line(
        "unseal (load, check every manifest, open every key)",
        args.rings,
        start.elapsed(),
    );

    let start = Instant::now();
    reader.refresh().await?;
    line(
        "refresh, nothing changed (load only)",
        args.rings,
        start.elapsed(),
    );

    let policy = Policy {
        rotation_period: Duration::from_secs(60 * 86_400),
        ..Policy::default()
    };
    for name in &names {
        writer.update_policy(name, policy.clone()).await?;
    }
    let start = Instant::now();
    let changed = reader.refresh().await?;
    anyhow::ensure!(
        changed == args.rings,
        "{changed} of {} rings changed",
        args.rings
    );
    line(
        "refresh, every ring changed (load, check every manifest)",
        args.rings,
        start.elapsed(),
    );
    writer.close().await;
    reader.close().await;
    std::fs::remove_dir_all(&dir).context("removing the temporary directory")?;
    Ok(())
}

fn line(what: &str, n: usize, took: Duration) {
    let per = took.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!(
        "{what:<58} {n:>6} rings  {:>9.1} ms  {per:>8.1} µs/ring",
        took.as_secs_f64() * 1e3
    );
}
