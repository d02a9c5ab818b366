//! The audit log as the RPC layer uses it: a real file, many concurrent
//! callers, restarts, rotation, failing and blocking sinks, and the
//! verifier catching each kind of tampering.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use signet::audit::{
    AuditConfig, AuditError, AuditKey, AuditLog, AuditRecord, GENESIS_PREV, Outcome, RESYNC_RPC,
    SinkConfig, VerifyReport, line_hash, verify_file,
};
use zeroize::Zeroizing;

fn config(sinks: Vec<SinkConfig>, timeout: Duration) -> AuditConfig {
    AuditConfig {
        timeout,
        retry_interval: Duration::from_millis(100),
        ..AuditConfig::new(sinks)
    }
}

async fn open_file(path: &Path) -> AuditLog {
    AuditLog::open(config(vec![SinkConfig::file(path)], Duration::from_secs(5)))
        .await
        .unwrap()
}

fn sign_record(i: u64) -> AuditRecord {
    AuditRecord {
        request_id: format!("req-{i}"),
        peer: "spiffe://example.org/issuer".into(),
        peer_addr: "10.0.0.7:51234".into(),
        ring: "payments".into(),
        kid: "kid-1".into(),
        exp: Some(1_800_000_000),
        jti: Some(format!("jti-{i}")),
        ..AuditRecord::new("signet.v1.Signer/Sign", Outcome::Ok, "OK")
    }
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn verify_lines(dir: &Path, lines: &[Vec<u8>]) -> VerifyReport {
    let path = dir.join("tampered.log");
    std::fs::write(&path, lines.concat()).unwrap();
    verify_file(&path).unwrap()
}

fn relink(link: &Path, target: &Path) {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[tokio::test]
async fn clean_log_verifies_and_head_matches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open_file(&path).await;
    assert_eq!(log.head(), (0, GENESIS_PREV.to_owned()));
    for i in 1..=20 {
        assert_eq!(log.append(sign_record(i)).await.unwrap(), i);
    }
    let denied = AuditRecord {
        reason: Some("no grant".into()),
        ..AuditRecord::new(
            "signet.v1.KeyAdmin/Rotate",
            Outcome::Denied,
            "PERMISSION_DENIED",
        )
    };
    assert_eq!(log.append(denied).await.unwrap(), 21);

    let report = verify_file(&path).unwrap();
    assert!(report.is_valid(), "{report:?}");
    assert!(report.starts_log());
    assert_eq!((report.lines, report.head_seq), (21, 21));
    assert_eq!(log.head(), (21, report.head_hash.clone()));
    assert_eq!(log.head().1, line_hash(lines(&path).last().unwrap()));

    let text = std::fs::read_to_string(&path).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let time = last["time"].as_str().unwrap();
    assert_eq!(time.len(), "2026-01-02T03:04:05.678Z".len(), "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    assert_eq!(last["outcome"], "denied");
    assert!(
        last.get("exp").is_none() && last.get("jti").is_none(),
        "{last}"
    );

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn every_kind_of_tampering_is_found_at_the_right_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open_file(&path).await;
    for i in 1..=6 {
        log.append(sign_record(i)).await.unwrap();
    }
    let clean = lines(&path);
    assert!(verify_lines(dir.path(), &clean).is_valid());
    let first_error = |tampered: &[Vec<u8>]| {
        let report = verify_lines(dir.path(), tampered);
        report.first_error.expect("tampering detected")
    };

    // Edit a field of line 3: line 4's prev no longer matches.
    let mut edited = clean.clone();
    edited[2] = String::from_utf8(edited[2].clone())
        .unwrap()
        .replace("req-3", "req-X")
        .into_bytes();
    let e = first_error(&edited);
    assert_eq!(e.line, 4, "{e:?}");
    assert!(e.reason.contains("not the hash of line 3"), "{e:?}");

    // Delete line 3: the line now at 3 (seq 4) breaks.
    let mut deleted = clean.clone();
    deleted.remove(2);
    let e = first_error(&deleted);
    assert_eq!(e.line, 3, "{e:?}");
    assert!(e.reason.contains("jumps from 2 to 4"), "{e:?}");

    // Insert a line (a made-up record chained to line 2) before line 3.
    let mut inserted = clean.clone();
    let forged = AuditRecord {
        seq: 3,
        time: "2026-01-01T00:00:00.000Z".into(),
        prev: line_hash(&clean[1]),
        ..sign_record(99)
    };
    inserted.insert(2, forged.to_json_line());
    let e = first_error(&inserted);
    assert_eq!(
        e.line, 4,
        "the forged line chains, the one after it does not: {e:?}"
    );

    // Swap lines 4 and 5.
    let mut swapped = clean.clone();
    swapped.swap(3, 4);
    let e = first_error(&swapped);
    assert_eq!(e.line, 4, "{e:?}");

    // Edit the last line: the chain cannot see it, the head comparison can.
    let mut last = clean.clone();
    last[5] = String::from_utf8(last[5].clone())
        .unwrap()
        .replace("req-6", "req-Y")
        .into_bytes();
    let report = verify_lines(dir.path(), &last);
    assert!(report.is_valid());
    assert_ne!(report.head_hash, log.head().1);
}

/// Serializes a record the way the log does, for forging lines in tests.
trait JsonLine {
    fn to_json_line(&self) -> Vec<u8>;
}

impl JsonLine for AuditRecord {
    fn to_json_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap();
        line.push(b'\n');
        line
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_appends_keep_seq_and_chain() {
    const TOTAL: u64 = 10_000;
    const TASKS: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open_file(&path).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in (t..TOTAL).step_by(TASKS as usize) {
                    seqs.push(log.append(sign_record(i)).await.unwrap());
                }
                seqs
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{TOTAL} appends from {TASKS} tasks (fsync always): {elapsed:?} ({:.0}/s)",
        TOTAL as f64 / elapsed.as_secs_f64()
    );
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=TOTAL).collect::<Vec<_>>());

    let started = Instant::now();
    let report = verify_file(&path).unwrap();
    eprintln!("verify of {TOTAL} lines: {:?}", started.elapsed());
    assert!(report.is_valid(), "{:?}", report.first_error);
    assert!(report.resyncs.is_empty());
    assert_eq!((report.lines, report.head_seq), (TOTAL, TOTAL));
    assert_eq!(log.head(), (TOTAL, report.head_hash));
}

#[tokio::test]
async fn restart_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open_file(&path).await;
    for i in 1..=3 {
        log.append(sign_record(i)).await.unwrap();
    }
    let head = log.head();
    drop(log);

    let log = open_file(&path).await;
    assert_eq!(log.head(), head, "the head is read back on open");
    assert_eq!(log.append(sign_record(4)).await.unwrap(), 4);
    assert_eq!(log.append(sign_record(5)).await.unwrap(), 5);
    let report = verify_file(&path).unwrap();
    assert!(report.is_valid(), "{report:?}");
    assert!(report.resyncs.is_empty());
    assert_eq!((report.lines, report.head_seq), (5, 5));
}

#[tokio::test]
async fn restart_after_a_torn_write_cuts_it_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open_file(&path).await;
    for i in 1..=2 {
        log.append(sign_record(i)).await.unwrap();
    }
    drop(log);
    // A crash in the middle of writing line 3.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{\"time\":\"2026-01-01T00:00:00.000Z\",\"seq\":3,\"requ");
    std::fs::write(&path, &bytes).unwrap();
    assert!(!verify_file(&path).unwrap().is_valid());

    let log = open_file(&path).await;
    assert_eq!(log.head().0, 2);
    assert_eq!(log.append(sign_record(3)).await.unwrap(), 3);
    let report = verify_file(&path).unwrap();
    assert!(report.is_valid(), "{report:?}");
    assert_eq!(report.lines, 3);
}

#[tokio::test]
async fn reopen_after_rename_continues_the_chain_in_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    let log = open_file(&path).await;
    for i in 1..=3 {
        log.append(sign_record(i)).await.unwrap();
    }
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen().await.unwrap();
    assert!(path.exists(), "reopen creates the new file");
    for i in 4..=5 {
        assert_eq!(log.append(sign_record(i)).await.unwrap(), i);
    }

    let old = verify_file(&rotated).unwrap();
    let new = verify_file(&path).unwrap();
    assert!(old.is_valid() && new.is_valid(), "{old:?} {new:?}");
    assert!(old.starts_log() && !new.starts_log());
    assert_eq!((old.lines, old.head_seq), (3, 3));
    assert_eq!((new.lines, new.first_seq, new.head_seq), (2, Some(4), 5));
    assert_eq!(new.first_prev.as_deref(), Some(old.head_hash.as_str()));
    assert_eq!(log.head(), (5, new.head_hash));
}

#[tokio::test]
async fn full_disk_fails_closed_within_the_timeout() {
    let timeout = Duration::from_millis(500);
    let log = AuditLog::open(config(vec![SinkConfig::file("/dev/full")], timeout))
        .await
        .unwrap();
    for i in 0..3 {
        let started = Instant::now();
        let result = log.append(sign_record(i)).await;
        assert!(matches!(result, Err(AuditError::Unavailable)), "{result:?}");
        assert!(started.elapsed() < timeout + Duration::from_millis(500));
    }
    assert_eq!(
        AuditError::Unavailable.to_string(),
        "audit unavailable",
        "the message the RPC layer returns"
    );
    assert!(!log.sinks()[0].healthy);
}

#[tokio::test]
async fn blocked_sink_fails_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    // Opening a FIFO for writing blocks until a reader comes: never, here.
    let log = AuditLog::open(config(vec![SinkConfig::file(&fifo)], timeout))
        .await
        .unwrap();
    assert!(started.elapsed() < timeout + Duration::from_secs(1));
    for i in 0..3 {
        let started = Instant::now();
        let result = log.append(sign_record(i)).await;
        assert!(matches!(result, Err(AuditError::Unavailable)), "{result:?}");
        assert!(started.elapsed() < timeout + Duration::from_secs(1));
    }
    assert!(
        log.reopen().await.is_err(),
        "a stuck sink cannot be reopened"
    );

    // A reader comes: the open completes, and appends succeed again.
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let mut seq = None;
    for i in 0..100 {
        if let Ok(s) = log.append(sign_record(i)).await {
            seq = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seq = seq.expect("the sink recovered");
    assert!(seq > 3, "failed appends consumed their seqs: {seq}");
    drop(log);
    let report = signet::audit::verify_reader(&reader.join().unwrap()[..]).unwrap();
    assert!(report.is_valid() && report.starts_log(), "{report:?}");
    assert_eq!((report.lines, report.head_seq), (1, seq));
}

#[tokio::test]
async fn a_sink_that_recovers_resumes_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.log");
    let link = dir.path().join("audit.log");
    relink(&link, &real);
    let log = AuditLog::open(config(
        vec![SinkConfig::file(&link)],
        Duration::from_secs(2),
    ))
    .await
    .unwrap();
    assert_eq!(log.append(sign_record(1)).await.unwrap(), 1);
    assert_eq!(log.append(sign_record(2)).await.unwrap(), 2);

    // The disk fills up: appends fail, however often they are tried.
    relink(&link, Path::new("/dev/full"));
    log.reopen().await.unwrap();
    assert!(log.append(sign_record(3)).await.is_err());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        log.append(sign_record(4)).await.is_err(),
        "retried, still full"
    );

    // Space again; the operator sends SIGHUP.
    relink(&link, &real);
    log.reopen().await.unwrap();
    let seq = log.append(sign_record(5)).await.unwrap();
    assert!(seq > 4, "seqs 3 and 4 are never reused: {seq}");
    let report = verify_file(&real).unwrap();
    assert!(report.is_valid(), "{report:?}");
    assert_eq!(report.resyncs.len(), 1, "{report:?}");
    assert_eq!(report.resyncs[0].after_seq, 2);
    assert_eq!(log.head(), (seq, report.head_hash.clone()));
    let text = std::fs::read_to_string(&real).unwrap();
    let marker = text.lines().nth(2).unwrap();
    assert!(
        marker.contains(RESYNC_RPC) && marker.contains("resumes after seq 2"),
        "{marker}"
    );

    // Full again, then space comes back without a SIGHUP: the retry finds it.
    relink(&link, Path::new("/dev/full"));
    log.reopen().await.unwrap();
    assert!(log.append(sign_record(6)).await.is_err());
    relink(&link, &real);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let last = loop {
        match log.append(sign_record(7)).await {
            Ok(seq) => break seq,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the retry never found the space: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let report = verify_file(&real).unwrap();
    assert!(report.is_valid(), "{report:?}");
    assert_eq!(report.resyncs.len(), 2, "{report:?}");
    assert_eq!(report.head_seq, last);
}

#[tokio::test]
async fn required_sink_rule() {
    let dir = tempfile::tempdir().unwrap();
    let good = |name: &str| dir.path().join(name);
    let full = || SinkConfig {
        required: false,
        ..SinkConfig::file("/dev/full")
    };
    let timeout = Duration::from_millis(500);

    // A failing best-effort sink does not matter while a required one writes.
    let log = AuditLog::open(config(vec![SinkConfig::file(good("a")), full()], timeout))
        .await
        .unwrap();
    assert_eq!(log.append(sign_record(1)).await.unwrap(), 1);
    let status = log.sinks();
    assert!(status[0].healthy && !status[1].healthy, "{status:?}");

    // A failing required sink fails the append, even if another sink wrote.
    let required_full = SinkConfig::file("/dev/full");
    let best_effort = SinkConfig {
        required: false,
        ..SinkConfig::file(good("b"))
    };
    let log = AuditLog::open(config(vec![required_full, best_effort], timeout))
        .await
        .unwrap();
    assert!(log.append(sign_record(1)).await.is_err());
    assert_eq!(
        verify_file(&good("b")).unwrap().lines,
        1,
        "written, not acknowledged"
    );

    // No sink required: any one sink that writes is enough, none is not.
    let best_effort = SinkConfig {
        required: false,
        ..SinkConfig::file(good("c"))
    };
    let log = AuditLog::open(config(vec![full(), best_effort], timeout))
        .await
        .unwrap();
    assert!(log.append(sign_record(1)).await.is_ok());
    let log = AuditLog::open(config(vec![full(), full()], timeout))
        .await
        .unwrap();
    assert!(log.append(sign_record(1)).await.is_err());

    assert!(matches!(
        AuditLog::open(AuditConfig::new(vec![])).await,
        Err(AuditError::Config(_))
    ));
}

#[tokio::test]
async fn hmac_digests_are_keyed_and_no_secret_is_printed() {
    let key_bytes = [0xA7u8; 32];
    let key = AuditKey::from_bytes(Zeroizing::new(key_bytes));
    let other = AuditKey::from_bytes(Zeroizing::new([0x11u8; 32]));
    let claims = br#"{"sub":"alice","scope":"pay"}"#;
    assert_eq!(key.hmac_hex(claims), key.hmac_hex(claims));
    assert_ne!(key.hmac_hex(claims), other.hmac_hex(claims));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open_file(&path).await;
    let rec = AuditRecord {
        claims_hmac: Some(key.hmac_hex(claims)),
        sub_hmac: Some(key.hmac_hex(b"alice")),
        ..sign_record(1)
    };
    log.append(rec.clone()).await.unwrap();

    let key_hex = hex::encode(key_bytes);
    let printed = [
        format!("{log:?}"),
        format!("{rec:?}"),
        format!("{:?}", verify_file(&path).unwrap()),
        format!("{:?}", AuditConfig::new(vec![SinkConfig::file(&path)])),
        format!("{:?}", AuditError::Unavailable),
        std::fs::read_to_string(&path).unwrap(),
    ];
    for text in printed {
        assert!(!text.contains(&key_hex), "{text}");
        assert!(!text.contains("alice") && !text.contains("scope"), "{text}");
        assert!(!text.contains(&format!("{:?}", &key_bytes[..8])), "{text}");
    }
}

/// `signet audit verify` on a clean log, a tampered one, and a wrong head.
#[tokio::test]
async fn audit_verify_command() {
    use signet::audit::{AuditConfig, AuditLog, AuditRecord, Outcome, SinkConfig};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(AuditConfig::new(vec![SinkConfig::file(path.clone())]))
        .await
        .unwrap();
    for _ in 0..5 {
        log.append(AuditRecord::new("signet.v1.Signer/Sign", Outcome::Ok, "OK"))
            .await
            .unwrap();
    }
    let (_, head) = log.head();
    drop(log);
    let bin = env!("CARGO_BIN_EXE_signet");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let p = path.to_str().unwrap();
    let ok = run(&["audit", "verify", p, "--head", &head]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("OK: the chain holds"));

    let wrong = run(&["audit", "verify", p, "--head", &"0".repeat(64)]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("the service reported head"));

    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"OK\"", "\"DENIED\"", 2)).unwrap();
    let bad = run(&["audit", "verify", p]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.starts_with("signet: line 2:"), "{err}");
}

/// An audit key file from an earlier version (one per data directory) moves
/// into the store at Unseal and is removed; later calls read the store.
/// A file that does not open under the KEK is refused and left alone.
#[tokio::test]
async fn a_legacy_audit_key_file_moves_into_the_store() {
    use signet::{clock::SystemClock, keyring::KeyManager, seal::KekSpec, store::SqliteStore};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let kek = crate::common::process::kek_file(&dir.path().join("kek"));
    let spec: KekSpec = kek.parse().unwrap();
    let store = SqliteStore::open(&dir.path().join("signet.db"))
        .await
        .unwrap();
    let keys = KeyManager::open(
        Arc::new(store),
        Arc::new(SystemClock),
        Arc::new(spec.clone()),
    )
    .await
    .unwrap();

    let raw = Zeroizing::new([9u8; 32]);
    let wrapped = spec
        .open()
        .await
        .unwrap()
        .wrap(&raw, AuditKey::WRAP_AAD)
        .await
        .unwrap();
    let file = dir.path().join("audit.key");
    std::fs::write(&file, &wrapped).unwrap();
    let want = AuditKey::from_bytes(raw).hmac_hex(b"alice");
    // Unseal moves it, before anything is derived from the store's key.
    keys.set_legacy_audit_key_file(file.clone());
    keys.unseal().await.unwrap();
    assert!(!file.exists(), "moved into the store at Unseal");

    let got = keys.audit_key(&file).await.unwrap();
    assert_eq!(got.hmac_hex(b"alice"), want, "the file's key is kept");
    let again = keys.audit_key(&file).await.unwrap();
    assert_eq!(again.hmac_hex(b"alice"), want, "read back from the store");

    std::fs::write(&file, b"not a wrapped key").unwrap();
    let Err(err) = keys.audit_key(&file).await else {
        panic!("a file that does not open must be refused");
    };
    let err = err.to_string();
    assert!(err.contains("does not open under this KEK"), "{err}");
    assert!(
        file.exists(),
        "a file that does not open is left for the operator"
    );
}
