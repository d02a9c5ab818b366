//! What callers and operators read when something fails: Status messages
//! without paths or KEK specs, and error chains that say each thing once.

use std::time::Duration;

use crate::common::{
    eventually,
    process::{Proc, kek_file},
};

const LIMIT: Duration = Duration::from_secs(20);

/// A KEK failure reaches the caller as a sentence without a path or a KEK
/// spec; the server log keeps the detail.
#[test]
fn kek_failures_reach_callers_without_paths_or_specs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = Proc::dev(&data, &[], &[]).unwrap();
    let kek = data.join("kek");
    let kek_shown = kek.display().to_string();
    dev.ok(&["seal", "--reason", "KEK test"]);

    // The KEK file is gone.
    std::fs::remove_file(&kek).unwrap();
    let out = dev.run(&["unseal"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err,
        "signet: Unavailable: KEK unavailable: the key-encryption key could not be opened or \
         used; fix the KEK provider in the server's configuration, then retry (the server log \
         says why)\n"
    );
    assert!(!err.contains('/') && !err.contains("file:"), "{err}");
    eventually(LIMIT, "the log names the file and the cause", || {
        dev.stderr.lock().unwrap().lines().any(|l| {
            l.contains("KEK unavailable")
                && l.contains(&kek_shown)
                && l.contains("No such file or directory")
        })
    });

    // Another KEK in its place.
    kek_file(&kek);
    let out = dev.run(&["unseal"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(
            "signet: Unavailable: the configured KEK is not the key-encryption key of this store"
        ),
        "{err}"
    );
    assert!(!err.contains('/') && !err.contains("file:"), "{err}");
    eventually(LIMIT, "the log names the KEK tried", || {
        dev.stderr.lock().unwrap().lines().any(|l| {
            l.contains("the configured KEK is not this store's KEK")
                && l.contains(&format!("file:{kek_shown}"))
        })
    });
    let status = dev.ok(&["status"]);
    assert!(status.starts_with("sealed:  yes"), "{status}");
}

/// The error line `signet` printed last, from a failed start's stderr.
fn last_error(stderr: &str) -> &str {
    let at = stderr
        .rfind("signet: ")
        .unwrap_or_else(|| panic!("{stderr}"));
    stderr[at..].lines().next().unwrap()
}

/// Error chains say each thing once: a KEK failure at start, a wrong KEK,
/// and a broken audit chain.
#[test]
fn error_chains_do_not_repeat_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = dir.path().join("no-such-kek");
    let err = Proc::dev(
        &data,
        &["--kek", &format!("file:{}", missing.display())],
        &[],
    )
    .err()
    .unwrap();
    let last = last_error(&err);
    assert_eq!(
        last,
        format!(
            "signet: cannot unseal; Signet stays sealed and nothing on disk was changed: KEK \
             unavailable: file KEK {}: cannot read it: No such file or directory (os error 2)",
            missing.display()
        )
    );

    let dev = Proc::dev(&data, &[], &[]).unwrap();
    for _ in 0..4 {
        dev.ok(&["sign", "--claims", "{}"]);
    }
    assert!(dev.terminate().success());
    let other = kek_file(&dir.path().join("other-kek"));
    let err = Proc::dev(&data, &["--kek", &other], &[]).err().unwrap();
    let last = last_error(&err);
    assert_eq!(
        last,
        format!(
            "signet: cannot unseal; Signet stays sealed and nothing on disk was changed: KEK \
             {other} is not the key-encryption key of this store (its check value does not open)"
        )
    );

    // A broken chain: line 3 edited, so line 4's prev does not match.
    let log = data.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(lines.len() >= 4, "{text}");
    lines[2] = lines[2].replacen("\"peer\":\"", "\"peer\":\"x", 1);
    let tampered = dir.path().join("tampered.log");
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let out = std::process::Command::new(crate::common::process::BIN)
        .args(["audit", "verify"])
        .arg(&tampered)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "signet: line 4: its prev is not the hash of line 3 (line 3 was edited, or lines were \
         removed, inserted or moved here)\n"
    );
}
