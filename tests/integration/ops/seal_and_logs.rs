//! Seal needs a reason, and callers' text cannot forge log lines.

use std::{sync::Arc, time::Duration};

use signet::pb::{
    self, key_admin_client::KeyAdminClient, operator_client::OperatorClient,
    signer_client::SignerClient,
};
use tonic::Code;

use super::{audit_records, audited};
use crate::common::{eventually, process::Proc};

const LIMIT: Duration = Duration::from_secs(20);

/// Seal needs a reason, like RevokeKey: a blank one is INVALID_ARGUMENT
/// and nothing is sealed; the CLI insists on `--reason` too.
#[tokio::test]
async fn seal_requires_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (channel, keys) = audited(dir.path(), Arc::new(signet::rpc::guard::AllowAll)).await;
    let mut op = OperatorClient::new(channel);
    for blank in ["", "  \t\n"] {
        let s = op
            .seal(pb::SealRequest {
                reason: blank.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().starts_with("reason: is required"),
            "{}",
            s.message()
        );
        assert!(!keys.is_sealed(), "nothing sealed");
    }
    let sealed = op
        .seal(pb::SealRequest {
            reason: "incident 42".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(sealed.status.unwrap().sealed);
    let records = audit_records(dir.path());
    let seals: Vec<_> = records
        .iter()
        .filter(|r| r["rpc"] == "signet.v1.Operator/Seal" && r["outcome"] != "intent")
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(seals, ["INVALID_ARGUMENT", "INVALID_ARGUMENT", "OK"]);

    let bin = crate::common::process::BIN;
    let no_reason = std::process::Command::new(bin)
        .args(["seal", "--addr", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(no_reason.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&no_reason.stderr).contains("--reason <REASON>"));
    let blank = std::process::Command::new(bin)
        .args(["seal", "--reason", " ", "--addr", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(blank.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&blank.stderr).contains("must say why the service is sealed"));
}

/// Reasons and verifier names are the caller's text: a newline in them
/// must not start a log line of its own.
#[tokio::test]
async fn caller_text_cannot_forge_log_lines() {
    const FORGED: &str = "FAKE signet server listening";
    let evil = format!("x\n{FORGED}");
    let dir = tempfile::tempdir().unwrap();
    let dev = Proc::dev(&dir.path().join("data"), &[], &[]).unwrap();
    let channel = dev.channel().await;
    let mut admin = KeyAdminClient::new(channel.clone());
    let rotated = admin
        .rotate(pb::RotateRequest {
            key_ring: "default".into(),
            reason: evil.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    admin
        .revoke_key(pb::RevokeKeyRequest {
            key_ring: "default".into(),
            kid: rotated.new_key.unwrap().kid,
            reason: evil.clone(),
        })
        .await
        .unwrap();
    SignerClient::new(channel.clone())
        .report_verification_failures(pb::ReportVerificationFailuresRequest {
            key_ring: "default".into(),
            counts: vec![pb::FailureCount {
                reason: pb::VerifyFailure::BadSignature.into(),
                count: 1,
            }],
            verifier: evil.clone(),
        })
        .await
        .unwrap();
    OperatorClient::new(channel)
        .seal(pb::SealRequest {
            reason: evil.clone(),
        })
        .await
        .unwrap();
    let stderr = dev.stderr.clone();
    let logged = |what: &str| {
        let what = what.to_owned();
        let stderr = stderr.clone();
        move || {
            stderr
                .lock()
                .unwrap()
                .lines()
                .any(|l| l.contains(&what) && l.contains("x\\nFAKE signet server listening"))
        }
    };
    // Each value was logged, escaped, on the line of its event.
    eventually(LIMIT, "rotation logged", logged("key ring rotated"));
    eventually(LIMIT, "revocation logged", logged("key revoked"));
    eventually(LIMIT, "report logged", logged("verifier reported failures"));
    eventually(LIMIT, "seal logged", logged("seal requested"));
    let stderr = dev.stderr.lock().unwrap().clone();
    assert!(
        !stderr.lines().any(|l| l.trim_start().starts_with("FAKE")),
        "a forged line:\n{stderr}"
    );
}
