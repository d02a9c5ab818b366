//! An audit trail a third party can check: signed checkpoints verified with
//! the public key alone, every kind of tampering found, an anchored head that
//! refuses a truncated file at start, intent before action with a failing
//! sink, and records that survive a sealed start.

use std::{path::Path, sync::Arc, time::Duration};

use signet::{
    audit::{
        AuditConfig, AuditKey, AuditLog, AuditRecord, CheckpointKey, GENESIS_PREV, Outcome,
        RESYNC_RPC, SinkConfig, Verifier, VerifyReport, line_hash,
    },
    clock::{ManualClock, UnixTime},
    crypto::{Algorithm, KeySpec},
    keyring::KeyManager,
};
use zeroize::Zeroizing;

use crate::common::{
    process::{BIN, Proc, kek_file, write_config},
    wait_for,
};

fn key() -> AuditKey {
    AuditKey::from_bytes(Zeroizing::new([0x5a; 32]))
}

fn public() -> CheckpointKey {
    key().checkpoint_signer().public()
}

/// A log of `n` Sign records with a checkpoint every 10, closed with a
/// final one; returns its lines.
async fn signed_log(path: &Path, n: u64) -> Vec<Vec<u8>> {
    let log = AuditLog::open(AuditConfig {
        checkpoint_every: 10,
        checkpoint_interval: Duration::from_secs(3600),
        ..AuditConfig::new(vec![SinkConfig::file(path)])
    })
    .await
    .unwrap();
    log.set_signer(Some(Arc::new(key().checkpoint_signer())));
    for i in 0..n {
        let mut rec = AuditRecord::new("signet.v1.Signer/Sign", Outcome::Ok, "OK");
        rec.kid = format!("k{i}");
        log.append(rec).await.unwrap();
    }
    log.checkpoint().await.unwrap();
    lines(path)
}

/// An in-process server on a Unix socket in `dir`, everything allowed,
/// every RPC recorded in `log`; a channel to it.
async fn serve_audited(dir: &Path, keys: KeyManager, log: AuditLog) -> tonic::transport::Channel {
    let socket = dir.join("grpc.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(signet::rpc::serve_with(
        signet::tls::unix_incoming(listener),
        keys,
        Arc::new(signet::rpc::guard::AllowAll),
        Some(signet::rpc::AuditParts { log, key: None }),
        std::future::pending(),
    ));
    signet::cli::connect(&format!("unix:{}", socket.display()))
        .await
        .unwrap()
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn verify(files: &[&[Vec<u8>]], anchor: Option<(u64, String)>) -> VerifyReport {
    let mut v = Verifier::new(Some(public()));
    if let Some((seq, _)) = &anchor {
        v.expect_anchor(*seq);
    }
    for (i, f) in files.iter().enumerate() {
        v.feed(&format!("f{i}"), &f.concat()[..]).unwrap();
    }
    v.finish(anchor)
}

fn record(line: &[u8]) -> AuditRecord {
    serde_json::from_slice(&line[..line.len() - 1]).unwrap()
}

/// Rewrites `lines` from index `from` on so every `prev` chains again: what
/// an attacker with write access to the file does after editing a line.
fn rechain(lines: &mut [Vec<u8>], from: usize) {
    for i in from..lines.len() {
        let mut rec = record(&lines[i]);
        rec.prev = if i == 0 {
            GENESIS_PREV.to_owned()
        } else {
            line_hash(&lines[i - 1])
        };
        let mut line = serde_json::to_vec(&rec).unwrap();
        line.push(b'\n');
        lines[i] = line;
    }
}

fn first_error(r: &VerifyReport) -> (u64, String) {
    let e = r.first_error.clone().expect("tampering detected");
    (e.line, e.reason)
}

#[tokio::test]
async fn checkpoints_let_anyone_with_the_public_key_verify_offline() {
    let dir = tempfile::tempdir().unwrap();
    let lines = signed_log(&dir.path().join("audit.log"), 25).await;
    // 25 records, a checkpoint after each 10th, and one at the end.
    assert_eq!(lines.len(), 28);
    let r = verify(&[&lines], None);
    assert!(r.is_valid(), "{:?}", r.first_error);
    assert_eq!(r.last_signed_seq, Some(28));
    assert_eq!(r.unsigned_tail, 0);
    let cp = record(&lines[10]);
    assert_eq!(cp.rpc, "audit.checkpoint");
    assert_eq!(cp.prev, line_hash(&lines[9]), "signs the head before it");
    let cp2 = record(&lines[21]);
    assert_eq!(
        cp2.checkpoint_prev.as_deref(),
        Some(line_hash(&lines[10]).as_str()),
        "chained to the previous checkpoint"
    );
    // Another store's key verifies nothing.
    let mut v = Verifier::new(Some(
        AuditKey::from_bytes(Zeroizing::new([1; 32]))
            .checkpoint_signer()
            .public(),
    ));
    v.feed("f", &lines.concat()[..]).unwrap();
    assert_eq!(v.finish(None).first_error.unwrap().line, 11);
}

#[tokio::test]
async fn every_kind_of_tampering_is_detected_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let clean = signed_log(&dir.path().join("audit.log"), 25).await;

    // An edited line with every later hash recomputed: the chain holds, the
    // next checkpoint's signature does not.
    let mut edited = clean.clone();
    edited[3] = String::from_utf8(edited[3].clone())
        .unwrap()
        .replace("\"k3\"", "\"k9\"")
        .into_bytes();
    rechain(&mut edited, 4);
    let (line, why) = first_error(&verify(&[&edited], None));
    assert_eq!(line, 11, "{why}");
    assert!(why.contains("signature does not verify"), "{why}");

    let mut deleted = clean.clone();
    deleted.remove(4);
    assert_eq!(first_error(&verify(&[&deleted], None)).0, 5);
    let mut inserted = clean.clone();
    inserted.insert(4, clean[2].clone());
    assert_eq!(first_error(&verify(&[&inserted], None)).0, 5);
    let mut reordered = clean.clone();
    reordered.swap(4, 5);
    assert_eq!(first_error(&verify(&[&reordered], None)).0, 5);

    // The tail cut off (with the last checkpoint): caught against the anchor.
    let anchor = (28, line_hash(&clean[27]));
    let cut = &clean[..24];
    assert!(verify(&[cut], None).is_valid(), "no anchor, no proof");
    let (_, why) = first_error(&verify(&[cut], Some(anchor.clone())));
    assert!(why.contains("seqs 25..28 were cut from the end"), "{why}");
    assert!(verify(&[&clean], Some(anchor)).is_valid());

    // A forged resync marker to explain away deleted lines.
    let mut forged = clean[..5].to_vec();
    let marker = AuditRecord {
        seq: 9,
        time: "2026-12-01T00:00:00.000Z".into(),
        prev: line_hash(&forged[4]),
        reason: Some("sink resumed".into()),
        ..AuditRecord::new(RESYNC_RPC, Outcome::Ok, "OK")
    };
    let mut line = serde_json::to_vec(&marker).unwrap();
    line.push(b'\n');
    forged.push(line);
    let (line, why) = first_error(&verify(&[&forged], None));
    assert_eq!(line, 6);
    assert!(
        why.contains("audit.resync record whose signature does not verify"),
        "{why}"
    );
    // A checkpoint copied from elsewhere (a valid signature over other bytes).
    let mut moved = clean.clone();
    let mut cp = record(&moved[10]);
    cp.seq = 12;
    let mut l = serde_json::to_vec(&cp).unwrap();
    l.push(b'\n');
    moved[11] = l;
    let (line, why) = first_error(&verify(&[&moved], None));
    assert_eq!(line, 12);
    assert!(why.contains("signature does not verify"), "{why}");
}

/// Rotated files verify in order; a whole file missing between two is
/// caught at the first line of the next.
#[tokio::test]
async fn a_deleted_rotated_file_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(AuditConfig {
        checkpoint_every: 10,
        ..AuditConfig::new(vec![SinkConfig::file(&path)])
    })
    .await
    .unwrap();
    log.set_signer(Some(Arc::new(key().checkpoint_signer())));
    let mut files = Vec::new();
    for round in 0..3 {
        for _ in 0..4 {
            log.append(AuditRecord::new("signet.v1.Signer/Sign", Outcome::Ok, "OK"))
                .await
                .unwrap();
        }
        let rotated = dir.path().join(format!("audit.log.{round}"));
        std::fs::rename(&path, &rotated).unwrap();
        // Reopening signs the file it leaves, as at logrotate's SIGHUP.
        log.reopen().await.unwrap();
        files.push(lines(&rotated));
    }
    for f in &files {
        assert_eq!(
            record(f.last().unwrap()).rpc,
            "audit.checkpoint",
            "each rotated file ends signed"
        );
    }
    let all: Vec<&[Vec<u8>]> = files.iter().map(Vec::as_slice).collect();
    assert!(verify(&all, None).is_valid());
    let r = verify(&[all[0], all[2]], None);
    let e = r.first_error.unwrap();
    assert_eq!((e.file.as_str(), e.line), ("f1", 1));
    assert!(
        e.reason.contains("a rotated file between them is missing"),
        "{}",
        e.reason
    );
}

/// `signet audit verify` with several files and a public key file; exit
/// codes 0 (holds), 1 (broken), 2 (usage).
#[tokio::test]
async fn audit_verify_command_with_a_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut lines = signed_log(&path, 12).await;
    let pem = dir.path().join("audit.pub");
    std::fs::write(&pem, public().to_pem()).unwrap();
    let run = |args: &[&str]| std::process::Command::new(BIN).args(args).output().unwrap();
    let (p, k) = (path.to_str().unwrap(), pem.to_str().unwrap());
    let ok = run(&["audit", "verify", p, "--pubkey", k]);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{out}");
    assert!(
        out.contains("signed: up to seq 14; 0 line(s) after it are not signed yet"),
        "{out}"
    );
    lines[2] = String::from_utf8(lines[2].clone())
        .unwrap()
        .replace("\"k2\"", "\"kX\"")
        .into_bytes();
    rechain(&mut lines, 3);
    std::fs::write(&path, lines.concat()).unwrap();
    let bad = run(&["audit", "verify", p, "--pubkey", k]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.starts_with("signet: line 11: audit.checkpoint record whose signature does not verify"),
        "{err}"
    );
    let missing = run(&["audit", "verify", "/nonexistent/audit.log"]);
    assert_eq!(missing.status.code(), Some(2));
    let jwk = dir.path().join("audit.jwk");
    std::fs::write(&jwk, public().to_jwk().to_string()).unwrap();
    let bad = run(&["audit", "verify", p, "--pubkey", jwk.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1), "a JWK works as well");
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Cutting lines off the end while the server is stopped: the next start
/// refuses, naming the missing seqs; `signet audit accept-gap` writes a
/// signed gap record and the server starts; the log verifies against the
/// server's key and anchor, with the gap declared.
#[test]
fn truncated_log_refuses_start_until_the_gap_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kek = kek_file(&dir.path().join("kek"));
    let config = write_config(dir.path(), &data, &kek, &[("t", "EdDSA")]);
    // Checkpoints also go to a second file, as to another volume.
    let shipped = dir.path().join("checkpoints.log");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[audit]\ncheckpoint_sinks = [\"file:{}\"]\n",
        shipped.display()
    ));
    std::fs::write(&config, text).unwrap();
    let cfg = config.to_str().unwrap();
    let log_path = data.join("audit.log");
    let server = Proc::spawn(&["server", "--config", cfg], &[]).unwrap();
    for _ in 0..4 {
        server.ok(&["sign", "--ring", "t", "--claims", "{}"]);
    }
    assert!(server.terminate().success());
    let lines = audit_lines(&log_path);
    let last = lines.last().unwrap();
    assert_eq!(
        last["rpc"], "audit.checkpoint",
        "the log ends signed at shutdown"
    );
    let end = last["seq"].as_u64().unwrap();

    // The shipped copy of the last checkpoint proves the cut offline too.
    let shipped = std::fs::read_to_string(&shipped).unwrap();
    let last_shipped: serde_json::Value =
        serde_json::from_str(shipped.lines().last().unwrap()).unwrap();
    assert_eq!(last_shipped["seq"].as_u64(), Some(end));
    let anchor = format!("{end}:{}", last_shipped["hash"].as_str().unwrap());
    let verify_anchor = || {
        std::process::Command::new(BIN)
            .args([
                "audit",
                "verify",
                log_path.to_str().unwrap(),
                "--anchor",
                &anchor,
            ])
            .output()
            .unwrap()
    };
    assert!(verify_anchor().status.success());

    let text = std::fs::read_to_string(&log_path).unwrap();
    let kept: Vec<&str> = text.lines().collect();
    let kept = &kept[..kept.len() - 3];
    std::fs::write(&log_path, format!("{}\n", kept.join("\n"))).unwrap();
    let err = Proc::spawn(&["server", "--config", cfg], &[])
        .err()
        .unwrap();
    assert!(
        err.contains(&format!(
            "ends at seq {} but the key store's anchored checkpoint is seq {end}: seqs {}..{end} are missing",
            end - 3,
            end - 2
        )),
        "{err}"
    );

    let out = std::process::Command::new(BIN)
        .args([
            "audit",
            "accept-gap",
            "--config",
            cfg,
            "--reason",
            "restored from backup",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Proc::spawn(&["server", "--config", cfg], &[]).unwrap();
    server.ok(&["sign", "--ring", "t", "--claims", "{}"]);
    let lines = audit_lines(&log_path);
    let gap = lines.iter().find(|l| l["rpc"] == "audit.gap").unwrap();
    assert_eq!(gap["seq"].as_u64().unwrap(), end + 1);
    assert!(
        gap["reason"]
            .as_str()
            .unwrap()
            .contains("accepted by the operator: restored from backup")
    );
    let out = server.run(&[
        "audit",
        "verify",
        log_path.to_str().unwrap(),
        "--addr",
        &server.grpc,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "declared gap (resync or accepted gap); seq {}..{end}",
            end - 2
        )),
        "{stdout}"
    );
    let pubkey = server.ok(&["audit", "pubkey"]);
    assert!(pubkey.starts_with("-----BEGIN PUBLIC KEY-----"), "{pubkey}");
    assert!(pubkey.contains("\"crv\":\"Ed25519\""), "{pubkey}");
}

/// A server started sealed writes Sign records with claims digests once
/// unsealed, and signs checkpoints from then on.
#[test]
fn a_sealed_start_digests_claims_after_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kek = kek_file(&dir.path().join("kek"));
    let config = write_config(dir.path(), &data, &kek, &[("t", "ES256")]);
    let cfg = config.to_str().unwrap();
    // Create the ring first (a sealed start creates none).
    let server = Proc::spawn(&["server", "--config", cfg], &[]).unwrap();
    assert!(server.terminate().success());
    let server = Proc::spawn(&["server", "--config", cfg, "--start-sealed"], &[]).unwrap();
    server.ok(&["unseal"]);
    server.ok(&["sign", "--ring", "t", "--claims", r#"{"sub":"alice"}"#]);
    let log_path = data.join("audit.log");
    let lines = audit_lines(&log_path);
    let sign = lines
        .iter()
        .rev()
        .find(|l| l["rpc"] == "signet.v1.Signer/Sign")
        .unwrap();
    assert!(
        sign["claims_hmac"].as_str().is_some_and(|h| h.len() == 64),
        "{sign}"
    );
    assert!(sign["sub_hmac"].is_string(), "{sign}");
    let status: serde_json::Value =
        serde_json::from_str(&server.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["audit_public_key_jwk"]["crv"], "Ed25519");
}

/// With the audit sink failing, no mutating RPC changes anything: the
/// intent cannot be recorded, so the action does not run.
#[tokio::test]
async fn a_failing_sink_stops_every_mutation_before_it_happens() {
    use signet::pb::{self, key_admin_client::KeyAdminClient, operator_client::OperatorClient};
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("audit.log");
    std::os::unix::fs::symlink("/dev/full", &link).unwrap();
    let keys = KeyManager::ephemeral(Arc::new(signet::clock::SystemClock))
        .await
        .unwrap();
    keys.create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    let log = AuditLog::open(AuditConfig {
        timeout: Duration::from_millis(500),
        ..AuditConfig::new(vec![SinkConfig::file(&link)])
    })
    .await
    .unwrap();
    let ch = serve_audited(dir.path(), keys.clone(), log).await;
    let (mut admin, mut op) = (KeyAdminClient::new(ch.clone()), OperatorClient::new(ch));
    let state = |keys: &KeyManager| {
        let ring = keys.ring_info("r", "ring").unwrap();
        (
            format!("{:?}", ring.keys),
            format!("{:?}", ring.policy),
            keys.snapshot().rings().len(),
            keys.is_sealed(),
        )
    };
    let before = state(&keys);
    let active = keys.ring_info("r", "ring").unwrap().keys[0].kid.to_string();
    let unavailable = |r: Result<(), tonic::Status>| {
        let s = r.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
        assert_eq!(s.message(), "audit unavailable");
    };
    unavailable(
        admin
            .rotate(pb::RotateRequest {
                key_ring: "r".into(),
                immediate: true,
                reason: "x".into(),
                request_id: String::new(),
                fresh: false,
            })
            .await
            .map(|_| ()),
    );
    unavailable(
        admin
            .revoke_key(pb::RevokeKeyRequest {
                key_ring: "r".into(),
                kid: active,
                reason: "x".into(),
            })
            .await
            .map(|_| ()),
    );
    unavailable(
        admin
            .update_policy(pb::UpdatePolicyRequest {
                issuer: Default::default(),
                key_ring: "r".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );
    unavailable(
        admin
            .create_key_ring(pb::CreateKeyRingRequest {
                issuer: Default::default(),
                name: "new".into(),
                algorithm: "ES256".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    );
    unavailable(
        op.seal(pb::SealRequest { reason: "x".into() })
            .await
            .map(|_| ()),
    );
    assert_eq!(state(&keys), before, "nothing changed");
}

/// A scheduled rotation that falls due while the sink is down waits, and
/// happens once the sink is back; `signet_audit_up` says which.
#[tokio::test]
async fn a_due_rotation_waits_for_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixTime::from_secs(1_700_000_000)));
    let keys = KeyManager::ephemeral(clock.clone()).await.unwrap();
    keys.create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(85 * 86_400));
    let link = dir.path().join("audit.log");
    std::os::unix::fs::symlink("/dev/full", &link).unwrap();
    let log = AuditLog::open(AuditConfig {
        timeout: Duration::from_millis(300),
        retry_interval: Duration::from_millis(50),
        ..AuditConfig::new(vec![SinkConfig::file(&link)])
    })
    .await
    .unwrap();
    let report = keys.tick_audited(Some(&log)).await;
    assert!(report.generated.is_empty());
    assert!(
        report
            .failed
            .iter()
            .any(|(_, why)| why.starts_with("audit unavailable")),
        "{:?}",
        report.failed
    );
    assert_eq!(
        keys.ring_info("r", "ring").unwrap().keys.len(),
        1,
        "no successor"
    );

    let real = dir.path().join("real.log");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    log.reopen().await.unwrap();
    let report = keys.tick_audited(Some(&log)).await;
    assert_eq!(report.generated.len(), 1, "{:?}", report.failed);
    let records = audit_lines(&real);
    assert!(
        records
            .iter()
            .any(|r| r["rpc"] == "scheduler/generate" && r["outcome"] == "intent"),
        "{records:?}"
    );
}

/// A request too large to read is refused and still leaves a record.
#[tokio::test]
async fn an_oversized_request_leaves_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyManager::ephemeral(Arc::new(signet::clock::SystemClock))
        .await
        .unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(AuditConfig::new(vec![SinkConfig::file(&path)]))
        .await
        .unwrap();
    let ch = serve_audited(dir.path(), keys, log).await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(100 * 1024));
    let err = signet::pb::signer_client::SignerClient::new(ch)
        .sign(signet::pb::SignRequest {
            key_ring: "r".into(),
            claims_json: big.into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    let records = audit_lines(&path);
    let rec = records
        .iter()
        .find(|r| r["rpc"] == "signet.v1.Signer/Sign")
        .expect("the refused request is recorded");
    assert_eq!(rec["code"], "OUT_OF_RANGE");
    assert_eq!(rec["outcome"], "invalid");
    assert!(
        rec["reason"]
            .as_str()
            .unwrap()
            .starts_with("request larger than")
    );
    assert!(rec["peer"].as_str().unwrap().starts_with("unix:uid:"));
}

/// The reply and the audit record of an emergency rotation say whether it
/// promoted the published successor or made a fresh key.
#[tokio::test]
async fn emergency_rotation_says_what_it_did() {
    use signet::pb::{self, key_admin_client::KeyAdminClient};
    let dir = tempfile::tempdir().unwrap();
    let start = UnixTime::from_secs(1_700_000_000);
    let clock = Arc::new(ManualClock::new(start));
    let keys = KeyManager::ephemeral(clock.clone()).await.unwrap();
    keys.create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(85 * 86_400));
    let (next, _) = keys.rotate("r", false, "scheduled", None).await.unwrap();
    clock.advance(Duration::from_secs(2 * 3600));
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(AuditConfig::new(vec![SinkConfig::file(&path)]))
        .await
        .unwrap();
    let ch = serve_audited(dir.path(), keys, log).await;
    let mut admin = KeyAdminClient::new(ch);
    let rotate = |fresh: bool| pb::RotateRequest {
        key_ring: "r".into(),
        immediate: true,
        reason: "drill".into(),
        request_id: String::new(),
        fresh,
    };
    let promoted = admin.rotate(rotate(false)).await.unwrap().into_inner();
    assert!(promoted.promoted);
    assert_eq!(promoted.new_key.unwrap().kid, next.kid.to_string());
    let fresh = admin.rotate(rotate(true)).await.unwrap().into_inner();
    assert!(!fresh.promoted);
    let outcomes: Vec<String> = audit_lines(&path)
        .iter()
        .filter(|r| r["rpc"] == "signet.v1.KeyAdmin/Rotate" && r["outcome"] == "ok")
        .map(|r| r["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        outcomes,
        [
            "immediate: drill; promoted the published successor",
            "immediate, fresh key: drill"
        ]
    );
    let err = admin
        .rotate(pb::RotateRequest {
            immediate: false,
            ..rotate(true)
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "fresh: applies to an immediate rotation only"
    );
}

/// Clock jumps on a running scheduler: each is logged and audited, and the
/// key set stays sane (one successor, one Active key, nothing rotated twice).
#[tokio::test]
async fn clock_jumps_are_audited_and_rotate_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let start = UnixTime::from_secs(1_700_000_000);
    let clock = Arc::new(ManualClock::new(start));
    let keys = KeyManager::ephemeral(clock.clone()).await.unwrap();
    keys.create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    // A successor falls due at once: the first tick generates it.
    clock.advance(Duration::from_secs(85 * 86_400));
    let path = dir.path().join("audit.log");
    let mut config = AuditConfig::new(vec![SinkConfig::file(&path)]);
    // A disk stalled by the rest of the suite delays a record, not fails it.
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
    let has = |rpc: &'static str, needle: &'static str| {
        let path = path.clone();
        move || {
            std::fs::read_to_string(&path)
                .is_ok_and(|t| t.lines().any(|l| l.contains(rpc) && l.contains(needle)))
        }
    };
    wait_for(
        "the successor generated",
        has("scheduler/generate", "\"ok\""),
    )
    .await;
    let active = |keys: &KeyManager| {
        keys.ring_info("r", "ring")
            .unwrap()
            .keys
            .iter()
            .filter(|k| k.state == signet::keyring::KeyState::Active)
            .map(|k| k.kid.to_string())
            .collect::<Vec<_>>()
    };

    clock.advance(Duration::from_secs(30 * 86_400));
    wait_for(
        "the forward jump audited",
        has("scheduler/clock", "jumped forwards by 30days"),
    )
    .await;
    assert_eq!(
        keys.ring_info("r", "ring").unwrap().keys.len(),
        2,
        "one successor, not two"
    );
    let after_forward = active(&keys);
    assert_eq!(after_forward.len(), 1, "one Active key");

    clock.set(keys.now().saturating_sub(Duration::from_secs(3600)));
    wait_for(
        "the backward jump audited",
        has("scheduler/clock", "jumped backwards by 1h"),
    )
    .await;
    assert_eq!(active(&keys), after_forward, "the same key signs");
    assert_eq!(keys.ring_info("r", "ring").unwrap().keys.len(), 2);
    let _ = stop.send(());
    scheduler.await.unwrap();
}
