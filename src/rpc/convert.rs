//! Conversions between service types and their protobuf forms.

use std::time::Duration;

use tonic::Status;

use super::status::invalid;
use crate::{
    clock::UnixTime,
    keyring::{Issuer, KeyInfo, KeyState, MAX_DURATION, Policy, RingInfo},
    pb,
};

/// A time as a protobuf timestamp (whole seconds).
pub(crate) fn timestamp(t: UnixTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_secs(),
        nanos: 0,
    }
}

pub(crate) fn key_state(s: KeyState) -> pb::KeyState {
    match s {
        KeyState::Pending => pb::KeyState::Pending,
        KeyState::Published => pb::KeyState::Published,
        KeyState::Active => pb::KeyState::Active,
        KeyState::Retiring => pb::KeyState::Retiring,
        KeyState::Removed => pb::KeyState::Removed,
        KeyState::Revoked => pb::KeyState::Revoked,
    }
}

pub(crate) fn key_info(k: &KeyInfo) -> pb::KeyInfo {
    let t = &k.timeline;
    pb::KeyInfo {
        kid: k.kid.to_string(),
        alg: k.alg.name().to_owned(),
        state: key_state(k.state).into(),
        created_at: Some(timestamp(t.created_at)),
        publish_at: Some(timestamp(t.publish_at)),
        activate_at: Some(timestamp(t.activate_at)),
        retire_at: t.retire_at.map(timestamp),
        remove_at: t.remove_at.map(timestamp),
        revoked_at: t.revoked_at.map(timestamp),
        reason: k.reason.clone().unwrap_or_default(),
    }
}

pub(crate) fn policy(p: &Policy) -> pb::Policy {
    pb::Policy {
        rotation_period: Some(duration(p.rotation_period)),
        publish_lead: Some(duration(p.publish_lead)),
        grace: Some(duration(p.grace)),
        max_token_ttl: Some(duration(p.max_token_ttl)),
        default_token_ttl: Some(duration(p.default_token_ttl)),
        jwks_max_age: Some(duration(p.jwks_max_age)),
        clock_skew: Some(duration(p.clock_skew)),
    }
}

/// A complete policy from its protobuf form; every field is required and
/// is whole, non-negative seconds of at most [`MAX_DURATION`] (10 years).
/// The hard rules between fields are [`Policy::validate`]'s.
pub fn policy_from(p: &pb::Policy) -> Result<Policy, Status> {
    let field = |name: &str, d: &Option<prost_types::Duration>| -> Result<Duration, Status> {
        let field = format!("policy.{name}");
        let d = d.as_ref().ok_or_else(|| invalid(&field, "is required"))?;
        policy_duration(&field, d)
    };
    Ok(Policy {
        rotation_period: field("rotation_period", &p.rotation_period)?,
        publish_lead: field("publish_lead", &p.publish_lead)?,
        grace: field("grace", &p.grace)?,
        max_token_ttl: field("max_token_ttl", &p.max_token_ttl)?,
        default_token_ttl: field("default_token_ttl", &p.default_token_ttl)?,
        jwks_max_age: field("jwks_max_age", &p.jwks_max_age)?,
        clock_skew: field("clock_skew", &p.clock_skew)?,
        // Not part of the protobuf Policy: CreateKeyRing and UpdatePolicy
        // carry it in a field of their own.
        issuer: None,
    })
}

/// One policy duration: whole seconds (`nanos` 0), not negative, at most
/// [`MAX_DURATION`]. Any `seconds` and `nanos` a caller sends is answered
/// with INVALID_ARGUMENT naming `field`, never a panic or a wrapped value.
fn policy_duration(field: &str, d: &prost_types::Duration) -> Result<Duration, Status> {
    if d.nanos != 0 {
        return Err(invalid(
            field,
            "must be whole seconds (nanos must be 0; policy durations have no fractions)",
        ));
    }
    if d.seconds < 0 {
        return Err(invalid(field, "must not be negative"));
    }
    let max = MAX_DURATION.as_secs();
    match u64::try_from(d.seconds) {
        Ok(secs) if secs <= max => Ok(Duration::from_secs(secs)),
        _ => Err(invalid(
            field,
            &format!("must be at most 10 years ({max} s)"),
        )),
    }
}

/// A std Duration as a protobuf one (whole seconds).
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

pub(crate) fn ring_info(r: &RingInfo) -> pb::KeyRingInfo {
    pb::KeyRingInfo {
        name: r.name.to_string(),
        algorithm: r.spec.alg().name().to_owned(),
        rsa_bits: r.spec.rsa_bits(),
        max_token_ttl: Some(duration(r.policy.max_token_ttl)),
        default_token_ttl: Some(duration(r.policy.default_token_ttl)),
        grace: Some(duration(r.policy.grace)),
        keys: r.keys.iter().map(key_info).collect(),
        policy: Some(policy(&r.policy)),
        issuer: issuer(&r.policy),
    }
}

/// A ring's issuer as a protobuf string: empty for none.
pub(crate) fn issuer(p: &Policy) -> String {
    p.issuer
        .as_ref()
        .map(|i| i.as_str().to_owned())
        .unwrap_or_default()
}

/// An issuer from a request: empty for none, else [`Issuer::parse`]d.
pub(crate) fn issuer_from(text: &str) -> Result<Option<Issuer>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    Issuer::parse(text, "issuer")
        .map(Some)
        .map_err(|e| Status::from(crate::Error::from(e)))
}

/// A protobuf Duration as a std one: positive and whole seconds.
pub(crate) fn ttl(d: &prost_types::Duration) -> Result<Duration, Status> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid("ttl", "must be positive"));
    }
    if d.nanos != 0 {
        return Err(invalid(
            "ttl",
            "must be whole seconds (JWT times have no fractions)",
        ));
    }
    // Non-negative, checked above.
    Ok(Duration::from_secs(d.seconds.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use tonic::{Code, Request};

    use super::*;
    use crate::{
        clock::SystemClock,
        crypto::{Algorithm, KeySpec},
        keyring::{KeyManager, Timeline, project},
        pb::key_admin_server::KeyAdmin,
        rpc::KeyAdminService,
    };

    /// A policy duration a caller might send: unset, anything at all, in
    /// or just past the allowed range, or a boundary value.
    fn any_duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
        let max = i64::try_from(MAX_DURATION.as_secs()).unwrap();
        let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        prop_oneof![
            1 => Just(None),
            3 => (any::<i64>(), any::<i32>()).prop_map(move |(s, n)| d(s, n)),
            4 => (0..=2 * max).prop_map(move |s| d(s, 0)),
            4 => prop::sample::select(vec![
                0, 1, 60, 3_600, 7_200, 86_400, 6 * 86_400, 7 * 86_400, 90 * 86_400,
                max, max + 1, i64::MAX, i64::MIN, -1,
            ])
            .prop_map(move |s| d(s, 0)),
        ]
    }

    fn policy_of(f: &[Option<prost_types::Duration>; 7]) -> pb::Policy {
        pb::Policy {
            rotation_period: f[0],
            publish_lead: f[1],
            grace: f[2],
            max_token_ttl: f[3],
            default_token_ttl: f[4],
            jwks_max_age: f[5],
            clock_skew: f[6],
        }
    }

    fn default_fields() -> [Option<prost_types::Duration>; 7] {
        let p = policy(&Policy::default());
        [
            p.rotation_period,
            p.publish_lead,
            p.grace,
            p.max_token_ttl,
            p.default_token_ttl,
            p.jwks_max_age,
            p.clock_skew,
        ]
    }

    /// Seven durations: all random, or the defaults with one replaced (so
    /// accepted policies are common too).
    fn any_fields() -> impl Strategy<Value = [Option<prost_types::Duration>; 7]> {
        prop_oneof![
            prop::array::uniform7(any_duration()),
            (0..7usize, any_duration()).prop_map(|(i, d)| {
                let mut f = default_fields();
                f[i] = d;
                f
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// UpdatePolicy answers any durations with OK, INVALID_ARGUMENT or
        /// FAILED_PRECONDITION, never a panic; a refused policy changes
        /// nothing; an accepted one is bounded and drives rotations.
        #[test]
        fn update_policy_never_panics(fields in any_fields()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let keys = KeyManager::ephemeral(Arc::new(SystemClock)).await.unwrap();
                keys.create_ring("p", KeySpec::new(Algorithm::EdDsa, 0).unwrap()).await.unwrap();
                let before = keys.ring_info("p", "key_ring").unwrap().policy;
                let svc = KeyAdminService::new(keys.clone());
                let req = pb::UpdatePolicyRequest {
                    key_ring: "p".into(),
                    policy: Some(policy_of(&fields)),
                    issuer: None,
                };
                let after = keys.ring_info("p", "key_ring").unwrap().policy;
                match svc.update_policy(Request::new(req)).await {
                    Ok(resp) => {
                        let stored = keys.ring_info("p", "key_ring").unwrap().policy;
                        prop_assert_eq!(Some(policy(&stored)), resp.into_inner().policy);
                        for (_, d) in stored.fields() {
                            prop_assert!(d <= MAX_DURATION);
                        }
                        // The timeline arithmetic of a rotation and of a
                        // projection under the accepted policy.
                        keys.rotate("p", false, "prop", None).await.unwrap();
                        let first = Timeline::immediate(keys.now());
                        project(first, &stored, keys.now().saturating_add(MAX_DURATION));
                    }
                    Err(s) => {
                        prop_assert!(
                            matches!(s.code(), Code::InvalidArgument | Code::FailedPrecondition),
                            "{s:?}"
                        );
                        if s.code() == Code::InvalidArgument {
                            prop_assert!(s.message().starts_with("policy."), "{}", s.message());
                        }
                        prop_assert_eq!(keys.ring_info("p", "key_ring").unwrap().policy, after.clone());
                    }
                }
                prop_assert_eq!(before, after);
                Ok(())
            })?;
        }
    }

    #[test]
    fn each_bad_duration_names_its_field_and_rule() {
        let good = default_fields();
        let fields = [
            "rotation_period",
            "publish_lead",
            "grace",
            "max_token_ttl",
            "default_token_ttl",
            "jwks_max_age",
            "clock_skew",
        ];
        let cases = [
            (i64::MAX, 0, "must be at most 10 years (315360000 s)"),
            (315_360_001, 0, "must be at most 10 years (315360000 s)"),
            (-1, 0, "must not be negative"),
            (i64::MIN, 0, "must not be negative"),
            (60, i32::MAX, "must be whole seconds"),
            (60, -1, "must be whole seconds"),
        ];
        for (i, name) in fields.iter().enumerate() {
            for (seconds, nanos, rule) in cases {
                let mut f = good;
                f[i] = Some(prost_types::Duration { seconds, nanos });
                let s = policy_from(&policy_of(&f)).unwrap_err();
                assert_eq!(s.code(), Code::InvalidArgument);
                assert!(
                    s.message().starts_with(&format!("policy.{name}: {rule}")),
                    "{}",
                    s.message()
                );
            }
        }
        assert_eq!(policy_from(&policy_of(&good)).unwrap(), Policy::default());
    }
}
