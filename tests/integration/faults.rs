//! Fault points (`signet::fault!`, the `fault-injection` feature): a real
//! `signet` process made to fail, or to crash, at each step of a rotation,
//! an audit write, a scheduler destroy and a rekey. Error variant: the
//! caller gets a clear error with the right code, nothing changed, the
//! service goes on. Crash variant: after a restart the state is the old one
//! or the new one (never half), exactly one key is active, tokens signed
//! before still verify and the audit log verifies.
//!
//! Compiled only with the feature (scripts/test passes it): without it the
//! binary has no fault points to arm.

use crate::common;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use common::process::Proc;
use signet::{
    clock::{ManualClock, UnixTime},
    crypto::{Algorithm, KeySpec},
    keyring::KeyManager,
    pb::{self, key_admin_client::KeyAdminClient},
    seal::KekSpec,
    store::{KeyStore, SqliteStore},
};
use tonic::Code;

// The store steps on PostgreSQL, and the database lost mid-transaction.
mod postgres;

/// The steps of an immediate rotation, in order: what the caller sees when
/// each fails, and whether a crash there leaves the old state or the new.
const ROTATE_POINTS: &[(&str, Code, Survives)] = &[
    ("audit-write", Code::Unavailable, Survives::Old),
    ("generate", Code::Internal, Survives::Old),
    ("seal", Code::Unavailable, Survives::Old),
    ("store-insert", Code::Unavailable, Survives::Old),
    ("store-manifest", Code::Unavailable, Survives::Old),
    ("store-commit", Code::Unavailable, Survives::Old),
    ("store-committed", Code::Unavailable, Survives::New),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Survives {
    Old,
    New,
}

/// A runtime that keeps driving the client's connections while the test
/// blocks (a connection nobody polls never answers the server's GOAWAY, and
/// the server's graceful shutdown waits for it).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A `signet dev` server following `faults` (SIGNET_FAULTS_FILE).
fn dev(data: &Path, faults: &Path, env: &[(&str, &str)]) -> Result<Proc, String> {
    let file = faults.to_str().unwrap();
    let mut all = vec![("SIGNET_FAULTS_FILE", file)];
    all.extend_from_slice(env);
    Proc::dev(data, &[], &all)
}

/// Puts `spec` in force in `proc` and waits until it says so.
fn arm(proc: &Proc, faults: &Path, spec: &str) {
    let applied = |p: &Proc| p.stderr.lock().unwrap().matches("faults applied:").count();
    let before = applied(proc);
    let tmp = faults.with_extension("tmp");
    std::fs::write(&tmp, spec).unwrap();
    std::fs::rename(&tmp, faults).unwrap();
    common::eventually(Duration::from_secs(10), "the faults applied", || {
        applied(proc) > before
    });
}

type State = (Vec<pb::KeyInfo>, Option<pb::KeyRingInfo>);

/// ListKeys and GetKeyRing of the default ring.
async fn try_state(proc: &Proc, ring: &str) -> Result<State, tonic::Status> {
    let mut admin = KeyAdminClient::new(proc.channel().await);
    let keys = admin
        .list_keys(pb::ListKeysRequest {
            key_ring: ring.into(),
        })
        .await?
        .into_inner()
        .keys;
    let ring = admin
        .get_key_ring(pb::GetKeyRingRequest {
            key_ring: ring.into(),
        })
        .await?
        .into_inner()
        .ring;
    Ok((keys, ring))
}

/// [`try_state`], waiting out an audit sink that is reopening (every RPC
/// is refused, fail-closed, until its retry interval has passed).
async fn state(proc: &Proc) -> State {
    state_of(proc, "default").await
}

async fn state_of(proc: &Proc, ring: &str) -> State {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match try_state(proc, ring).await {
            Ok(s) => return s,
            Err(e) if e.code() == Code::Unavailable && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("ListKeys: {e:?}"),
        }
    }
}

fn active(keys: &[pb::KeyInfo]) -> Vec<String> {
    keys.iter()
        .filter(|k| k.state == pb::KeyState::Active as i32)
        .map(|k| k.kid.clone())
        .collect()
}

fn kids(keys: &[pb::KeyInfo]) -> Vec<String> {
    keys.iter().map(|k| k.kid.clone()).collect()
}

async fn rotate(proc: &Proc) -> Result<pb::RotateResponse, tonic::Status> {
    rotate_ring(proc, "default").await
}

async fn rotate_ring(proc: &Proc, ring: &str) -> Result<pb::RotateResponse, tonic::Status> {
    KeyAdminClient::new(proc.channel().await)
        .rotate(pb::RotateRequest {
            key_ring: ring.into(),
            immediate: true,
            reason: "fault test".into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

fn audit_verifies(proc: &Proc, data: &Path) {
    let log = data.join("audit.log");
    let out = proc.run(&["audit", "verify", log.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "the audit log verifies: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for a process that crashed at a fault point; true if it aborted.
fn crashed(mut proc: Proc) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            return status.signal() == Some(6);
        }
        assert!(std::time::Instant::now() < deadline, "no crash");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_rotation_step_failing_changes_nothing_and_the_service_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let faults = dir.path().join("faults");
    let proc = dev(&data, &faults, &[]).unwrap();
    let rt = runtime();
    for &(point, code, _) in ROTATE_POINTS {
        if point == "store-committed" {
            continue; // committed: the state is new (see the crash test)
        }
        let before = rt.block_on(state(&proc));
        arm(&proc, &faults, &format!("{point}=1*return"));
        let err = rt.block_on(rotate(&proc)).unwrap_err();
        assert_eq!(err.code(), code, "{point}: {err:?}");
        let msg = err.message();
        let expect = match point {
            "audit-write" => "audit unavailable",
            "generate" => "",
            "seal" => "KEK unavailable",
            _ => "key store unavailable",
        };
        assert!(msg.contains(expect), "{point}: {msg}");
        assert!(!msg.contains("fault injected"), "no detail leaks: {msg}");
        common::eventually(Duration::from_secs(5), "the point logged", || {
            proc.stderr
                .lock()
                .unwrap()
                .lines()
                .any(|l| l.contains("fault point: injected error") && l.contains(point))
        });
        assert_eq!(
            rt.block_on(state(&proc)),
            before,
            "{point}: nothing changed"
        );
        // The point fired once; the same call now goes through.
        let done = rt.block_on(rotate(&proc)).unwrap();
        let (keys, _) = rt.block_on(state(&proc));
        assert_eq!(keys.len(), before.0.len() + 1, "{point}: one new key");
        assert_eq!(active(&keys), vec![done.new_key.unwrap().kid], "{point}");
        proc.ok(&["sign", "--claims", "{}"]);
    }
    audit_verifies(&proc, &data);
}

#[test]
fn a_crash_at_each_rotation_step_leaves_the_old_state_or_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let faults = dir.path().join("faults");
    let rt = runtime();
    for &(point, _, survives) in ROTATE_POINTS {
        let proc = dev(&data, &faults, &[]).unwrap();
        let before = rt.block_on(state(&proc)).0;
        let token = proc.ok(&["sign", "--claims", r#"{"sub":"before the crash"}"#]);
        arm(&proc, &faults, &format!("{point}=return(crash)"));
        let err = rt.block_on(rotate(&proc)).unwrap_err();
        // The connection drops mid-call: h2 says UNKNOWN or UNAVAILABLE.
        assert!(
            matches!(err.code(), Code::Unavailable | Code::Unknown),
            "{point}: transport error {err:?}"
        );
        assert!(crashed(proc), "{point}: the process aborted");
        std::fs::remove_file(&faults).unwrap();

        let proc = dev(&data, &faults, &[]).unwrap();
        let after = rt.block_on(state(&proc)).0;
        match survives {
            Survives::Old => assert_eq!(kids(&after), kids(&before), "{point}: old state"),
            Survives::New => {
                assert_eq!(after.len(), before.len() + 1, "{point}: new state");
                assert_eq!(kids(&after)[..before.len()], kids(&before)[..]);
            }
        }
        assert_eq!(active(&after).len(), 1, "{point}: exactly one active key");
        common::verify(token.trim(), &proc.ok(&["jwks"]));
        proc.ok(&["sign", "--claims", "{}"]);
        audit_verifies(&proc, &data);
        assert!(proc.terminate().success(), "{point}: clean exit");
    }
}

/// A data dir whose ring `old` holds a key removed (grace over) whose
/// material the scheduler has not destroyed yet: the server's first tick
/// destroys it.
async fn removed_key_waiting(data: &Path) -> String {
    let store = SqliteStore::open(&data.join("signet.db")).await.unwrap();
    let kek: KekSpec = format!("file:{}", data.join("kek").display())
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let start = UnixTime::from_secs(i64::try_from(now).unwrap() - 100 * 86_400);
    let clock = Arc::new(ManualClock::new(start));
    let keys = KeyManager::open(Arc::new(store), clock.clone(), Arc::new(kek))
        .await
        .unwrap();
    keys.unseal().await.unwrap();
    let ring = keys
        .create_ring("old", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    let first = ring.keys[0].kid.to_string();
    let mut policy = ring.policy;
    policy.rotation_period = Duration::from_secs(365 * 86_400);
    keys.update_policy("old", policy).await.unwrap();
    clock.advance(Duration::from_secs(3600));
    keys.rotate("old", true, "retire the first key", None)
        .await
        .unwrap();
    keys.close().await;
    first
}

/// Whether the key's sealed material is still in the store.
async fn has_material(data: &Path, kid: &str) -> bool {
    let store = SqliteStore::open(&data.join("signet.db")).await.unwrap();
    let rings = store.load().await.unwrap();
    store.close().await;
    rings
        .iter()
        .flat_map(|r| &r.keys)
        .find(|k| k.kid.as_str() == kid)
        .unwrap()
        .sealed
        .is_some()
}

fn audit_has(data: &Path, rpc: &str, needle: &str) -> bool {
    std::fs::read_to_string(data.join("audit.log"))
        .is_ok_and(|t| t.lines().any(|l| l.contains(rpc) && l.contains(needle)))
}

#[test]
fn scheduler_destroy_fails_or_crashes_and_destroys_on_the_next_pass() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let faults = dir.path().join("faults");
    let rt = runtime();
    // The data dir and KEK of a dev server, then a removed key waiting.
    assert!(dev(&data, &faults, &[]).unwrap().terminate().success());
    let kid = rt.block_on(removed_key_waiting(&data));
    assert!(rt.block_on(has_material(&data, &kid)));

    // Error: the pass fails (audited), the material stays.
    let proc = dev(
        &data,
        &faults,
        &[("FAIL_POINTS", "scheduler-destroy=1*return")],
    )
    .unwrap();
    common::eventually(Duration::from_secs(20), "the failed pass audited", || {
        audit_has(&data, "scheduler/tick", "UNAVAILABLE")
    });
    assert!(proc.terminate().success());
    assert!(rt.block_on(has_material(&data, &kid)), "nothing destroyed");
    assert!(!audit_has(&data, "scheduler/destroy", "\"ok\""));

    // Crash: the process dies before the commit; the material stays.
    match dev(
        &data,
        &faults,
        &[("FAIL_POINTS", "scheduler-destroy=return(crash)")],
    ) {
        Ok(proc) => assert!(crashed(proc), "the process aborted"),
        Err(e) => assert!(e.contains("signal: 6"), "{e}"),
    }
    assert!(rt.block_on(has_material(&data, &kid)), "nothing destroyed");

    // Without the fault: destroyed, audited, and the log verifies.
    let proc = dev(&data, &faults, &[]).unwrap();
    common::eventually(Duration::from_secs(20), "the destroy audited", || {
        audit_has(&data, "scheduler/destroy", "\"ok\"")
    });
    audit_verifies(&proc, &data);
    assert!(proc.terminate().success());
    assert!(!rt.block_on(has_material(&data, &kid)), "destroyed");
}

/// `signet operator rekey` of `data` from its KEK to `new`, with FAIL_POINTS.
fn rekey(data: &Path, new: &str, points: &str) -> std::process::Output {
    let kek = format!("file:{}", data.join("kek").display());
    std::process::Command::new(common::process::BIN)
        .args(["operator", "rekey", "--data-dir"])
        .arg(data)
        .args(["--kek", &kek, "--new-kek", new, "--allow-unlocked-memory"])
        .env("FAIL_POINTS", points)
        .output()
        .unwrap()
}

#[test]
fn rekey_failing_or_crashing_at_each_step_leaves_one_kek_that_opens_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let faults = dir.path().join("faults");
    let proc = dev(&data, &faults, &[]).unwrap();
    let token = proc.ok(&["sign", "--claims", "{}"]);
    let jwks = proc.ok(&["jwks"]);
    assert!(proc.terminate().success());
    let new_path: PathBuf = dir.path().join("new-kek");
    let new = common::process::kek_file(&new_path);

    for point in [
        "rekey-rewrap",
        "store-rekey-commit",
        "store-rekey-committed",
    ] {
        // After its commit a rekey has taken effect: the crash is the case.
        let actions: &[&str] = if point == "store-rekey-committed" {
            &["return(crash)"]
        } else {
            &["return", "return(crash)"]
        };
        for &action in actions {
            let out = rekey(&data, &new, &format!("{point}={action}"));
            assert!(!out.status.success(), "{point}={action}");
            let old_opens = point != "store-rekey-committed";
            if action == "return" {
                let err = String::from_utf8_lossy(&out.stderr);
                let expect = if point == "rekey-rewrap" {
                    "KEK unavailable"
                } else {
                    "store unavailable"
                };
                assert!(err.contains(expect), "{point}: {err}");
            } else {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(out.status.signal(), Some(6), "{point}: aborted");
            }
            // Exactly one KEK opens the store, with every key in it.
            let (works, fails) = if old_opens {
                (vec![], vec!["--kek", &new])
            } else {
                (vec!["--kek", &new], vec![])
            };
            let proc = Proc::dev(&data, &works, &[]).unwrap();
            assert_eq!(proc.ok(&["jwks"]), jwks, "{point}={action}: same keys");
            common::verify(token.trim(), &proc.ok(&["jwks"]));
            proc.ok(&["sign", "--claims", "{}"]);
            assert!(proc.terminate().success());
            let err = Proc::dev(&data, &fails, &[]).err().unwrap();
            assert!(err.contains("is not the key-encryption key"), "{err}");
            if !old_opens {
                return; // the rekey took effect; the later cases need the old KEK
            }
        }
    }
}

/// A slow disk under the store, emulated by a 3 s delay at the commit step
/// (fail's `sleep` action; not a slow device): the rotation waits for it
/// and succeeds, and Sign meanwhile answers at its usual speed from the key
/// snapshot, never queued behind the write.
#[test]
fn a_slow_store_commit_delays_only_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let faults = dir.path().join("faults");
    let proc = dev(&data, &faults, &[]).unwrap();
    let rt = runtime();
    let before = rt.block_on(state(&proc)).0;
    arm(&proc, &faults, "store-commit=1*sleep(3000)");
    let started = std::time::Instant::now();
    let grpc = proc.grpc.clone();
    let rotating = std::thread::spawn(move || {
        runtime().block_on(async {
            let channel = signet::cli::connect(&grpc).await.unwrap();
            KeyAdminClient::new(channel)
                .rotate(pb::RotateRequest {
                    key_ring: "default".into(),
                    immediate: true,
                    reason: "slow disk".into(),
                    ..Default::default()
                })
                .await
        })
    });
    // A Sign that completes while the rotation is still held in its commit
    // was not queued behind the writer (no wall-clock bound per call: a
    // CLI process on a loaded machine may take seconds to start).
    let mut signed = 0;
    while !rotating.is_finished() {
        proc.ok(&["sign", "--claims", "{}"]);
        if !rotating.is_finished() {
            signed += 1;
        }
    }
    let done = rotating.join().unwrap().unwrap().into_inner();
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the commit was slow"
    );
    assert!(
        signed >= 1,
        "Sign waited on the writer: none completed during the slow commit"
    );
    let after = rt.block_on(state(&proc)).0;
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(active(&after), vec![done.new_key.unwrap().kid]);
}
