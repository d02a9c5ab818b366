//! What the status page shows, gathered from the key set, the audit log and
//! the failure counters at one instant: plain data, no HTML.
//!
//! Only what is safe to show an operator's browser is taken: ring names,
//! kids, states, dates, policy durations, failure counts, the audit chain
//! head and checkpoint. Never a path, the KEK spec, a sink name (a path),
//! claims or key material.

use std::time::Duration;

use crate::{
    audit::AuditLog,
    clock::UnixTime,
    keyring::{KeyManager, KeyState, Policy, Ring, Timeline, project},
    telemetry::FailureCount,
};

/// The chart shows at most this much time, and at least [`MIN_SPAN`].
const MAX_SPAN: Duration = Duration::from_secs(800 * 86_400);
const MIN_SPAN: Duration = Duration::from_secs(2 * 3600);

/// The whole page.
pub(super) struct View {
    /// When the page was made (the service clock).
    pub now: UnixTime,
    /// No key is in memory: Sign is refused.
    pub sealed: bool,
    /// `sqlite` or `postgres`.
    pub store_kind: &'static str,
    /// The key set is older than `store.max_staleness` (replicas only).
    pub stale: bool,
    /// Every ring, by name.
    pub rings: Vec<RingView>,
    /// Verification failures since the process started, by ring, reason
    /// and source.
    pub failures: Vec<FailureCount>,
    /// The audit chain, when the page is served with the audit log.
    pub audit: Option<AuditView>,
}

/// One ring.
pub(super) struct RingView {
    pub name: String,
    /// Algorithm and size, e.g. `RS256 (2048-bit)`.
    pub spec: String,
    pub policy: Policy,
    /// Its keys, oldest first, except those removed before the chart's
    /// window (counted in `older`).
    pub keys: Vec<KeyView>,
    /// Keys removed or revoked before the chart's window.
    pub older: usize,
    /// The kid that signs now.
    pub active: Option<String>,
    /// The next lifecycle change: when, and what happens then.
    pub next_change: Option<(UnixTime, String)>,
    /// The chart's rows: stored keys, then projected successors.
    pub rows: Vec<Row>,
    /// The chart's window.
    pub from: UnixTime,
    pub to: UnixTime,
}

/// One stored key.
pub(super) struct KeyView {
    pub kid: String,
    pub state: KeyState,
    pub timeline: Timeline,
    /// Why the last admin action on the key was taken: the operator's
    /// text, shown escaped.
    pub reason: Option<String>,
    /// Its sealed record failed its integrity check.
    pub broken: bool,
}

/// One row of a ring's chart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Row {
    /// A kid, or `next N` for a projected successor.
    pub label: String,
    pub timeline: Timeline,
    /// From this instant on the row is projected (what the scheduler will
    /// do under the current policy), not stored.
    pub projected_from: Option<UnixTime>,
}

/// The audit chain.
pub(super) struct AuditView {
    /// Seq and hash of the last line of the primary sink.
    pub head: (u64, String),
    /// The latest signed checkpoint, if one was written.
    pub checkpoint: Option<(u64, String)>,
    /// Sinks whose last write succeeded, of all sinks.
    pub healthy_sinks: (usize, usize),
}

impl View {
    /// The page as of `now`.
    pub fn build(
        keys: &KeyManager,
        audit: Option<&AuditLog>,
        failures: Vec<FailureCount>,
        now: UnixTime,
    ) -> View {
        View {
            now,
            sealed: keys.is_sealed(),
            store_kind: keys.store_kind(),
            stale: keys.check_fresh().is_err(),
            rings: keys
                .snapshot()
                .rings()
                .into_iter()
                .map(|r| ring_view(r, now))
                .collect(),
            failures,
            audit: audit.map(|a| {
                let sinks = a.sinks();
                AuditView {
                    head: a.head(),
                    checkpoint: a.anchors().borrow().clone(),
                    healthy_sinks: (sinks.iter().filter(|s| s.healthy).count(), sinks.len()),
                }
            }),
        }
    }
}

/// The chart's window for `policy`: two rotations with their lead and
/// grace, a quarter of it in the past.
pub(super) fn window(policy: &Policy, now: UnixTime) -> (UnixTime, UnixTime) {
    let span =
        (policy.rotation_period * 2 + policy.publish_lead + policy.grace).clamp(MIN_SPAN, MAX_SPAN);
    let from = now.saturating_sub(span / 4);
    (from, from.saturating_add(span))
}

fn ring_view(ring: &Ring, now: UnixTime) -> RingView {
    let record = ring.record();
    let policy = &record.policy;
    let (from, to) = window(policy, now);
    let mut keys = Vec::new();
    let mut older = 0;
    for k in &record.keys {
        let ends = k.timeline.remove_at.or(k.timeline.revoked_at);
        if ends.is_some_and(|e| e < from) {
            older += 1;
            continue;
        }
        keys.push(KeyView {
            kid: k.kid.to_string(),
            state: k.timeline.state_at(now),
            timeline: k.timeline,
            reason: k.reason.clone(),
            broken: ring.is_broken(&k.kid),
        });
    }
    let rows = chart_rows(&keys, policy, to);
    RingView {
        name: ring.name().to_string(),
        spec: record.spec.to_string(),
        active: ring.active_at(now).map(|k| k.kid.to_string()),
        next_change: ring
            .next_change(now)
            .map(|at| (at, describe_change(ring, at))),
        policy: policy.clone(),
        keys,
        older,
        rows,
        from,
        to,
    }
}

/// The stored keys as rows, and the successors the scheduler will make up
/// to `to` for the key that has none yet (as `signet timeline` draws them).
pub(super) fn chart_rows(keys: &[KeyView], policy: &Policy, to: UnixTime) -> Vec<Row> {
    let mut rows: Vec<Row> = keys
        .iter()
        .map(|k| Row {
            label: k.kid.clone(),
            timeline: k.timeline,
            projected_from: None,
        })
        .collect();
    let open = keys.iter().rposition(|k| {
        k.timeline.retire_at.is_none()
            && k.timeline.revoked_at.is_none()
            && !matches!(k.state, KeyState::Removed | KeyState::Revoked)
    });
    if let Some(i) = open {
        let projected = project(rows[i].timeline, policy, to);
        rows[i].timeline = projected[0];
        rows[i].projected_from = projected[0].retire_at;
        for (n, timeline) in projected.into_iter().enumerate().skip(1) {
            rows.push(Row {
                label: format!("next {n}"),
                projected_from: Some(timeline.created_at),
                timeline,
            });
        }
    }
    rows
}

/// What happens to the ring at `at`, in words (kids shortened).
fn describe_change(ring: &Ring, at: UnixTime) -> String {
    let short = |kid: &str| kid.chars().take(8).collect::<String>();
    let mut what = Vec::new();
    for k in ring.record().keys.iter().filter(|k| k.sealed.is_some()) {
        let t = &k.timeline;
        let kid = short(k.kid.as_str());
        if t.revoked_at == Some(at) {
            what.push(format!("{kid} is revoked"));
            continue;
        }
        if t.publish_at == at && t.activate_at != at {
            what.push(format!("{kid} enters the JWKS"));
        }
        if t.activate_at == at {
            what.push(format!("{kid} starts signing"));
        }
        if t.retire_at == Some(at) {
            what.push(format!("{kid} stops signing"));
        }
        if t.remove_at == Some(at) {
            what.push(format!("{kid} leaves the JWKS"));
        }
    }
    if what.is_empty() {
        // Not a stored key's step: the scheduler's next successor.
        what.push("a successor key is generated and published".to_owned());
    }
    what.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: u64 = 86_400;

    fn day(n: i64) -> UnixTime {
        UnixTime::from_secs(1_767_225_600 + n * 86_400) // 2026-01-01
    }

    fn key(kid: &str, timeline: Timeline, now: UnixTime) -> KeyView {
        KeyView {
            kid: kid.to_owned(),
            state: timeline.state_at(now),
            timeline,
            reason: None,
            broken: false,
        }
    }

    #[test]
    fn window_covers_two_rotations_a_quarter_in_the_past() {
        let (from, to) = window(&Policy::default(), day(100));
        // 90 + 90 + 6 + 7 days.
        assert_eq!(to.as_secs() - from.as_secs(), (193 * D) as i64);
        assert_eq!(day(100).as_secs() - from.as_secs(), (193 * D / 4) as i64);
        let short = Policy {
            rotation_period: Duration::from_secs(60),
            publish_lead: Duration::ZERO,
            grace: Duration::ZERO,
            ..Policy::default()
        };
        let (from, to) = window(&short, day(0));
        assert_eq!(to.as_secs() - from.as_secs(), MIN_SPAN.as_secs() as i64);
    }

    /// The open key gets its projected retirement, and each projected
    /// successor is a row of its own, projected from its creation.
    #[test]
    fn projects_successors_of_the_open_key() {
        let policy = Policy::default();
        let keys = [key("aaaa", Timeline::immediate(day(0)), day(10))];
        let rows = chart_rows(&keys, &policy, day(200));
        let labels: Vec<_> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["aaaa", "next 1", "next 2"]);
        assert_eq!(rows[0].timeline.retire_at, Some(day(90)));
        assert_eq!(rows[0].projected_from, Some(day(90)));
        assert_eq!(rows[1].timeline.publish_at, day(84));
        assert_eq!(rows[1].timeline.activate_at, day(90));
        assert_eq!(rows[1].projected_from, Some(day(84)));
        assert_eq!(rows[2].timeline.activate_at, day(180));
        assert_eq!(rows[2].timeline.retire_at, None);
    }

    /// A stored successor is the open key: the old one is not projected.
    #[test]
    fn a_stored_successor_is_the_one_projected() {
        let policy = Policy::default();
        let old = Timeline {
            retire_at: Some(day(90)),
            remove_at: Some(day(97)),
            ..Timeline::immediate(day(0))
        };
        let new = Timeline {
            activate_at: day(90),
            ..Timeline::immediate(day(84))
        };
        let keys = [key("old", old, day(85)), key("new", new, day(85))];
        let rows = chart_rows(&keys, &policy, day(150));
        assert_eq!(rows[0].timeline, old);
        assert_eq!(rows[0].projected_from, None);
        assert_eq!(rows[1].label, "new");
        // Its successor would publish on day 174, after the window.
        assert_eq!(rows[1].projected_from, None);
        assert_eq!(rows.len(), 2);
    }
}
