//! The PostgreSQL server the tests use, and schema names no two tests share.
//!
//! The server comes from `SIGNET_TEST_POSTGRES_URL` (`scripts/test` sets it
//! through `scripts/postgres-setup`), else the usual local one. Each test
//! works in a schema of its own, so tests run in parallel. An unreachable
//! server fails the tests: they never skip.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// The server's URL, as `scripts/postgres-setup` finds or provides it.
pub fn url() -> String {
    std::env::var("SIGNET_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema name, starting `t_<prefix>_`, that no other test in this or
/// another process uses: process id, start time and a per-process counter.
pub fn fresh_schema(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t_{prefix}_{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
