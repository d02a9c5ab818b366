//! [`AuditLog`]: the shared handle the RPC layer and the scheduler append to.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    AuditError,
    checkpoint::{CheckpointKey, CheckpointSigner},
    record::{AuditRecord, GENESIS_PREV},
    sink::SinkConfig,
    writer::{self, Msg},
};

/// How the audit log writes.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// Where lines go, in order. The first sink is the primary: its chain
    /// head is what [`AuditLog::head`] reports, so list the file auditors
    /// verify first.
    pub sinks: Vec<SinkConfig>,
    /// How long an append may take before it fails with
    /// [`AuditError::Unavailable`] (default 2 s). Also bounds opening the
    /// sinks in [`AuditLog::open`] and [`AuditLog::reopen`].
    pub timeout: Duration,
    /// How often a failed sink is retried (reopened) by appends (default
    /// 1 s); [`AuditLog::reopen`] retries at once.
    pub retry_interval: Duration,
    /// The wall clock that stamps `time` (the host's time of writing, not
    /// the service's lifecycle clock). Replaceable for tests.
    pub wall_clock: fn() -> SystemTime,
    /// A signed checkpoint follows at most this many records (default
    /// 1,000)...
    pub checkpoint_every: u64,
    /// ... or this long after the first unsigned record (default 1 s),
    /// whichever comes first; also at reopen and when the log closes.
    pub checkpoint_interval: Duration,
    /// Group commit: how long at most a round waits for more appends
    /// before it writes, and only while appends are announced (see
    /// [`AuditLog::announce`]) but not yet queued (default 2 ms; zero: never
    /// wait). Under load this is what lets one round (one write, one
    /// fsync, one hand-off to each thread) carry dozens of records; with
    /// few requests in flight the wait ends as soon as each has queued its
    /// record, and with one nothing is announced and nothing waits.
    /// Nothing is answered before its round is written.
    pub commit_wait: Duration,
}

impl AuditConfig {
    /// The defaults with these sinks.
    pub fn new(sinks: Vec<SinkConfig>) -> Self {
        Self {
            sinks,
            timeout: Duration::from_secs(2),
            retry_interval: Duration::from_secs(1),
            wall_clock: SystemTime::now,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(1),
            commit_wait: Duration::from_millis(2),
        }
    }
}

/// The state of one sink, for `Operator.Status` and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkStatus {
    /// The sink spec, e.g. `file:/var/log/signet/audit.log`.
    pub name: String,
    /// Whether appends need it.
    pub required: bool,
    /// Whether its last open or write succeeded in time.
    pub healthy: bool,
    /// The seq and hash of the last line it holds, if any.
    pub head: Option<(u64, String)>,
}

/// A cheap-to-clone handle to the audit log.
///
/// Appends from any number of tasks are serialized by one sequencer thread,
/// which assigns `seq`, `time` and (through each sink's thread) `prev`, so
/// seqs are strictly increasing and each sink's chain is unbroken however
/// many callers race.
///
/// # When an append succeeds
///
/// [`AuditLog::append`] returns `Ok(seq)` only after the line was written
/// and flushed (and fsynced, per that sink's [`FsyncPolicy`](super::FsyncPolicy))
/// to **at least one required sink**; if no sink is required, to at least
/// one sink. Otherwise, or if that does not happen within the timeout, it
/// returns [`AuditError::Unavailable`] and the caller must fail the RPC
/// (UNAVAILABLE "audit unavailable") without returning its result.
/// Non-required sinks are best effort. A failed append may still have
/// reached some sink (a write that timed out can land later): a line in the
/// log means the action was attempted; a successful RPC always has its line.
///
/// # Failing sinks
///
/// A sink whose write fails or times out stops receiving lines until it is
/// reopened: by the next append after `retry_interval`, or by
/// [`AuditLog::reopen`]. Reopening a file reads back its last complete line,
/// so the sink's chain continues from what is really on disk, whatever the
/// failed write left there. If the sink missed lines, the log first writes
/// an [`RESYNC_RPC`](super::RESYNC_RPC) marker to every sink; its `reason`
/// says which sink resumed after which seq, and it is the one line whose
/// `seq` may jump. Seqs are never reused.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

struct Shared {
    tx: mpsc::Sender<Msg>,
    timeout: Duration,
    status: Arc<Mutex<Vec<SinkStatus>>>,
    signer: writer::SignerSlot,
    anchor: watch::Receiver<writer::Anchor>,
    stats: Arc<writer::RoundStats>,
}

/// An append on its way (see [`AuditLog::announce`]); the announcement
/// ends when this is dropped.
#[must_use = "the announcement ends when this is dropped"]
pub struct Announced {
    stats: Arc<writer::RoundStats>,
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.stats
            .announced
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl AuditLog {
    /// Starts the writer threads and opens every sink (reading each file's
    /// last line, so `seq` and the chain continue after a restart), waiting
    /// at most the timeout. A sink that cannot be opened yet does not fail
    /// this call: it is retried, and appends fail while the sink rule is
    /// not met.
    pub async fn open(config: AuditConfig) -> Result<Self, AuditError> {
        if config.sinks.is_empty() {
            return Err(AuditError::Config("no audit sink is configured".into()));
        }
        if config.timeout.is_zero() {
            return Err(AuditError::Config(
                "the audit timeout must not be zero".into(),
            ));
        }
        let timeout = config.timeout;
        let status = Arc::new(Mutex::new(
            config
                .sinks
                .iter()
                .map(|s| SinkStatus {
                    name: s.spec.to_string(),
                    required: s.required,
                    healthy: false,
                    head: None,
                })
                .collect(),
        ));
        let signer: writer::SignerSlot = Arc::new(Mutex::new(None));
        let (anchor_tx, anchor) = watch::channel(None);
        // Answers are delivered by a task on this runtime, a round at a time.
        let (fanout, mut answers) = mpsc::unbounded_channel::<writer::Answers>();
        tokio::spawn(async move {
            while let Some(round) = answers.recv().await {
                for (reply, answer) in round {
                    let _ = reply.send(answer);
                }
            }
        });
        let stats = Arc::new(writer::RoundStats::default());
        let (tx, ready) = writer::start(
            config,
            status.clone(),
            signer.clone(),
            anchor_tx,
            Some(fanout),
            stats.clone(),
        )?;
        // The sequencer answers once its first open round is over (bounded
        // by the timeout); if it died, appends will say so.
        let _ = ready.await;
        Ok(Self {
            shared: Arc::new(Shared {
                tx,
                timeout,
                status,
                signer,
                anchor,
                stats,
            }),
        })
    }

    /// Appends `rec` (its `time`, `seq` and `prev` are set here) and
    /// returns its seq once the line is written as the sink rule requires
    /// (see the type's docs); [`AuditError::Unavailable`] otherwise, within
    /// the timeout.
    pub async fn append(&self, rec: AuditRecord) -> Result<u64, AuditError> {
        let deadline = Instant::now() + self.shared.timeout;
        let (reply, answer) = oneshot::channel();
        let msg = Msg::Append {
            rec: Box::new(rec),
            deadline,
            reply,
        };
        self.call(deadline, msg, answer).await
    }

    /// Closes and reopens every sink: after an operator renamed the file
    /// (log rotation, on SIGHUP), a new file is created and its first line
    /// continues the chain of the old one (`prev` = the old file's last
    /// hash). Also retries failed sinks at once. Fails if a sink could not
    /// be reopened within the timeout (appends then follow the sink rule).
    pub async fn reopen(&self) -> Result<(), AuditError> {
        let deadline = Instant::now() + self.shared.timeout;
        let (reply, answer) = oneshot::channel();
        self.call(deadline, Msg::Reopen { deadline, reply }, answer)
            .await
    }

    async fn call<T>(
        &self,
        deadline: Instant,
        msg: Msg,
        answer: oneshot::Receiver<Result<T, AuditError>>,
    ) -> Result<T, AuditError> {
        let work = async {
            self.shared
                .tx
                .send(msg)
                .await
                .map_err(|_| AuditError::Unavailable)?;
            answer.await.map_err(|_| AuditError::Unavailable)?
        };
        // The sequencer also stops waiting at the deadline; this bound holds
        // even if it is stuck or gone.
        tokio::time::timeout_at(deadline.into(), work)
            .await
            .unwrap_or(Err(AuditError::Unavailable))
    }

    /// Signs checkpoints (and resync and gap records) with `signer` from now
    /// on; `None` (at Seal) leaves records unsigned until a key is set
    /// again.
    pub fn set_signer(&self, signer: Option<Arc<CheckpointSigner>>) {
        // A poisoned lock only means a panic while swapping an Arc.
        *self.shared.signer.lock().unwrap_or_else(|p| p.into_inner()) = signer;
    }

    /// The public key checkpoints are signed with, while one is set.
    pub fn signing_key(&self) -> Option<CheckpointKey> {
        self.shared
            .signer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.public())
    }

    /// The primary sink's latest checkpoint `(seq, line hash)`, changing as
    /// new ones are written: what the server anchors in the store.
    pub fn anchors(&self) -> watch::Receiver<writer::Anchor> {
        self.shared.anchor.clone()
    }

    /// Makes the next record's seq at least `seq`: `signet audit
    /// accept-gap` declares the seqs a truncated file lost.
    pub async fn skip_to(&self, seq: u64) -> Result<(), AuditError> {
        self.shared
            .tx
            .send(Msg::SkipTo { seq })
            .await
            .map_err(|_| AuditError::Unavailable)
    }

    /// Signs what is unsigned now (at shutdown), within the timeout.
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        let deadline = Instant::now() + self.shared.timeout;
        let (reply, answer) = oneshot::channel();
        self.call(deadline, Msg::Checkpoint { deadline, reply }, answer)
            .await
    }

    /// The chain head of the primary (first) sink: the seq and hash of the
    /// last line it holds, `(0, 64 zeros)` before its first line. For
    /// `Operator.Status`, to compare with `signet audit verify --head`.
    pub fn head(&self) -> (u64, String) {
        self.sinks()
            .into_iter()
            .next()
            .and_then(|s| s.head)
            .unwrap_or_else(|| (0, GENESIS_PREV.to_owned()))
    }

    /// Tells the writer an append is on its way (a request being served
    /// that will be recorded), until the returned value is dropped: drop
    /// it just before the append. While appends are announced, a round
    /// waits a little (at most [`AuditConfig::commit_wait`]) for them, so
    /// that they share its write and fsync instead of each starting one.
    pub fn announce(&self) -> Announced {
        self.shared
            .stats
            .announced
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Announced {
            stats: self.shared.stats.clone(),
        }
    }

    /// `(rounds, appends)`: how many write rounds carried appends, and how
    /// many appends they carried. Their ratio is the group-commit batch
    /// size: each round is one write and (with `fsync = always`) one fsync
    /// per file sink, whatever its size.
    pub fn rounds(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.shared.stats;
        (stats.rounds.load(Relaxed), stats.appends.load(Relaxed))
    }

    /// The mean time a round carrying appends took to write (and, with
    /// `fsync = always`, fsync): the least an append waits for its answer.
    pub fn mean_round_write(&self) -> std::time::Duration {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.shared.stats;
        let nanos = stats.write_nanos.load(Relaxed) / stats.rounds.load(Relaxed).max(1);
        std::time::Duration::from_nanos(nanos)
    }

    /// Every sink's state, in configuration order.
    pub fn sinks(&self) -> Vec<SinkStatus> {
        // A poisoned lock only means a panic while copying plain values.
        self.shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("timeout", &self.shared.timeout)
            .field("sinks", &self.sinks())
            .finish()
    }
}
