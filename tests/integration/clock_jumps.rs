//! A running scheduler (the injected clock) whose service clock jumps
//! forwards past a key's removal: the key's material is kept until its
//! grace has really passed (monotonic time), and the hold is logged and
//! audited. (Backwards 1 hour and forwards 30 days without a removal:
//! audit_trail::clock_jumps_are_audited_and_rotate_nothing_twice.)

use std::{sync::Arc, time::Duration};

use signet::{
    audit::{AuditConfig, AuditLog, SinkConfig},
    clock::{ManualClock, UnixTime},
    crypto::{Algorithm, KeySpec},
    keyring::KeyManager,
};

use crate::common::wait_for;

/// The grace of the ring under test: short, so its real passing fits in a
/// test, and long enough that a loaded machine (an fsync stalled for
/// seconds) still sees the hold before it ends.
const GRACE: Duration = Duration::from_secs(10);

fn has(path: &std::path::Path, rpc: &str, needle: &str) -> bool {
    std::fs::read_to_string(path)
        .is_ok_and(|t| t.lines().any(|l| l.contains(rpc) && l.contains(needle)))
}

/// The scheduler's outcome record for destroying `kid` (its intent record
/// comes before the commit).
fn destroyed(path: &std::path::Path, kid: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| {
        t.lines()
            .any(|l| l.contains("scheduler/destroy") && l.contains(kid) && l.contains("\"ok\""))
    })
}

fn has_material(keys: &KeyManager, kid: &str) -> bool {
    let set = keys.snapshot();
    let ring = set
        .rings()
        .into_iter()
        .find(|r| r.name().as_str() == "r")
        .unwrap();
    ring.record()
        .keys
        .iter()
        .find(|k| k.kid.as_str() == kid)
        .unwrap()
        .sealed
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jump_forwards_past_a_removal_keeps_the_key_until_its_grace_really_passed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixTime::from_secs(1_700_000_000)));
    let keys = KeyManager::ephemeral(clock.clone()).await.unwrap();
    let spec = KeySpec::new(Algorithm::EdDsa, 0).unwrap();
    // Ring `g`'s successor is due when the scheduler starts: its audited
    // generation shows the scheduler has taken its first reading.
    keys.create_ring("g", spec).await.unwrap();
    clock.advance(Duration::from_secs(85 * 86_400));
    let ring = keys.create_ring("r", spec).await.unwrap();
    let old = ring.keys[0].kid.to_string();
    let mut policy = ring.policy;
    policy.max_token_ttl = Duration::from_secs(1);
    policy.default_token_ttl = Duration::from_secs(1);
    policy.jwks_max_age = Duration::ZERO;
    policy.clock_skew = Duration::ZERO;
    policy.grace = GRACE;
    keys.update_policy("r", policy).await.unwrap();
    // The first key stops signing now; by the clock, it goes 5 s later.
    keys.rotate("r", true, "retire the first key", None)
        .await
        .unwrap();

    let path = dir.path().join("audit.log");
    let mut config = AuditConfig::new(vec![SinkConfig::file(&path)]);
    // A disk stalled by the rest of the suite delays a record; it must not
    // fail it.
    config.timeout = Duration::from_secs(30);
    let log = AuditLog::open(config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let scheduler = tokio::spawn(signet::keyring::scheduler::run(
        keys.clone(),
        Duration::from_millis(50),
        Some(log),
        async {
            let _ = stopped.await;
        },
    ));
    let p = path.clone();
    wait_for("the first pass", move || {
        has(&p, "scheduler/generate", "\"ok\"")
    })
    .await;

    // Thirty days pass on the service clock in an instant: the key's
    // removal is due by the clock, not in real time.
    clock.advance(Duration::from_secs(30 * 86_400));
    let jumped = std::time::Instant::now();
    let (p, kid) = (path.clone(), old.clone());
    wait_for("the hold audited", move || has(&p, "scheduler/hold", &kid)).await;
    let p = path.clone();
    wait_for("the jump audited", move || {
        has(&p, "scheduler/clock", "jumped forwards by 30days")
    })
    .await;
    assert!(has_material(&keys, &old), "kept while its grace runs");
    // And still published, so tokens it signed before the jump verify.
    let (k, kid) = (keys.clone(), old.clone());
    wait_for("the held key published", move || in_jwks(&k, &kid)).await;

    // Once the grace has really passed, the scheduler destroys it (without
    // the hold, the first pass after the jump would have, 50 ms later).
    let (p, kid) = (path.clone(), old.clone());
    tokio::task::spawn_blocking(move || {
        crate::common::eventually(GRACE * 3, "the destroy committed", || destroyed(&p, &kid));
    })
    .await
    .unwrap();
    assert!(
        jumped.elapsed() >= GRACE.saturating_sub(Duration::from_secs(2)),
        "destroyed {:?} after the jump, grace {GRACE:?}",
        jumped.elapsed()
    );
    assert!(!has_material(&keys, &old));
    assert!(!in_jwks(&keys, &old), "unpublished once destroyed");
    let _ = stop.send(());
    scheduler.await.unwrap();
}

fn in_jwks(keys: &KeyManager, kid: &str) -> bool {
    keys.jwks("r", "ring")
        .unwrap()
        .0
        .keys
        .iter()
        .any(|k| k.kid == kid)
}
