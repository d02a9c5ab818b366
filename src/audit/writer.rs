//! The sequencer: the one thread that orders appends and drives the sinks.
//!
//! # Why threads
//!
//! Appends arrive from many tasks; the chain needs one total order, so one
//! writer assigns `seq` and `time` and hands lines to the sinks in order.
//! That writer is a dedicated OS thread fed by a bounded channel, and every
//! sink has a thread of its own, because sink I/O can block without bound
//! (a full or hung disk, a FIFO nobody reads, an NFS server gone away).
//! The sequencer only ever waits on its sinks with a deadline, so a blocked
//! sink costs each caller at most the timeout, and a sink that stays blocked
//! pins exactly one thread, never the tokio runtime's workers nor its
//! blocking pool (a `std::sync::Mutex` held across a blocking write in
//! `spawn_blocking` would stack up one pool thread per waiting RPC behind a
//! hung write). Draining the queue into one batch per round also gives group
//! commit: one write and one fsync for every append waiting at that moment.
//!
//! # A write that fails or times out
//!
//! Its lines may or may not have reached the sink. The sink stops getting
//! lines; it is reopened later, and reopening a file reads back its last
//! complete line (cutting a torn tail), so the sink's chain continues from
//! what is really there. Seqs are never reused: lines other sinks wrote keep
//! theirs. A sink that comes back behind the log gets an `audit.resync`
//! marker line (written to every sink) before any other line.

use std::{
    sync::{Arc, Mutex, mpsc as std_mpsc},
    thread,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    AuditError,
    checkpoint::{CHECKPOINT_RPC, CheckpointSigner},
    log::{AuditConfig, SinkStatus},
    record::{AuditRecord, GENESIS_PREV, Outcome, RESYNC_RPC},
    sink::{Done, Head, Job, SinkWorker},
};

/// The signing key the sequencer signs with, if any (none while sealed).
pub(super) type SignerSlot = Arc<Mutex<Option<Arc<CheckpointSigner>>>>;

/// The latest checkpoint of the primary sink: `(seq, line hash)`.
pub(super) type Anchor = Option<(u64, String)>;

/// One round's answers, handed to a task on the runtime that delivers them.
pub(super) type Answers = Vec<(
    oneshot::Sender<Result<u64, AuditError>>,
    Result<u64, AuditError>,
)>;

/// How many write rounds carried appends, and how many appends they
/// carried: their ratio is the group-commit batch size (each round is one
/// write and, with `fsync = always`, one fsync per file sink).
#[derive(Debug, Default)]
pub(super) struct RoundStats {
    pub(super) rounds: std::sync::atomic::AtomicU64,
    pub(super) appends: std::sync::atomic::AtomicU64,
    /// Nanoseconds those rounds spent writing (and fsyncing): from handing
    /// the lines to the sinks until the sink rule was met or timed out.
    pub(super) write_nanos: std::sync::atomic::AtomicU64,
    /// Appends announced and not yet queued (see `AuditLog::announce`).
    pub(super) announced: std::sync::atomic::AtomicI64,
}

/// Appends waiting for the sequencer; senders wait (within their timeout)
/// when it is full.
const QUEUE: usize = 4096;
/// The most appends written in one round.
const MAX_BATCH: usize = 512;
/// How often a round waiting for announced appends looks for them.
const COMMIT_POLL: Duration = Duration::from_micros(50);

/// A request to the sequencer.
pub(super) enum Msg {
    /// Append a record; answer its seq.
    Append {
        rec: Box<AuditRecord>,
        deadline: Instant,
        reply: oneshot::Sender<Result<u64, AuditError>>,
    },
    /// Reopen every sink now.
    Reopen {
        deadline: Instant,
        reply: oneshot::Sender<Result<(), AuditError>>,
    },
    /// Write a checkpoint now if any record is unsigned (at shutdown).
    Checkpoint {
        deadline: Instant,
        reply: oneshot::Sender<Result<(), AuditError>>,
    },
    /// Time passed: write a checkpoint if the interval is over.
    Tick,
    /// The next seq is at least `seq` (an accepted gap declares the seqs it
    /// skips).
    SkipTo { seq: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Needs an open before it gets lines; retried from `retry_at` (`None`:
    /// at the next round).
    Closed { retry_at: Option<Instant> },
    /// Open; gets every line.
    Ready,
    /// Job `job` has not been answered yet; past its deadline the sink is
    /// stuck and skipped until the answer comes.
    Busy { job: u64 },
}

struct Slot {
    name: String,
    required: bool,
    jobs: std_mpsc::Sender<(u64, Job)>,
    state: State,
    /// The sink's head as its thread last reported it.
    head: Option<Head>,
}

struct Sequencer {
    slots: Vec<Slot>,
    done: std_mpsc::Receiver<Done>,
    /// The next seq to assign (seqs start at 1).
    next_seq: u64,
    next_job: u64,
    retry_interval: Duration,
    wall_clock: fn() -> SystemTime,
    /// Whether the last round failed, so failures are logged once per
    /// episode rather than per append.
    failing: bool,
    status: Arc<Mutex<Vec<SinkStatus>>>,
    timeout: Duration,
    signer: SignerSlot,
    /// Records written since the last checkpoint, and since when.
    unsigned: u64,
    unsigned_since: Option<Instant>,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    anchor: watch::Sender<Anchor>,
    /// The seq a declared gap (`SkipTo`) starts at: the record taking it
    /// is the gap record itself, so no resync marker goes before it.
    declared_gap: Option<u64>,
    /// Where a round's answers go to be delivered from inside the async
    /// runtime: one wake-up of one task per round, rather than one
    /// cross-thread wake-up per caller. `None` (or closed): answered here.
    fanout: Option<mpsc::UnboundedSender<Answers>>,
    stats: Arc<RoundStats>,
    /// The longest a round waits for announced appends.
    commit_wait: Duration,
}

/// Starts the sink threads and the sequencer. The receiver answers once the
/// first open round is over.
pub(super) fn start(
    config: AuditConfig,
    status: Arc<Mutex<Vec<SinkStatus>>>,
    signer: SignerSlot,
    anchor: watch::Sender<Anchor>,
    fanout: Option<mpsc::UnboundedSender<Answers>>,
    stats: Arc<RoundStats>,
) -> Result<(mpsc::Sender<Msg>, oneshot::Receiver<()>), AuditError> {
    let (done_tx, done) = std_mpsc::channel();
    let mut slots = Vec::with_capacity(config.sinks.len());
    for (i, sink) in config.sinks.iter().enumerate() {
        let (jobs, job_rx) = std_mpsc::channel();
        let worker = SinkWorker::new(i, sink.clone());
        let done_tx = done_tx.clone();
        thread::Builder::new()
            .name(format!("signet-audit-{i}"))
            .spawn(move || worker.run(job_rx, done_tx))
            .map_err(AuditError::Start)?;
        slots.push(Slot {
            name: sink.spec.to_string(),
            required: sink.required,
            jobs,
            state: State::Closed { retry_at: None },
            head: None,
        });
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let (ready_tx, ready) = oneshot::channel();
    let sequencer = Sequencer {
        slots,
        done,
        next_seq: 1,
        next_job: 0,
        retry_interval: config.retry_interval,
        wall_clock: config.wall_clock,
        failing: false,
        status,
        timeout: config.timeout,
        signer,
        unsigned: 0,
        unsigned_since: None,
        checkpoint_every: config.checkpoint_every.max(1),
        checkpoint_interval: config.checkpoint_interval,
        anchor,
        declared_gap: None,
        fanout,
        stats,
        commit_wait: config.commit_wait,
    };
    thread::Builder::new()
        .name("signet-audit".into())
        .spawn(move || sequencer.run(rx, ready_tx))
        .map_err(AuditError::Start)?;
    // Ticks for the time-based checkpoint. A weak sender, so the ticker
    // never keeps the log alive: it ends once every handle is gone.
    let weak = tx.downgrade();
    let every = (config.checkpoint_interval / 4).max(Duration::from_millis(50));
    thread::Builder::new()
        .name("signet-audit-tick".into())
        .spawn(move || {
            loop {
                thread::sleep(every);
                let Some(tx) = weak.upgrade() else { return };
                // A full queue means appends are flowing: their rounds
                // check the interval too.
                let _ = tx.try_send(Msg::Tick);
            }
        })
        .map_err(AuditError::Start)?;
    Ok((tx, ready))
}

type Waiting = (
    Box<AuditRecord>,
    Instant,
    oneshot::Sender<Result<u64, AuditError>>,
);

impl Sequencer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>, ready: oneshot::Sender<()>) {
        self.open_round(Instant::now() + self.timeout, false);
        self.publish();
        let _ = ready.send(());
        let mut pending = None;
        loop {
            // Ends when every `AuditLog` handle is gone; dropping the slots
            // then ends the sink threads.
            let Some(msg) = pending.take().or_else(|| rx.blocking_recv()) else {
                // Every handle is gone: sign what is unsigned, then stop.
                // A failed checkpoint is tried again: the records stay unsigned.
                let _ = self.checkpoint(Instant::now() + self.timeout);
                return;
            };
            match msg {
                Msg::Reopen { deadline, reply } => {
                    // The files about to be closed (rotated away) end signed.
                    let _ = self.checkpoint(deadline);
                    let result = self.reopen(deadline);
                    self.publish();
                    let _ = reply.send(result);
                }
                Msg::Checkpoint { deadline, reply } => {
                    let _ = reply.send(self.checkpoint(deadline));
                }
                Msg::SkipTo { seq } => {
                    self.next_seq = self.next_seq.max(seq);
                    self.declared_gap = Some(self.next_seq);
                }
                Msg::Tick => {
                    if self
                        .unsigned_since
                        .is_some_and(|t| t.elapsed() >= self.checkpoint_interval)
                    {
                        // A failed checkpoint is tried again: the records stay unsigned.
                        let _ = self.checkpoint(Instant::now() + self.timeout);
                    }
                }
                Msg::Append {
                    rec,
                    deadline,
                    reply,
                } => {
                    let mut batch = vec![(rec, deadline, reply)];
                    let wait_until = Instant::now() + self.commit_wait;
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(Msg::Append {
                                rec,
                                deadline,
                                reply,
                            }) => batch.push((rec, deadline, reply)),
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            // More appends are on their way: let them share
                            // this round (its fsync and every hand-off
                            // between threads), within the bound. Under a
                            // closed load this ends by itself once every
                            // request in flight has queued its record.
                            Err(_)
                                if self.announced()
                                    && Instant::now() + COMMIT_POLL <= wait_until =>
                            {
                                thread::sleep(COMMIT_POLL);
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit(batch);
                }
            }
        }
    }

    /// Writes a checkpoint now if any record since the last is unsigned
    /// and a signing key is held.
    fn checkpoint(&mut self, deadline: Instant) -> Result<(), AuditError> {
        if self.unsigned == 0 || self.signer().is_none() {
            return Ok(());
        }
        if self.write_round(Vec::new(), true, deadline) {
            Ok(())
        } else {
            Err(AuditError::Unavailable)
        }
    }

    /// Whether appends are announced but not queued yet.
    fn announced(&self) -> bool {
        self.stats
            .announced
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    }

    fn signer(&self) -> Option<Arc<CheckpointSigner>> {
        // A poisoned lock only means a panic while swapping an Arc.
        self.signer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes one batch and answers its callers.
    fn commit(&mut self, batch: Vec<Waiting>) {
        let now = Instant::now();
        // A caller past its deadline was already told "unavailable": do not
        // log an action it reported as failed.
        let (batch, expired): (Vec<_>, Vec<_>) = batch.into_iter().partition(|w| w.1 > now);
        for (_, _, reply) in expired {
            let _ = reply.send(Err(AuditError::Unavailable));
        }
        let Some(deadline) = batch.iter().map(|w| w.1).min() else {
            return;
        };
        self.write_round(batch, false, deadline);
    }

    /// Writes `batch` (and a checkpoint after it when one is due, or when
    /// `force_checkpoint`), answers the callers; returns whether the round
    /// met the sink rule.
    fn write_round(
        &mut self,
        batch: Vec<Waiting>,
        force_checkpoint: bool,
        deadline: Instant,
    ) -> bool {
        self.collect_late();
        self.open_round(deadline, false);

        let time = humantime::format_rfc3339_millis((self.wall_clock)()).to_string();
        let signer = self.signer();
        let mut records = Vec::with_capacity(batch.len() + 2);
        // Records since the last checkpoint, counting this round's; a
        // checkpoint follows every `checkpoint_every`-th, even mid-batch.
        let mut unsigned = self.unsigned;
        let checkpoint = |seq: u64| AuditRecord {
            time: time.clone(),
            seq,
            ..AuditRecord::new(CHECKPOINT_RPC, Outcome::Ok, "OK")
        };
        if let Some(marker) = self.resync_marker() {
            records.push(AuditRecord {
                time: time.clone(),
                seq: self.take_seq(),
                ..marker
            });
            unsigned += 1;
        }
        let mut replies = Vec::with_capacity(batch.len());
        for (rec, _, reply) in batch {
            let seq = self.take_seq();
            records.push(AuditRecord {
                time: time.clone(),
                seq,
                prev: String::new(),
                ..*rec
            });
            replies.push((seq, reply));
            unsigned += 1;
            if signer.is_some() && unsigned >= self.checkpoint_every {
                records.push(checkpoint(self.take_seq()));
                unsigned = 0;
            }
        }
        if signer.is_some() && unsigned > 0 && force_checkpoint {
            records.push(checkpoint(self.take_seq()));
            unsigned = 0;
        }
        let ends_signed = records.last().is_some_and(|r| r.rpc == CHECKPOINT_RPC);

        let base = self.base_hash();
        let records = Arc::new(records);
        let mut jobs = Vec::new();
        for i in 0..self.slots.len() {
            if self.slots[i].state == State::Ready {
                let job = Job::Write {
                    base: base.clone(),
                    records: records.clone(),
                    signer: signer.clone(),
                };
                if let Some(id) = self.send(i, job) {
                    jobs.push((i, id));
                }
            }
        }
        let started = Instant::now();
        let wrote = self.wait(&jobs, deadline);
        if !replies.is_empty() {
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.stats
                .write_nanos
                .fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
        }
        let any_required = self.slots.iter().any(|s| s.required);
        let ok = wrote
            .iter()
            .any(|&i| self.slots[i].required || !any_required);
        if ok == self.failing {
            if ok {
                tracing::info!("audit log writing again");
            } else {
                tracing::warn!("audit log unavailable: no required sink wrote; failing RPCs");
            }
            self.failing = !ok;
        }
        if ok {
            self.unsigned = unsigned;
            if unsigned == 0 {
                self.unsigned_since = None;
            } else {
                self.unsigned_since.get_or_insert_with(Instant::now);
            }
            // The primary sink's new checkpoint, for the store's anchor (one
            // mid-batch is followed within the interval by one at the end).
            if ends_signed
                && wrote.contains(&0)
                && let Some(head) = &self.slots[0].head
            {
                self.anchor
                    .send_replace(Some((head.seq, head.hash.clone())));
            }
        }
        if !replies.is_empty() {
            use std::sync::atomic::Ordering::Relaxed;
            self.stats.rounds.fetch_add(1, Relaxed);
            self.stats.appends.fetch_add(replies.len() as u64, Relaxed);
        }
        // Before answering, so a caller that reads the head sees its line.
        self.publish();
        let answers: Answers = replies
            .into_iter()
            .map(|(seq, reply)| {
                let answer = if ok {
                    Ok(seq)
                } else {
                    Err(AuditError::Unavailable)
                };
                (reply, answer)
            })
            .collect();
        let answers = match &self.fanout {
            Some(fanout) if !answers.is_empty() => match fanout.send(answers) {
                Ok(()) => Vec::new(),
                Err(mpsc::error::SendError(answers)) => answers,
            },
            _ => answers,
        };
        for (reply, answer) in answers {
            let _ = reply.send(answer);
        }
        ok
    }

    /// The marker to write first if a ready sink holds fewer lines than the
    /// log has sequenced (it failed, or started, behind the others).
    fn resync_marker(&self) -> Option<AuditRecord> {
        if self.declared_gap == Some(self.next_seq) {
            return None;
        }
        let behind: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.state == State::Ready)
            .filter_map(|s| {
                let head = s.head.as_ref()?;
                (head.seq + 1 < self.next_seq)
                    .then(|| format!("{} resumes after seq {}", s.name, head.seq))
            })
            .collect();
        if behind.is_empty() {
            return None;
        }
        Some(AuditRecord {
            reason: Some(format!(
                "audit sink missed lines and resumes here: {}",
                behind.join("; ")
            )),
            ..AuditRecord::new(RESYNC_RPC, Outcome::Ok, "OK")
        })
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Where a sink with no history joins the chain: the head of the sink
    /// furthest along (the first such sink on a tie), or the genesis value.
    fn base_hash(&self) -> String {
        let mut best: Option<&Head> = None;
        for head in self.slots.iter().filter_map(|s| s.head.as_ref()) {
            if best.is_none_or(|b| head.seq > b.seq) {
                best = Some(head);
            }
        }
        best.map_or_else(|| GENESIS_PREV.to_owned(), |h| h.hash.clone())
    }

    /// Reopens every sink that is not stuck, now.
    fn reopen(&mut self, deadline: Instant) -> Result<(), AuditError> {
        self.collect_late();
        for slot in &mut self.slots {
            if slot.state == State::Ready {
                slot.state = State::Closed { retry_at: None };
            }
        }
        self.open_round(deadline, true);
        if self.slots.iter().all(|s| s.state == State::Ready) {
            Ok(())
        } else {
            Err(AuditError::Unavailable)
        }
    }

    /// Opens the closed sinks that are due (all of them if `force`).
    fn open_round(&mut self, deadline: Instant, force: bool) {
        let now = Instant::now();
        let mut jobs = Vec::new();
        for i in 0..self.slots.len() {
            if let State::Closed { retry_at } = self.slots[i].state
                && (force || retry_at.is_none_or(|t| t <= now))
                && let Some(id) = self.send(i, Job::Open)
            {
                jobs.push((i, id));
            }
        }
        self.wait(&jobs, deadline);
    }

    /// Gives sink `i` a job; `None` if its thread is gone.
    fn send(&mut self, i: usize, job: Job) -> Option<u64> {
        let id = self.next_job;
        self.next_job += 1;
        let retry_at = Instant::now() + self.retry_interval;
        let slot = &mut self.slots[i];
        if slot.jobs.send((id, job)).is_err() {
            // Only a panic ends a sink thread early; the sink stays failed.
            tracing::warn!(sink = %slot.name, "audit sink thread is gone");
            slot.state = State::Closed {
                retry_at: Some(retry_at),
            };
            return None;
        }
        slot.state = State::Busy { job: id };
        Some(id)
    }

    /// Waits until `jobs` are answered or `deadline`; returns the sinks
    /// that answered with success. Unanswered sinks stay busy (stuck).
    fn wait(&mut self, jobs: &[(usize, u64)], deadline: Instant) -> Vec<usize> {
        let mut left: Vec<(usize, u64)> = jobs.to_vec();
        let mut ok = Vec::new();
        while !left.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Ok(done) = self.done.recv_timeout(wait) else {
                break;
            };
            if let Some(pos) = left.iter().position(|&j| j == (done.sink, done.job)) {
                left.swap_remove(pos);
                if done.result.is_ok() {
                    ok.push(done.sink);
                }
            }
            self.apply(done);
        }
        for (i, _) in left {
            tracing::warn!(
                sink = %self.slots[i].name,
                "audit sink did not answer within the timeout; skipping it until it does"
            );
        }
        ok
    }

    /// Takes in answers that came after their round gave up on them.
    fn collect_late(&mut self) {
        while let Ok(done) = self.done.try_recv() {
            self.apply(done);
        }
    }

    fn apply(&mut self, done: Done) {
        let now = Instant::now();
        let retry_interval = self.retry_interval;
        let Some(slot) = self.slots.get_mut(done.sink) else {
            return;
        };
        if slot.state != (State::Busy { job: done.job }) {
            return;
        }
        match done.result {
            Ok(head) => {
                if let Some(h) = &head {
                    // Never reuse a seq a sink already holds (a file written
                    // while this process could not reach it, or before).
                    self.next_seq = self.next_seq.max(h.seq + 1);
                }
                slot.head = head;
                slot.state = State::Ready;
            }
            Err(error) => {
                tracing::warn!(sink = %slot.name, %error, "audit sink failed");
                slot.state = State::Closed {
                    retry_at: Some(now + retry_interval),
                };
            }
        }
    }

    fn publish(&self) {
        // A poisoned lock only means a panic while copying plain values.
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        for (out, slot) in status.iter_mut().zip(&self.slots) {
            out.healthy = slot.state == State::Ready;
            out.head = slot.head.as_ref().map(|h| (h.seq, h.hash.clone()));
        }
    }
}
