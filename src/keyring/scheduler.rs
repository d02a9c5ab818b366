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
            if let Some(log) = &audit {
                let mut rec = crate::audit::AuditRecord::new(
                    "scheduler/clock",
                    crate::audit::Outcome::Ok,
                    "OK",
                );
                rec.reason = Some(what);
                if log.append(rec).await.is_err() {
                    counter!("signet_audit_failures_total").increment(1);
                }
            }
        }
        // Take in what other replicas wrote, so this tick plans from the
        // store's state (a lost CAS last time is resolved here).
        if let Err(e) = keys.refresh().await {
            tracing::warn!(error = %e, "could not refresh from the store");
        }
        hold_back(&keys, &watch, &mut announced, audit.as_ref()).await;
        let report = keys.tick_holding(audit.as_ref(), &|k| watch.holds(k)).await;
        counter!("signet_scheduler_runs_total").increment(1);
        if let Some(log) = &audit {
            record(log, &report).await;
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
    audit: Option<&crate::audit::AuditLog>,
) {
    let now = keys.now();
    for ring in keys.snapshot().rings() {
        for k in &ring.record().keys {
            let removed = k.timeline.state_at(now) == KeyState::Removed;
            if !(removed && k.sealed.is_some() && watch.holds(k)) {
                continue;
            }
            if !announced.insert((ring.name().clone(), k.kid.clone())) {
                continue;
            }
            let why = "its removal was made due by a clock jump forwards: the key material \
                       is kept until its grace has really passed";
            tracing::warn!(ring = %ring.name(), kid = %k.kid, "destruction held back: {why}");
            counter!("signet_destroy_held_total").increment(1);
            if let Some(log) = audit {
                let mut rec = crate::audit::AuditRecord::new(
                    "scheduler/hold",
                    crate::audit::Outcome::Ok,
                    "OK",
                );
                (rec.ring, rec.kid) = (ring.name().to_string(), k.kid.to_string());
                rec.reason = Some(why.to_owned());
                if log.append(rec).await.is_err() {
                    counter!("signet_audit_failures_total").increment(1);
                }
            }
        }
    }
}

/// One audit record per scheduler action (successor generated, material
/// destroyed, ring failed).
async fn record(log: &crate::audit::AuditLog, report: &super::TickReport) {
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
    let mut up = true;
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
