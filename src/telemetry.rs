//! Logs and metrics.
//!
//! Metric names start with `signet_` and are documented in the README.
//! Label values are bounded: ring names (operator-created), algorithms,
//! outcomes, reasons, states and HTTP statuses; never kids, callers, paths
//! or anything else a caller chooses.
//!
//! Ring names come from requests, so a ring label is only ever the name of
//! a ring that exists ([`ring_label`]): a request naming an unknown ring is
//! counted under the ring `-`, never under its made-up name. Otherwise
//! 10,000 Sign calls to 10,000 invented rings would add 10,000 series.
//! Verification failures are only counted for rings that exist (Verify and
//! ReportVerificationFailures refuse an unknown ring first), and HTTP JWKS
//! requests are counted by status alone, not by path.

use std::{
    collections::BTreeMap,
    sync::{Mutex, OnceLock},
};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{
    crypto::verify::Failure,
    keyring::{KeyManager, KeyState},
};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Connections an HTTP listener closed because it was full.
pub const HTTP_CONNECTIONS_REFUSED: &str = "signet_http_connections_refused_total";

/// The ring label for a request that named `ring`: the name if such a ring
/// exists, else `-`.
pub fn ring_label(keys: &KeyManager, ring: &str) -> String {
    match keys.ring(ring, "key_ring") {
        Ok(r) => r.name().to_string(),
        Err(_) => "-".to_owned(),
    }
}

/// Installs the Prometheus recorder once per process and returns its handle
/// (`None` if another recorder was installed first).
pub fn metrics_handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                ])
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    describe_counter!(
        "signet_signs_total",
        "Sign requests by ring (\"-\" for a ring that does not exist), algorithm and outcome."
    );
    describe_histogram!(
        "signet_sign_duration_seconds",
        "Time to sign a token, by algorithm."
    );
    describe_counter!(
        "signet_verification_failures_total",
        "Token verification failures by ring, reason and source (own Verify, or reported by verifiers)."
    );
    describe_counter!(
        "signet_jwks_requests_total",
        "HTTP JWKS requests by status (200, 304, 404, 503)."
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "HTTP connections closed unserved because the listener had max_connections open."
    );
    describe_gauge!("signet_keys", "Keys per ring and state.");
    describe_gauge!(
        "signet_next_transition_seconds",
        "Seconds until the ring's next lifecycle change."
    );
    describe_gauge!(
        "signet_active_key_age_seconds",
        "Seconds since the ring's Active key started signing."
    );
    describe_counter!("signet_scheduler_runs_total", "Scheduler passes.");
    describe_counter!(
        "signet_scheduler_failures_total",
        "Scheduler passes that failed on a ring."
    );
    describe_gauge!(
        "signet_sealed",
        "1 while sealed (no key in memory), else 0."
    );
    describe_gauge!(
        "signet_store_up",
        "Replicas on a shared store: 1 while its last refresh succeeded, 0 while it does not answer."
    );
    describe_counter!(
        "signet_audit_failures_total",
        "Requests refused because no audit record could be written."
    );
    describe_counter!(
        "signet_clock_jumps_total",
        "Times the service clock moved more than 60 s against the monotonic clock between scheduler ticks (each also logged and audited)."
    );
    describe_gauge!(
        "signet_audit_up",
        "0 while the scheduler cannot write audit intent or outcome records (it then changes nothing), else 1."
    );
    describe_counter!(
        "signet_ring_refusals_total",
        "Times a ring was refused because its stored state differs from its sealed manifest or rolled back, by reason (missing, forged, differs, rollback)."
    );
    describe_counter!(
        "signet_manifest_ignored_rows_total",
        "Key rows found in the store that the ring's sealed manifest does not list (ignored)."
    );
    describe_gauge!(
        "signet_rings_refused",
        "Rings refused now (they neither sign nor change until the store is restored)."
    );
    counter!("signet_scheduler_runs_total").absolute(0);
    counter!("signet_scheduler_failures_total").absolute(0);
    counter!("signet_audit_failures_total").absolute(0);
    counter!(HTTP_CONNECTIONS_REFUSED).absolute(0);
}

/// Verification failures counted so far, by `(ring, reason, source)`: the
/// same numbers as `signet_verification_failures_total`, kept where the
/// status page can read them (a metrics recorder cannot be read back). A
/// std mutex: held to add one number or copy the map, never across an
/// await. Bounded like the metric's labels: rings that exist, the reasons
/// of [`Failure`] and two sources.
static FAILURES: Mutex<BTreeMap<(String, &'static str, &'static str), u64>> =
    Mutex::new(BTreeMap::new());

/// Counts a verification failure.
pub fn verification_failure(ring: &str, reason: Failure, source: &'static str, n: u64) {
    counter!(
        "signet_verification_failures_total",
        "ring" => ring.to_owned(),
        "reason" => reason.name(),
        "source" => source
    )
    .increment(n);
    if n > 0 {
        // Poisoned only by a panic while adding a number: still consistent.
        let mut failures = FAILURES.lock().unwrap_or_else(|p| p.into_inner());
        let total = failures
            .entry((ring.to_owned(), reason.name(), source))
            .or_insert(0);
        *total = total.saturating_add(n);
    }
}

/// One line of [`verification_failures`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureCount {
    /// The ring the failures were counted on.
    pub ring: String,
    /// The reason ([`Failure::name`]).
    pub reason: &'static str,
    /// `own` (the Verify RPC) or `reported` (by verifiers).
    pub source: &'static str,
    /// Failures since the process started.
    pub count: u64,
}

/// Every verification failure counted since the process started, by ring,
/// reason and source, sorted in that order; reasons never seen are absent.
pub fn verification_failures() -> Vec<FailureCount> {
    FAILURES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|((ring, reason, source), count)| FailureCount {
            ring: ring.clone(),
            reason,
            source,
            count: *count,
        })
        .collect()
}

/// Renders every metric as Prometheus text, after refreshing the gauges
/// that are derived from the key set and the clock.
pub fn render(keys: &KeyManager) -> String {
    let Some(handle) = metrics_handle() else {
        return String::new();
    };
    let now = keys.now();
    gauge!("signet_sealed").set(if keys.is_sealed() { 1.0 } else { 0.0 });
    let refused = keys
        .snapshot()
        .rings()
        .iter()
        .filter(|r| r.is_refused())
        .count();
    gauge!("signet_rings_refused").set(refused as f64);
    for ring in keys.snapshot().rings() {
        let name = ring.name().to_string();
        let mut counts = [0u32; 6];
        for k in &ring.record().keys {
            let state = k.timeline.state_at(now);
            counts[state as usize] += 1;
        }
        for (i, state) in [
            KeyState::Pending,
            KeyState::Published,
            KeyState::Active,
            KeyState::Retiring,
            KeyState::Removed,
            KeyState::Revoked,
        ]
        .into_iter()
        .enumerate()
        {
            gauge!("signet_keys", "ring" => name.clone(), "state" => state.name())
                .set(f64::from(counts[i]));
        }
        if let Some(next) = ring.next_change(now) {
            gauge!("signet_next_transition_seconds", "ring" => name.clone())
                .set((next.as_secs() - now.as_secs()) as f64);
        }
        if let Some(active) = ring.active_at(now) {
            gauge!("signet_active_key_age_seconds", "ring" => name.clone())
                .set((now.as_secs() - active.timeline.activate_at.as_secs()) as f64);
        }
    }
    handle.render()
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs to stderr in `format`; `RUST_LOG` overrides the default level
/// `info`. A second call keeps the first configuration.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
