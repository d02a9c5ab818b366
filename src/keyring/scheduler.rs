//! The scheduler task: ticks the key manager at start and then at a fixed
//! interval, until shutdown. It only writes timelines (successors, destroyed
//! material); states follow from the clock. It also logs every state
//! transition it observes and warns about overdue rotations.

use std::{collections::HashMap, future::Future, time::Duration};

use metrics::counter;

use super::{KeyManager, KeyState, RingName};
use crate::{clock::UnixTime, crypto::Kid, store::KeyRecord};

/// Default time between scheduler ticks.
pub const DEFAULT_TICK: Duration = Duration::from_secs(30);

/// How often an overdue-rotation warning repeats for one ring.
const WARN_EVERY: i64 = 3600;

/// How far the service clock may drift from the monotonic clock between two
/// ticks before the scheduler calls it a jump (NTP slews far less).
const JUMP: Duration = Duration::from_secs(60);

/// Compares the service clock with the monotonic one between ticks, and
/// remembers each forward jump until the time it skipped has really passed.
struct JumpWatch {
    last: Option<(UnixTime, std::time::Instant)>,
    holds: Vec<Hold>,
}

/// A forward jump of the service clock from `left` (where the clock would
/// be without it) to `to`, seen at the monotonic instant `at`.
///
/// The rule: a key that signed before the jump (`activate_at < to`) may
/// have signed tokens whose grace, in real time, has not passed even
/// though the service clock says its `remove_at` has. Its material is kept
/// until `left` plus the monotonic time since the jump reaches `remove_at`
/// (every token it signed has then really expired); an operator can still
/// revoke it at once. Keys that began signing after the jump are not held.
/// A hold lasts for the life of the process (one per jump: jumps are rare).
struct Hold {
    at: std::time::Instant,
    left: UnixTime,
    to: UnixTime,
}

impl Hold {
    /// The service time as it would be without the jump: `left` plus the
    /// real time since.
    fn real(&self) -> UnixTime {
        self.left
            .saturating_add(Duration::from_secs(self.at.elapsed().as_secs()))
    }

    fn holds(&self, key: &KeyRecord) -> bool {
        key.timeline.activate_at < self.to
            && key.timeline.remove_at.is_some_and(|r| r > self.real())
    }
}

impl JumpWatch {
    /// How far the service clock moved beyond the monotonic time since the
    /// last call, in seconds (negative: backwards), when more than [`JUMP`].
    /// A forward jump starts a [`Hold`].
    fn check(&mut self, now: UnixTime) -> Option<i64> {
        let mono = std::time::Instant::now();
        let jump = self.last.and_then(|(then, at)| {
            let elapsed = i64::try_from(mono.duration_since(at).as_secs()).unwrap_or(i64::MAX);
            let moved = now.as_secs().saturating_sub(then.as_secs());
            let off = moved.saturating_sub(elapsed);
            (off.unsigned_abs() > JUMP.as_secs()).then_some(off)
        });
        self.last = Some((now, mono));
        if let Some(off) = jump.filter(|off| *off > 0) {
            self.holds.push(Hold {
                at: mono,
                left: now.saturating_sub(Duration::from_secs(off.unsigned_abs())),
                to: now,
            });
        }
        jump
    }

    /// Whether a forward jump holds back destroying `key`.
    fn holds(&self, key: &KeyRecord) -> bool {
        self.holds.iter().any(|h| h.holds(key))
    }
}

/// Remembers the states it last saw, to log transitions.
#[derive(Default)]
pub struct Observer {
    states: HashMap<(RingName, Kid), KeyState>,
    warned: HashMap<RingName, UnixTime>,
}

impl Observer {
    /// Logs each key whose state changed since the last call, and warns
    /// about a ring whose Active key has signed longer than its rotation
    /// period. Returns the transitions seen, as `(ring, kid, from, to)`.
    pub fn observe(
        &mut self,
        keys: &KeyManager,
    ) -> Vec<(RingName, Kid, Option<KeyState>, KeyState)> {
        let now = keys.now();
        let mut seen = Vec::new();
        for ring in keys.snapshot().rings() {
            let name = ring.name().clone();
            for k in &ring.record().keys {
                let state = k.timeline.state_at(now);
                let before = self.states.insert((name.clone(), k.kid.clone()), state);
                if before != Some(state) {
                    if before.is_some() {
                        tracing::info!(
                            ring = %name,
                            kid = %k.kid,
                            from = before.map_or("-", KeyState::name),
                            to = state.name(),
                            reason = k.reason.as_deref().unwrap_or(""),
                            "key state changed"
                        );
                    }
                    seen.push((name.clone(), k.kid.clone(), before, state));
                }
            }
            if let Some(active) = ring.active_at(now) {
                let period = ring.record().policy.rotation_period;
                let overdue = active.timeline.activate_at.saturating_add(period) < now;
                let last = self.warned.get(&name).map_or(i64::MIN, |t| t.as_secs());
                if overdue && now.as_secs().saturating_sub(last) >= WARN_EVERY {
                    tracing::warn!(
                        ring = %name,
                        kid = %active.kid,
                        active_since = %active.timeline.activate_at,
                        "the active key is older than the ring's rotation period"
                    );
                    self.warned.insert(name, now);
                }
            }
        }
        seen
    }
}

/// Runs [`KeyManager::tick`] now and every `every` until `shutdown`
/// completes. Failures are logged (and retried next tick), never fatal.
pub async fn run(
    keys: KeyManager,
    every: Duration,
    audit: Option<crate::audit::AuditLog>,
    shutdown: impl Future<Output = ()>,
) {
    let mut interval = tokio::time::interval(every);
    // After a stall (suspend, a paused VM), tick once, not in a burst.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut observer = Observer::default();
    let mut watch = JumpWatch {
        last: None,
        holds: Vec::new(),
    };
    let mut announced: std::collections::HashSet<(RingName, Kid)> = Default::default();
    // Notices (a clock jump, a held destruction) the audit log could not
    // take yet: each is seen once, so it is kept and written at a later
    // tick rather than lost with a sink that was briefly down.
    let mut unwritten: Vec<crate::audit::AuditRecord> = Vec::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = interval.tick() => {}
        }
        // A clock that jumped is worth a line in the log and the audit
        // trail: states follow the clock, so a jump moves the timelines.
        if let Some(off) = watch.check(keys.now()) {
            let (way, by) = if off < 0 {
                ("backwards", off.unsigned_abs())
            } else {
                ("forwards", off.unsigned_abs())
            };
            let by = humantime::format_duration(Duration::from_secs(by));
            let what = format!("the service clock jumped {way} by {by} between scheduler ticks");
            tracing::warn!(jump = %what, now = %keys.now(), "clock jump");
            counter!("signet_clock_jumps_total").increment(1);
            let mut rec =
                crate::audit::AuditRecord::new("scheduler/clock", crate::audit::Outcome::Ok, "OK");
            rec.reason = Some(what);
            unwritten.push(rec);
        }
        // Take in what other replicas wrote, so this tick plans from the
        // store's state (a lost CAS last time is resolved here).
        if let Err(e) = keys.refresh().await {
            tracing::warn!(error = %e, "could not refresh from the store");
        }
        hold_back(&keys, &watch, &mut announced, &mut unwritten).await;
        let notices_written = match &audit {
            Some(log) => write_notices(log, &mut unwritten).await,
            None => {
                unwritten.clear();
                true
            }
        };
        let report = keys.tick_holding(audit.as_ref(), &|k| watch.holds(k)).await;
        counter!("signet_scheduler_runs_total").increment(1);
        if let Some(log) = &audit {
            record(log, &report, notices_written).await;
        }
        if !report.failed.is_empty() {
            counter!("signet_scheduler_failures_total").increment(1);
            tracing::warn!(
                failed = report.failed.len(),
                "scheduler pass had failures; retrying next tick"
            );
        }
        observer.observe(&keys);
    }
}

/// Logs and audits (once per key) each removed key whose destruction a
/// clock jump holds back.
async fn hold_back(
    keys: &KeyManager,
    watch: &JumpWatch,
    announced: &mut std::collections::HashSet<(RingName, Kid)>,
    notices: &mut Vec<crate::audit::AuditRecord>,
) {
    let now = keys.now();
    let mut held = std::collections::HashSet::new();
    for ring in keys.snapshot().rings() {
        for k in &ring.record().keys {
            let removed = k.timeline.state_at(now) == KeyState::Removed;
            if !(removed && k.sealed.is_some() && watch.holds(k)) {
                continue;
            }
            held.insert((ring.name().clone(), k.kid.clone()));
            if !announced.insert((ring.name().clone(), k.kid.clone())) {
                continue;
            }
            let why = "its removal was made due by a clock jump forwards: the key stays \
                       published and its material kept until its grace has really passed";
            tracing::warn!(ring = %ring.name(), kid = %k.kid, "destruction held back: {why}");
            counter!("signet_destroy_held_total").increment(1);
            let mut rec =
                crate::audit::AuditRecord::new("scheduler/hold", crate::audit::Outcome::Ok, "OK");
            (rec.ring, rec.kid) = (ring.name().to_string(), k.kid.to_string());
            rec.reason = Some(why.to_owned());
            notices.push(rec);
        }
    }
    // Verifiers keep the held keys too, until the hold ends.
    keys.hold_published(&held).await;
}

/// Writes the notices in order; the first that cannot be written stays,
/// with every one after it, for the next tick (logged and counted).
/// Returns whether all were written.
async fn write_notices(
    log: &crate::audit::AuditLog,
    notices: &mut Vec<crate::audit::AuditRecord>,
) -> bool {
    let mut written = 0;
    for rec in notices.iter() {
        if let Err(e) = log.append(rec.clone()).await {
            counter!("signet_audit_failures_total").increment(1);
            tracing::warn!(error = %e, rpc = %rec.rpc, "scheduler notice not audited yet; trying again next tick");
            break;
        }
        written += 1;
    }
    notices.drain(..written);
    notices.is_empty()
}

/// One audit record per scheduler action (successor generated, material
/// destroyed, ring failed); sets `signet_audit_up`, which is also 0 while
/// notices wait to be written (`notices_written` false).
async fn record(log: &crate::audit::AuditLog, report: &super::TickReport, notices_written: bool) {
    use crate::audit::{AuditRecord, Outcome};
    let mut records = Vec::new();
    for (ring, kid) in &report.generated {
        let mut r = AuditRecord::new("scheduler/generate", Outcome::Ok, "OK");
        (r.ring, r.kid) = (ring.to_string(), kid.to_string());
        records.push(r);
    }
    for (ring, kid) in &report.destroyed {
        let mut r = AuditRecord::new("scheduler/destroy", Outcome::Ok, "OK");
        (r.ring, r.kid) = (ring.to_string(), kid.to_string());
        records.push(r);
    }
    for (ring, why) in &report.failed {
        let mut r = AuditRecord::new("scheduler/tick", Outcome::Error, "UNAVAILABLE");
        r.ring = ring.to_string();
        r.reason = Some(why.clone());
        records.push(r);
    }
    let mut up = notices_written;
    for r in records {
        if let Err(e) = log.append(r).await {
            counter!("signet_audit_failures_total").increment(1);
            tracing::error!(error = %e, "scheduler action not audited");
            up = false;
        }
    }
    // Down while intents or outcomes cannot be written: the scheduler then
    // changes nothing and tries again at the next tick.
    if report
        .failed
        .iter()
        .any(|(_, why)| why.starts_with("audit unavailable"))
    {
        up = false;
    }
    metrics::gauge!("signet_audit_up").set(if up { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    use super::*;
    use crate::{
        audit::{AuditConfig, AuditLog, SinkConfig, test_hooks},
        clock::ManualClock,
        crypto::{Algorithm, KeySpec},
    };

    fn lines_with(path: &std::path::Path, rpc: &str, needle: &str) -> usize {
        std::fs::read_to_string(path).map_or(0, |t| {
            t.lines()
                .filter(|l| l.contains(rpc) && l.contains(needle))
                .count()
        })
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(std::time::Instant::now() < deadline, "{what} within 20s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A clock jump and the hold it causes are seen once; with the audit
    /// sink failing at that moment, their records are written once it is
    /// back, not lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notices_the_audit_cannot_take_are_written_once_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(UnixTime::from_secs(1_700_000_000)));
        let keys = KeyManager::ephemeral(clock.clone()).await.unwrap();
        let spec = KeySpec::new(Algorithm::EdDsa, 0).unwrap();
        // Ring `g`'s successor is due at the first pass: its record shows
        // the scheduler has taken its first reading of the clock.
        keys.create_ring("g", spec).await.unwrap();
        clock.advance(Duration::from_secs(85 * 86_400));
        let ring = keys.create_ring("r", spec).await.unwrap();
        let old = ring.keys[0].kid.to_string();
        let mut policy = ring.policy;
        policy.max_token_ttl = Duration::from_secs(1);
        policy.default_token_ttl = Duration::from_secs(1);
        policy.jwks_max_age = Duration::ZERO;
        policy.clock_skew = Duration::ZERO;
        policy.grace = Duration::from_secs(60);
        keys.update_policy("r", policy).await.unwrap();
        keys.rotate("r", true, "retire the first key", None)
            .await
            .unwrap();

        let path = dir.path().join("audit.log");
        // While `down`, every fsync fails and what it was to make durable is
        // cut off again, as a lost write would leave the file.
        let (down, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (d, f, p) = (down.clone(), failed.clone(), path.clone());
        let synced = std::sync::Mutex::new(0u64);
        test_hooks::on_sync(&path, move || {
            let mut synced = synced.lock().unwrap();
            if d.load(Ordering::SeqCst) {
                f.fetch_add(1, Ordering::SeqCst);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)?
                    .set_len(*synced)?;
                return Err(std::io::Error::other("the disk is gone"));
            }
            *synced = std::fs::metadata(&p)?.len();
            Ok(())
        });
        let mut config = AuditConfig::new(vec![SinkConfig::file(&path)]);
        config.timeout = Duration::from_secs(30);
        config.retry_interval = Duration::from_millis(20);
        let log = AuditLog::open(config).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let scheduler = tokio::spawn(run(
            keys.clone(),
            Duration::from_millis(50),
            Some(log),
            async {
                let _ = stopped.await;
            },
        ));
        until("the first pass", || {
            lines_with(&path, "scheduler/generate", "\"ok\"") > 0
        })
        .await;

        // The sink fails; the clock jumps and the removal of `old` falls
        // due by it (held: its grace has not really passed).
        down.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_secs(30 * 86_400));
        // Passes try to write the notices and fail (two attempts: each
        // pass stops at the first failure).
        until("two failed writes", || failed.load(Ordering::SeqCst) >= 2).await;
        assert_eq!(lines_with(&path, "scheduler/clock", "jumped"), 0);
        down.store(false, Ordering::SeqCst);

        until("the jump audited", || {
            lines_with(&path, "scheduler/clock", "jumped forwards by 30days") == 1
        })
        .await;
        until("the hold audited", || {
            lines_with(&path, "scheduler/hold", &old) == 1
        })
        .await;
        let _ = stop.send(());
        scheduler.await.unwrap();
        // Written once each, however many passes retried them.
        assert_eq!(lines_with(&path, "scheduler/clock", "jumped"), 1);
        assert_eq!(lines_with(&path, "scheduler/hold", &old), 1);
        let report = crate::audit::verify_file(&path).unwrap();
        assert!(report.is_valid(), "{report:?}");
    }
}
