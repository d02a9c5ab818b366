//! Acknowledged work survives SIGKILL.
//!
//! Concurrent callers drive CreateKeyRing, Rotate (scheduled, immediate and
//! immediate-fresh, each with a request id), RevokeKey, UpdatePolicy and
//! Sign against real `signet server` processes, and book every answer:
//! acknowledged, refused, or in doubt (no answer). At a moment drawn from a
//! seeded RNG (printed as `SIGNET_CRASH_SEED=N`; set it to replay the same
//! kill moments and choices) the harness SIGKILLs a server, restarts it on
//! the same data, and checks (book.rs): every acknowledged ring, key,
//! revocation and policy is there; nothing refused took effect; no key
//! appeared that only a call in doubt could explain beyond their number;
//! each ring has exactly one Active key; every token issued before the
//! crash verifies against the JWKS (jsonwebtoken, and the other
//! independent verifiers of `common::verify`) unless someone revoked its
//! key; `signet audit verify` passes and the log holds a record for every
//! answered call (by request id, RPC, outcome and kid); and a Rotate retried
//! with the request id of a rotation in doubt makes at most one key.
//!
//! State accumulates: one data directory (or PostgreSQL schema) for every
//! round of an epoch (by default the whole run). `SIGNET_CRASH_ROUNDS`,
//! `SIGNET_CRASH_REPLICA_ROUNDS` and `SIGNET_CRASH_EPOCH` set the counts for
//! long runs (scripts/crash-soak).
//!
//! What a SIGKILL cannot show: a write the kernel holds but the disk does
//! not yet (power loss). `synchronous = FULL` covers that; this harness
//! proves the order (durable, then answered), not the fsync.

mod book;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use book::Book;
use proptest::{
    prelude::Rng as _,
    test_runner::{RngAlgorithm, TestRng},
};
use signet::pb;
use tonic::transport::Channel;

use crate::common::{
    self,
    postgres::{self, Cluster},
    process::{self, Proc},
};

/// The run's seed: `SIGNET_CRASH_SEED`, else the clock.
pub fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("SIGNET_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
    })
}

fn env_count(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A seeded RNG (ChaCha, from proptest).
struct Rng(TestRng);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Rng(TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
    }
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.0.next_u64() % 100 < percent
    }
    fn fork(&mut self) -> Rng {
        Rng::new(self.0.next_u64())
    }
}

/// The servers under test: one on SQLite, or replicas on one PostgreSQL
/// schema (in a private cluster the harness may kill too).
/// (Fields drop in order: the servers, then the database, then their
/// directories.)
struct Fleet {
    procs: Vec<Option<Proc>>,
    channels: Vec<Channel>,
    db: Option<Cluster>,
    /// The database processes last killed.
    db_pids: Vec<String>,
    configs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
    _db_parent: Option<tempfile::TempDir>,
}

impl Fleet {
    fn sqlite() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let kek = process::kek_file(&dir.path().join("kek"));
        let config = process::write_config(dir.path(), &dir.path().join("data"), &kek, &[]);
        Fleet {
            _dir: dir,
            configs: vec![config],
            procs: vec![None],
            channels: vec![],
            db: None,
            _db_parent: None,
            db_pids: vec![],
        }
    }

    async fn postgres(n: usize) -> Fleet {
        let parent = postgres::cluster_parent();
        let db = Cluster::start(&parent.path().join("pg"));
        // scripts/postgres-setup trades durability for speed
        // (synchronous_commit = off: a commit is acknowledged before its
        // WAL is written). Killing such a database loses acknowledged
        // commits, and this harness says so at the first database kill.
        // Production runs with the default, on.
        {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql("ALTER SYSTEM SET synchronous_commit = on")
                .execute(&mut c)
                .await
                .unwrap();
            sqlx::raw_sql("SELECT pg_reload_conf()")
                .execute(&mut c)
                .await
                .unwrap();
        }
        let schema = postgres::fresh_schema("crash");
        let dir = tempfile::tempdir().unwrap();
        let kek = process::kek_file(&dir.path().join("kek"));
        let configs = (0..n)
            .map(|i| {
                let sub = dir.path().join(format!("r{i}"));
                std::fs::create_dir_all(&sub).unwrap();
                let config = process::write_config(&sub, &sub.join("data"), &kek, &[]);
                let text = std::fs::read_to_string(&config).unwrap().replace(
                    "[store]\n",
                    &format!(
                        "[store]\nurl = {:?}\nschema = {schema:?}\nrefresh_interval_secs = 1\n",
                        db.url
                    ),
                );
                std::fs::write(&config, text).unwrap();
                config
            })
            .collect();
        Fleet {
            _dir: dir,
            configs,
            procs: (0..n).map(|_| None).collect(),
            channels: vec![],
            db: Some(db),
            _db_parent: Some(parent),
            db_pids: vec![],
        }
    }

    fn audit_file(&self, i: usize) -> PathBuf {
        self.configs[i].parent().unwrap().join("data/audit.log")
    }

    async fn start(&mut self, i: usize) {
        let config = self.configs[i].to_str().unwrap();
        let p = Proc::spawn(&["server", "--config", config], &[]).unwrap();
        let ch = p.channel().await;
        if self.channels.len() > i {
            self.channels[i] = ch;
        } else {
            self.channels.push(ch);
        }
        self.procs[i] = Some(p);
    }

    fn kill(&mut self, i: usize) {
        self.procs[i].take().unwrap().kill9();
    }

    /// SIGKILL every process of the private PostgreSQL cluster: the
    /// postmaster and its children, found through /proc.
    fn kill_db(&mut self) {
        let pid_file = db_dir(self).join("data/postmaster.pid");
        let master: i32 = std::fs::read_to_string(pid_file)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let children: Vec<i32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    s.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        == Some(master.to_string().as_str())
                })
            })
            .collect();
        let pids: Vec<String> = std::iter::once(master)
            .chain(children)
            .map(|p| p.to_string())
            .collect();
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .status();
        self.db_pids = pids;
    }

    /// Starts the killed cluster again once its processes are gone (the
    /// postmaster refuses to start beside a survivor of the old one).
    fn restart_db(&mut self) {
        let pids = std::mem::take(&mut self.db_pids);
        // Gone, not just dead: PostgreSQL takes a zombie's pid in its lock
        // file for a live postmaster.
        common::eventually(
            Duration::from_secs(30),
            "the killed database's processes reaped",
            || {
                pids.iter()
                    .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            },
        );
        self.db.as_ref().unwrap().restart();
    }
}

fn db_dir(f: &Fleet) -> PathBuf {
    f._db_parent.as_ref().unwrap().path().join("pg")
}

/// A Duration for a pb message.
fn d(secs: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: i64::try_from(secs).unwrap(),
        nanos: 0,
    })
}

const DAY: u64 = 86_400;

/// A valid policy whose `default_token_ttl` marks it as update `seq` of its
/// ring; small `jwks_max_age` and `clock_skew` let immediate rotations
/// promote a waiting successor.
fn policy(seq: u64, fast: bool) -> pb::Policy {
    pb::Policy {
        rotation_period: d(90 * DAY),
        publish_lead: d(6 * DAY),
        grace: d(7 * DAY),
        max_token_ttl: d(3600),
        default_token_ttl: d(60 + seq % 3000),
        jwks_max_age: d(if fast { 0 } else { 3600 }),
        clock_skew: d(if fast { 0 } else { 60 }),
    }
}

/// What the callers of one round share.
#[derive(Clone)]
struct Ctx {
    channels: Vec<Channel>,
    book: Arc<Mutex<Book>>,
    stop: Arc<AtomicBool>,
    round: u64,
}

impl Ctx {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap()
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

mod callers;
mod run;

/// Runs `rounds` rounds as epochs of `epoch` rounds, each on fresh servers
/// and data: a server's start time grows with every key its store holds,
/// so a long soak restarts from nothing now and then.
async fn epochs(postgres: bool, rounds: u64, epoch: u64, max_kill_ms: u64) {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let mut done = 0;
    while done < rounds {
        let n = epoch.min(rounds - done);
        let fleet = if postgres {
            Fleet::postgres(3).await
        } else {
            Fleet::sqlite()
        };
        let epoch_seed = if done == 0 { seed } else { rng.0.next_u64() };
        run::run(fleet, n, max_kill_ms, epoch_seed).await;
        done += n;
    }
}

/// 200 rounds on one SQLite server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_sigkill() {
    let rounds = env_count("SIGNET_CRASH_ROUNDS", 200);
    epochs(false, rounds, env_count("SIGNET_CRASH_EPOCH", rounds), 100).await;
}

/// Three replicas on one PostgreSQL schema in a private cluster: each round
/// SIGKILLs a replica, or the database and a replica together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_sigkill_of_replicas_and_the_database() {
    let rounds = env_count("SIGNET_CRASH_REPLICA_ROUNDS", 20);
    epochs(true, rounds, env_count("SIGNET_CRASH_EPOCH", rounds), 300).await;
}
