//! `signet status` shows the audit head, `signet sign --help` tells the
//! truth about `jti`, and an `env:` KEK may be URL-safe base64.

use signet::audit::line_hash;

use crate::common::process::Proc;

/// `signet status` shows the audit chain head, in text and JSON, and it is
/// the hash of the log line with that sequence number.
#[test]
fn status_shows_the_audit_chain_head() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = Proc::dev(&data, &[], &[]).unwrap();
    dev.ok(&["sign", "--claims", "{}"]);
    let log_lines = || {
        std::fs::read(data.join("audit.log"))
            .unwrap()
            .split_inclusive(|b| *b == b'\n')
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>()
    };

    let json: serde_json::Value = serde_json::from_str(&dev.ok(&["status", "--json"])).unwrap();
    let seq = json["audit_head_seq"].as_u64().unwrap();
    let hash = json["audit_head_hash"].as_str().unwrap().to_owned();
    assert!(seq >= 1, "{json}");
    let lines = log_lines();
    let at = |seq: u64| {
        lines
            .iter()
            .find(|l| serde_json::from_slice::<serde_json::Value>(l).unwrap()["seq"] == seq)
            .map(|l| line_hash(l))
            .unwrap()
    };
    assert_eq!(hash, at(seq), "the head is the hash of line seq {seq}");

    let text = dev.ok(&["status"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("audit:"))
        .unwrap_or_else(|| panic!("no audit line in:\n{text}"));
    let rest = line.strip_prefix("audit:   head seq ").unwrap();
    let (seq2, hash2) = rest.split_once(" hash ").unwrap();
    let seq2: u64 = seq2.parse().unwrap();
    assert!(
        seq2 > seq,
        "the JSON Status call was recorded since: {line}"
    );
    let lines = log_lines();
    let at = |seq: u64| {
        lines
            .iter()
            .find(|l| serde_json::from_slice::<serde_json::Value>(l).unwrap()["seq"] == seq)
            .map(|l| line_hash(l))
            .unwrap()
    };
    assert_eq!(hash2, at(seq2), "{line}");
}

/// `signet sign --help` says what the server does with `jti`, and it does
/// exactly that: a caller's jti is kept, a missing one is generated.
#[test]
fn sign_help_matches_jti_handling() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Proc::dev(&dir.path().join("data"), &[], &[]).unwrap();
    let help = dev.ok(&["sign", "--help"]);
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("sets a random `jti` only when the claims give none"),
        "{help}"
    );
    let mine = dev.ok(&["sign", "--claims", r#"{"jti":"mine-1"}"#]);
    assert_eq!(crate::common::part(mine.trim(), 1)["jti"], "mine-1");
    let theirs = dev.ok(&["sign", "--claims", "{}"]);
    assert!(crate::common::part(theirs.trim(), 1)["jti"].is_string());
}

/// An `env:` KEK in URL-safe base64 without padding opens the store a
/// standard-base64 copy of the same key sealed.
#[test]
fn env_kek_accepts_url_safe_base64() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key: [u8; 32] = std::array::from_fn(|i| 0xf8 | (i as u8 & 7));
    let standard = base64::engine::general_purpose::STANDARD.encode(key);
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    assert_ne!(standard.trim_end_matches('='), url_safe);
    let var = "SIGNET_OPS_TEST_KEK";
    let spec = format!("env:{var}");
    let dev = Proc::dev(&data, &["--kek", &spec], &[(var, &standard)]).unwrap();
    let token = dev.ok(&["sign", "--claims", "{}"]);
    assert!(dev.terminate().success());
    let dev = Proc::dev(&data, &["--kek", &spec], &[(var, &url_safe)]).unwrap();
    crate::common::verify(token.trim(), &dev.ok(&["jwks"]));
    dev.ok(&["sign", "--claims", "{}"]);
}
