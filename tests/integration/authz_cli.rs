//! `signet authz check` as a user runs it: the real binary against the
//! shipped example policy.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_signet");

fn check(identity: &str, action: &str, ring: &str) -> Output {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/signet.policy.example.toml");
    Command::new(BIN)
        .args(["authz", "check", "--policy", policy, "--identity", identity])
        .args(["--action", action, "--ring", ring])
        .output()
        .unwrap()
}

#[test]
fn allowed_check_exits_zero_and_names_the_rule() {
    let out = check(
        "spiffe://example.org/ns/payments/sa/checkout",
        "sign",
        "payments-eu",
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with("allowed by rule 0 (payments issuers)"),
        "{stdout}"
    );
}

#[test]
fn denied_check_exits_one_and_says_why() {
    let out = check(
        "spiffe://example.org/ns/payments/sa/checkout",
        "rotate",
        "payments-eu",
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim_end(),
        "denied: rule 0 matches identity \"spiffe://example.org/ns/payments/sa/checkout\" \
         but none grants 'rotate' on ring 'payments-eu'"
    );
    assert!(stderr.contains("may not rotate on payments-eu"), "{stderr}");
}

#[test]
fn service_wide_seal_and_bad_action() {
    let out = check("ops-oncall.example.org", "seal", "*");
    assert_eq!(out.status.code(), Some(0));
    let out = check("ops-oncall.example.org", "sael", "*");
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("unknown action")
    );
}
