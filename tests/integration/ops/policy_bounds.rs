//! Policy durations are bounded at 10 years, over gRPC and the CLI.

use std::sync::Arc;

use tonic::Code;

use super::{audit_records, audited};
use crate::common::process::Proc;
use signet::pb::{self, key_admin_client::KeyAdminClient};

fn policy_with(field: usize, d: prost_types::Duration) -> pb::Policy {
    let p = |s| {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    let mut fields = [
        p(90 * 86_400),
        p(6 * 86_400),
        p(7 * 86_400),
        p(3_600),
        p(900),
        p(3_600),
        p(60),
    ];
    fields[field] = Some(d);
    let [
        rotation_period,
        publish_lead,
        grace,
        max_token_ttl,
        default_token_ttl,
        jwks_max_age,
        clock_skew,
    ] = fields;
    pb::Policy {
        rotation_period,
        publish_lead,
        grace,
        max_token_ttl,
        default_token_ttl,
        jwks_max_age,
        clock_skew,
    }
}

/// UpdatePolicy with i64::MAX, negative or fractional durations in any
/// field: INVALID_ARGUMENT naming the field and the rule, the old policy
/// kept, and every refusal in the audit log.
#[tokio::test]
async fn out_of_range_policy_durations_are_refused_unchanged_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (channel, _keys) = audited(dir.path(), Arc::new(signet::rpc::guard::AllowAll)).await;
    let mut admin = KeyAdminClient::new(channel);
    let reader = admin.clone();
    let get = || {
        let mut admin = reader.clone();
        async move {
            admin
                .get_key_ring(pb::GetKeyRingRequest {
                    key_ring: "ops".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .ring
                .unwrap()
                .policy
                .unwrap()
        }
    };
    let before = get().await;
    let names = [
        "rotation_period",
        "publish_lead",
        "grace",
        "max_token_ttl",
        "default_token_ttl",
        "jwks_max_age",
        "clock_skew",
    ];
    let bad = [
        (i64::MAX, 0, "must be at most 10 years (315360000 s)"),
        (315_360_001, 0, "must be at most 10 years (315360000 s)"),
        (-1, 0, "must not be negative"),
        (60, 999_999_999, "must be whole seconds"),
        (60, i32::MAX, "must be whole seconds"),
        (i64::MIN, i32::MIN, "must be whole seconds"),
    ];
    let mut sent = 0;
    for (i, name) in names.iter().enumerate() {
        for (seconds, nanos, rule) in bad {
            let s = admin
                .update_policy(pb::UpdatePolicyRequest {
                    issuer: Default::default(),
                    key_ring: "ops".into(),
                    policy: Some(policy_with(i, prost_types::Duration { seconds, nanos })),
                })
                .await
                .unwrap_err();
            sent += 1;
            assert_eq!(
                s.code(),
                Code::InvalidArgument,
                "{name} {seconds}s {nanos}ns"
            );
            let want = format!("policy.{name}: {rule}");
            assert!(
                s.message().starts_with(&want),
                "{}\nwanted {want}",
                s.message()
            );
        }
    }
    let s = admin
        .update_policy(pb::UpdatePolicyRequest {
            issuer: Default::default(),
            key_ring: "ops".into(),
            policy: Some(policy_with(
                2,
                prost_types::Duration {
                    seconds: i64::MAX,
                    nanos: 0,
                },
            )),
        })
        .await
        .unwrap_err();
    sent += 1;
    assert_eq!(
        s.message(),
        "policy.grace: must be at most 10 years (315360000 s)"
    );
    assert_eq!(get().await, before, "nothing changed");

    let refused = audit_records(dir.path())
        .into_iter()
        .filter(|r| {
            r["rpc"] == "signet.v1.KeyAdmin/UpdatePolicy"
                && r["code"] == "INVALID_ARGUMENT"
                && r["ring"] == "ops"
        })
        .count();
    assert_eq!(refused, sent, "every refusal is audited");
}

/// `signet policy set` and `policy check` with absurd durations: the field
/// and the 10-year rule, exit status 1 (not a panic), nothing stored.
#[test]
fn policy_commands_refuse_huge_durations() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Proc::dev(&dir.path().join("data"), &[], &[]).unwrap();
    let huge = u64::MAX.to_string();
    for (flag, value, field) in [
        ("--grace", "3651d", "grace"),
        ("--jwks-max-age", huge.as_str(), "jwks_max_age"),
        ("--rotation-period", huge.as_str(), "rotation_period"),
    ] {
        let out = dev.run(&["policy", "set", flag, value]);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            err,
            format!(
                "signet: InvalidArgument: policy.{field}: must be at most 10 years (315360000 s)\n"
            )
        );
    }
    // Two huge fields whose sum overflows u64: refused by the local check.
    let out = dev.run(&[
        "policy",
        "check",
        "--jwks-max-age",
        &huge,
        "--clock-skew",
        &huge,
        "--max-token-ttl",
        &huge,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("signet: policy: max_token_ttl (")
            && err.ends_with(") must be at most 10 years (315360000 s)\n"),
        "{err}"
    );
    let shown = dev.ok(&["policy", "show"]);
    assert!(shown.contains("grace              7d"), "{shown}");
    assert!(shown.contains("jwks_max_age       1h"), "{shown}");
    assert!(shown.contains("rotation_period    90d"), "{shown}");
}
