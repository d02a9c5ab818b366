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

/// A temporary directory user postgres can reach (mode 0755), to hold a
/// [`Cluster`]: the tests may run as root, and the cluster runs as postgres.
pub fn cluster_parent() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .unwrap()
}

/// A PostgreSQL cluster of the test's own, which it may stop and start:
/// `scripts/postgres-setup --private DIR`. Stopped when dropped.
pub struct Cluster {
    dir: std::path::PathBuf,
    /// Its URL (database `test`, user postgres, trust auth).
    pub url: String,
}

impl Cluster {
    /// Initialises and starts a cluster in `dir` (created; its parent must
    /// be reachable by user postgres when the tests run as root).
    pub fn start(dir: &std::path::Path) -> Cluster {
        let url = setup(&["--private", dir.to_str().unwrap()]);
        Cluster {
            dir: dir.to_owned(),
            url,
        }
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop(&self) {
        setup(&["--stop", self.dir.to_str().unwrap()]);
    }

    /// Starts it again, on the same port.
    pub fn restart(&self) {
        let url = setup(&["--private", self.dir.to_str().unwrap()]);
        assert_eq!(url, self.url, "the cluster came back elsewhere");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script())
            .args(["--stop", self.dir.to_str().unwrap()])
            .output();
    }
}

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres-setup")
}

/// Runs `scripts/postgres-setup ARGS`; fails the test, with the script's
/// own explanation, if it fails. Returns its stdout, trimmed.
fn setup(args: &[&str]) -> String {
    let out = std::process::Command::new(script())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/postgres-setup {args:?} failed (PostgreSQL is needed; the tests never skip): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
