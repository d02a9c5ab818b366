//! Sealed durable storage: restarts, wrong KEKs, tampering, crashes, seal.

use crate::common;

use std::{sync::Arc, time::Duration};

use common::process::{Proc, kek_file, write_config};
use signet::{
    clock::SystemClock,
    crypto::{Algorithm, KeySpec},
    keyring::KeyManager,
    pb::{
        self, key_admin_client::KeyAdminClient, operator_client::OperatorClient,
        signer_client::SignerClient,
    },
    seal::KekSpec,
    store::{KeyStore, SqliteStore},
};
use tonic::Code;

/// Every file of the data dir but the lock file, with its bytes.
fn snapshot_files(dir: &std::path::Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "signet.lock")
        .map(|e| (e.file_name(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

fn db(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("signet.db")
}

/// Overwrites one key's sealed blob in the SQLite file, as someone with
/// write access to the database (not through the store) would.
async fn set_blob(dir: &std::path::Path, ring: &str, kid: &str, blob: &[u8]) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", db(dir).display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let changed = sqlx::query("UPDATE keys SET sealed = ? WHERE ring = ? AND kid = ?")
        .bind(blob)
        .bind(ring)
        .bind(kid)
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 1, "one row rewritten");
    conn.close().await.unwrap();
}

#[test]
fn restart_keeps_keys_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = Proc::dev(&data, &[], &[]).unwrap();
    let token = dev.ok(&["sign", "--claims", r#"{"sub":"before-restart"}"#]);
    let jwks_before = dev.ok(&["jwks"]);
    assert!(dev.terminate().success());
    let kek = std::fs::metadata(data.join("kek")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        kek.permissions().mode() & 0o777,
        0o600,
        "dev KEK file is 0600"
    );

    let dev = Proc::dev(&data, &[], &[]).unwrap();
    let jwks_after = dev.ok(&["jwks"]);
    assert_eq!(jwks_before, jwks_after, "same keys after restart");
    common::verify(token.trim(), &jwks_after);
    let again = dev.ok(&["sign", "--claims", "{}"]);
    assert_eq!(
        common::part(again.trim(), 0)["kid"],
        common::part(token.trim(), 0)["kid"],
        "signing continues with the same active key"
    );
}

#[test]
fn wrong_kek_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = Proc::dev(&data, &[], &[]).unwrap();
    dev.ok(&["rotate", "--now", "--reason", "test"]);
    assert!(dev.terminate().success());
    let before = snapshot_files(&data);

    let other = kek_file(&dir.path().join("other-kek"));
    let err = Proc::dev(&data, &["--kek", &other], &[]).err().unwrap();
    assert!(
        err.contains("is not the key-encryption key of this store"),
        "{err}"
    );
    assert!(err.contains(&other), "names the provider: {err}");

    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let err = Proc::dev(
        &data,
        &["--kek", "env:SIGNET_TEST_KEK"],
        &[("SIGNET_TEST_KEK", wrong)],
    )
    .err()
    .unwrap();
    assert!(
        err.contains("KEK env:SIGNET_TEST_KEK is not the key-encryption key"),
        "{err}"
    );

    let err = Proc::dev(&data, &["--kek", "env:SIGNET_UNSET_KEK_VAR"], &[])
        .err()
        .unwrap();
    assert!(
        err.contains("env KEK $SIGNET_UNSET_KEK_VAR: the variable is not set"),
        "{err}"
    );

    let loose = dir.path().join("loose-kek");
    kek_file(&loose);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let spec = format!("file:{}", loose.display());
    let err = Proc::dev(&data, &["--kek", &spec], &[]).err().unwrap();
    assert!(
        err.contains("readable by group or others (mode 644)"),
        "{err}"
    );

    assert!(snapshot_files(&data) == before, "store files changed");
}

async fn manager(data: &std::path::Path, kek: &str) -> KeyManager {
    let store = SqliteStore::open(&db(data)).await.unwrap();
    let spec: KekSpec = kek.parse().unwrap();
    let keys = KeyManager::open(Arc::new(store), Arc::new(SystemClock), Arc::new(spec))
        .await
        .unwrap();
    keys.unseal().await.unwrap();
    keys
}

fn params(ring: &str) -> signet::keyring::SignParams<'_> {
    signet::keyring::SignParams {
        ring,
        claims_json: b"{}",
        ttl: None,
        header_json: b"",
        grant: None,
    }
}

#[tokio::test]
async fn swapped_blobs_fail_with_data_loss_and_other_rings_work() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("d")).unwrap();
    let data = dir.path().join("d");
    let kek = kek_file(&dir.path().join("kek"));
    let keys = manager(&data, &kek).await;
    for ring in ["a", "b", "c"] {
        keys.create_ring(ring, KeySpec::new(Algorithm::Es256, 0).unwrap())
            .await
            .unwrap();
    }
    drop(keys);

    // Swap the sealed blobs of rings a and b in the database: the rows and
    // the manifests still agree (a manifest lists timelines, not blobs), so
    // it is each blob's own binding to its ring and kid that catches this.
    let store = SqliteStore::open(&db(&data)).await.unwrap();
    let rings = store.load().await.unwrap();
    store.close().await;
    let get = |n: &str| rings.iter().find(|r| r.name.as_str() == n).unwrap().clone();
    let (a, b) = (get("a"), get("b"));
    for (ring, other) in [(&a, &b), (&b, &a)] {
        let blob = &other.keys[0].sealed.as_ref().unwrap().0;
        set_blob(&data, ring.name.as_str(), ring.keys[0].kid.as_str(), blob).await;
    }

    let keys = manager(&data, &kek).await;
    assert_eq!(keys.status().broken_keys, 2);
    for ring in [&a, &b] {
        let err = keys.sign(params(ring.name.as_str())).await.unwrap_err();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), Code::DataLoss);
        assert_eq!(
            status.message(),
            format!(
                "the sealed record of key {} in ring {} failed its integrity check",
                ring.keys[0].kid, ring.name
            )
        );
        let (set, _) = keys.jwks(ring.name.as_str(), "r").unwrap();
        assert!(set.keys.is_empty(), "a broken key is not published");
    }
    keys.sign(params("c")).await.unwrap();
}

#[tokio::test]
async fn a_flipped_byte_in_the_store_is_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir_all(&data).unwrap();
    let kek = kek_file(&dir.path().join("kek"));
    let keys = manager(&data, &kek).await;
    keys.create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    drop(keys);
    let store = SqliteStore::open(&db(&data)).await.unwrap();
    let ring = store.load().await.unwrap().remove(0);
    let len = ring.keys[0].sealed.as_ref().unwrap().0.len();
    store.close().await;
    // Every position, one bit each, in the rows (which still agree with the
    // manifest: it is the blob's own tag that catches this).
    for i in (0..len).step_by(7) {
        let mut blob = ring.keys[0].sealed.as_ref().unwrap().0.clone();
        blob[i] ^= 0x10;
        set_blob(&data, "r", ring.keys[0].kid.as_str(), &blob).await;
        let keys = manager(&data, &kek).await;
        let err = keys.sign(params("r")).await.unwrap_err();
        assert_eq!(tonic::Status::from(err).code(), Code::DataLoss, "byte {i}");
    }
}

#[tokio::test]
async fn seal_and_unseal_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = Proc::dev(&data, &[], &[]).unwrap();
    let ch = dev.channel().await;
    let mut signer = SignerClient::new(ch.clone());
    let mut op = OperatorClient::new(ch.clone());
    let req = || pb::SignRequest {
        key_ring: "default".into(),
        claims_json: b"{}".to_vec(),
        ttl: None,
        header_json: vec![],
    };
    let kid = signer.sign(req()).await.unwrap().into_inner().kid;
    let readyz = || common::http_get(dev.http_addr(), "/readyz");
    assert_eq!(readyz().await.2, "ready\n");
    let status = op.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert!(!status.sealed);
    assert_eq!(
        (
            status.store_kind.as_str(),
            status.kek_provider_kind.as_str()
        ),
        ("sqlite", "file")
    );

    let sealed = op
        .seal(pb::SealRequest {
            reason: "test".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert!(sealed.sealed);
    assert_eq!(sealed.loaded_keys, 0, "no private key left in memory");
    let err = signer.sign(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().starts_with("sealed"), "{}", err.message());
    let err = KeyAdminClient::new(ch.clone())
        .rotate(pb::RotateRequest {
            key_ring: "default".into(),
            immediate: true,
            reason: "test".into(),
            request_id: String::new(),
            fresh: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    // Verifiers keep their keys while sealed; the replica is not ready.
    assert!(dev.ok(&["jwks"]).contains(&kid));
    let (code, _, body) = readyz().await;
    assert_eq!(code, 503);
    assert!(body.contains("sealed: run `signet unseal`"), "{body}");

    let out = dev.ok(&["unseal"]);
    assert!(out.contains("sealed:  no"), "{out}");
    assert_eq!(
        signer.sign(req()).await.unwrap().into_inner().kid,
        kid,
        "same kid after unseal"
    );
    let out = dev.ok(&["status"]);
    assert!(out.contains("store:   sqlite"), "{out}");
    assert_eq!(readyz().await.2, "ready\n");
}

#[test]
fn server_config_check_and_start_sealed() {
    // The shipped example's checks (it names a KEK file that does not
    // exist) are in check_config.rs.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[seal]\nkek = \"file:/k\"\nkek_file = 1\n").unwrap();
    let out = std::process::Command::new(common::process::BIN)
        .args([
            "server",
            "--config",
            bad.to_str().unwrap(),
            "--check-config",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `kek_file`"));

    let kek = kek_file(&dir.path().join("kek"));
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &kek,
        &[("api", "ES256")],
    );
    let cfg = config.to_str().unwrap();
    let server = Proc::spawn(&["server", "--config", cfg, "--start-sealed"], &[]).unwrap();
    let out = server.ok(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["sealed"], true);
    let out = server.run(&["sign", "--ring", "api", "--claims", "{}"]);
    assert!(!out.status.success());
    server.ok(&["unseal"]);
    // Configured rings are created when the server unseals at start; a
    // --start-sealed server creates none until restarted unsealed.
    assert!(server.terminate().success());
    let server = Proc::spawn(&["server", "--config", cfg], &[]).unwrap();
    let token = server.ok(&["sign", "--ring", "api", "--claims", "{}"]);
    assert_eq!(common::part(token.trim(), 0)["alg"], "ES256");
}

#[test]
fn rekey_moves_the_store_to_a_new_kek() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kek = kek_file(&dir.path().join("kek-old"));
    let dev = Proc::dev(&data, &["--kek", &kek], &[]).unwrap();
    let token = dev.ok(&["sign", "--claims", "{}"]);
    dev.ok(&["rotate", "--now", "--reason", "test"]);
    let digest = dev.ok(&["audit", "hash", "--value", "alice"]);
    assert!(dev.terminate().success());

    let new = kek_file(&dir.path().join("kek-new"));
    let out = std::process::Command::new(common::process::BIN)
        .args([
            "operator",
            "rekey",
            "--data-dir",
            data.to_str().unwrap(),
            "--kek",
            &kek,
            "--new-kek",
            &new,
            // As the test servers do: a CI runner may lock no memory.
            "--allow-unlocked-memory",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("re-wrapped 2 key(s) and the audit key")
    );

    let err = Proc::dev(&data, &["--kek", &kek], &[]).err().unwrap();
    assert!(
        err.contains("is not the key-encryption key of this store"),
        "{err}"
    );
    let dev = Proc::dev(&data, &["--kek", &new], &[]).unwrap();
    common::verify(token.trim(), &dev.ok(&["jwks"]));
    dev.ok(&["sign", "--claims", "{}"]);
    assert_eq!(
        dev.ok(&["audit", "hash", "--value", "alice"]),
        digest,
        "the audit key went over to the new KEK"
    );
}

/// `operator rekey` handles every data key in the clear, so it hardens
/// itself like the server before it opens a KEK: its core-file limit is 0
/// (and it is not dumpable, which a root test cannot observe). The current
/// KEK is a FIFO, so the process waits on it, hardened or not, while the
/// test reads its limits; it was started with core files allowed.
#[test]
fn operator_rekey_hardens_the_process_before_opening_a_kek() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fifo = dir.path().join("kek-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let new = kek_file(&dir.path().join("kek-new"));
    let child = std::process::Command::new("sh")
        .args([
            "-c",
            "ulimit -c unlimited && exec \"$0\" \"$@\"",
            common::process::BIN,
            "operator",
            "rekey",
            "--data-dir",
            data.to_str().unwrap(),
            "--kek",
            &format!("file:{}", fifo.display()),
            "--new-kek",
            &new,
            "--allow-unlocked-memory",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let limits = format!("/proc/{}/limits", child.id());
    let core = || {
        std::fs::read_to_string(&limits)
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .map(|l| {
                l.split_whitespace()
                    .skip(4)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    // It holds the data directory's lock (taken after hardening, before
    // the KEK is read) and then blocks opening the FIFO until it is fed.
    let lock = data.join("signet.lock");
    common::eventually(
        Duration::from_secs(10),
        "rekey holds the data dir lock",
        || {
            std::fs::read_dir(format!("/proc/{}/fd", child.id()))
                .map(|fds| {
                    fds.filter_map(Result::ok)
                        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == lock))
                })
                .unwrap_or(false)
        },
    );
    assert_eq!(core(), "0 0", "no core files from a process holding keys");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(&[7u8; 32])
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The server process cannot dump core, and (as root, where mlockall is
/// permitted) its memory is locked against swapping.
#[test]
fn server_process_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_file(&dir.path().join("kek"));
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &kek,
        &[("h", "EdDSA")],
    );
    let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap();
    let pid = server.child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<_> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "RLIMIT_CORE is 0: {core}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let locked_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let euid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|u| u.split_whitespace().nth(1).unwrap().to_owned())
        })
        .unwrap();
    if euid == "0" {
        assert!(locked_kb > 0, "memory locked (VmLck {locked_kb} kB)");
    }
    let logs = server.stderr.lock().unwrap().clone();
    assert!(logs.contains("memory_locked="), "{logs}");
}

/// `signet server` serves /metrics on `listen.metrics` (a listener of its
/// own by default), never on the public JWKS listener.
#[tokio::test]
async fn metrics_on_their_own_listener() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_file(&dir.path().join("kek"));
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &kek,
        &[("m", "EdDSA")],
    );
    let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap();
    let metrics = server.metrics_addr();
    let http = server.http_addr();
    assert_ne!(metrics, http);
    let (status, _, _) = common::http_get(http, "/metrics").await;
    assert_eq!(status, 404, "not on the public listener");
    let (status, _, body) = common::http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("signet_sealed"));
    let (status, _, _) = common::http_get(http, "/.well-known/jwks.json").await;
    assert_eq!(
        status, 404,
        "no default ring here, but the JWKS route answers"
    );
}
