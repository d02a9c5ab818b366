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
        "uri:spiffe://example.org/ns/payments/sa/checkout",
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
        "uri:spiffe://example.org/ns/payments/sa/checkout",
        "rotate",
        "payments-eu",
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim_end(),
        "denied: no rule grants 'rotate' on ring 'payments-eu' to identity \
         \"uri:spiffe://example.org/ns/payments/sa/checkout\": rule 0 lacks the action 'rotate'"
    );
    assert!(stderr.contains("may not rotate on payments-eu"), "{stderr}");
}

#[test]
fn service_wide_seal_and_bad_action() {
    let out = check("dns:ops-oncall.example.org", "seal", "*");
    assert_eq!(out.status.code(), Some(0));
    let out = check("dns:ops-oncall.example.org", "sael", "*");
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("unknown action")
    );
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/signet.policy.example.toml");
    let out = Command::new(BIN)
        .args(["authz", "check", "--policy", policy])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `--cert` shows the typed identities Signet derives from a certificate; a
/// CN that looks like a SPIFFE ID is no URI identity.
#[test]
fn check_by_certificate_shows_the_typed_identities() {
    use crate::common::certs::{ca, leaf};
    use rcgen::SanType;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("cli CA");
    let (pem, _) = leaf(
        &ca,
        "x",
        vec![
            SanType::URI(
                "spiffe://example.org/ns/security/sa/bob"
                    .try_into()
                    .unwrap(),
            ),
            SanType::DnsName("bob.example.org".try_into().unwrap()),
        ],
    );
    let good = dir.path().join("good.pem");
    std::fs::write(&good, pem).unwrap();
    let (code, stdout, _) = run(&[
        "--cert",
        good.to_str().unwrap(),
        "--action",
        "rotate",
        "--ring",
        "x",
    ]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.starts_with(
            "identities: uri:spiffe://example.org/ns/security/sa/bob, dns:bob.example.org\nallowed by rule"
        ),
        "{stdout}"
    );

    let (pem, _) = leaf(&ca, "spiffe://example.org/ns/security/sa/mallory", vec![]);
    let cn_only = dir.path().join("cn.pem");
    std::fs::write(&cn_only, pem).unwrap();
    let (code, _, stderr) = run(&[
        "--cert",
        cn_only.to_str().unwrap(),
        "--action",
        "read",
        "--ring",
        "x",
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("names no identity"), "{stderr}");
    let (code, stdout, _) = run(&[
        "--cert",
        cn_only.to_str().unwrap(),
        "--allow-cn",
        "--action",
        "read",
        "--ring",
        "x",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stdout.starts_with(
            "identities: cn:spiffe://example.org/ns/security/sa/mallory\ndenied: no rule matches identity"
        ),
        "{stdout}"
    );

    let (pem, _) = leaf(
        &ca,
        "two",
        vec![
            SanType::URI("spiffe://example.org/a".try_into().unwrap()),
            SanType::URI("spiffe://example.org/b".try_into().unwrap()),
        ],
    );
    let two = dir.path().join("two.pem");
    std::fs::write(&two, pem).unwrap();
    let (code, _, stderr) = run(&[
        "--cert",
        two.to_str().unwrap(),
        "--action",
        "read",
        "--ring",
        "x",
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("has 2 URI SANs"), "{stderr}");
}

/// `--claims` explains a claim-rule decision, with the exact refusal.
#[test]
fn check_claims_against_the_claim_rules() {
    let dir = tempfile::tempdir().unwrap();
    let claims = dir.path().join("claims.json");
    std::fs::write(
        &claims,
        r#"{"aud":"orders-api","sub":"customer-7","scope":"read"}"#,
    )
    .unwrap();
    let orders = "uri:spiffe://example.org/ns/orders/sa/api";
    let at = format!("@{}", claims.display());
    let base = [
        "--identity",
        orders,
        "--action",
        "sign",
        "--ring",
        "shared",
        "--claims",
    ];
    let (code, stdout, _) = run(&[&base[..], &[at.as_str(), "--ttl", "10m"]].concat());
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("claims: allowed by the claim rules of rule 2\n  Signet sets iss = \"https://orders.example.org\""),
        "{stdout}"
    );
    let (code, stdout, _) = run(&[&base[..], &[at.as_str(), "--ttl", "1h"]].concat());
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains(
            "claims: refused: ttl: 1h (longer than 10m) is not allowed for uri:spiffe://example.org/ns/orders/sa/api (rule 2)"
        ),
        "{stdout}"
    );
    let (code, stdout, _) = run(&[
        &base[..],
        &[r#"{"aud":"payments-admin","sub":"customer-7"}"#],
    ]
    .concat());
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains(
            "claims: refused: claims_json.aud: \"payments-admin\" is not allowed for uri:spiffe://example.org/ns/orders/sa/api (rule 2)"
        ),
        "{stdout}"
    );
    // The billing issuer shares the ring but not the audiences.
    let (code, stdout, _) = run(&[
        "--identity",
        "uri:spiffe://example.org/ns/billing/sa/api",
        "--action",
        "sign",
        "--ring",
        "shared",
        "--claims",
        r#"{"aud":"orders-api"}"#,
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("(rule 3)"), "{stdout}");
}
