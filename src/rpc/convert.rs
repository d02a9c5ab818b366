//! Conversions between service types and their protobuf forms.

use std::time::Duration;

use tonic::Status;

use super::status::invalid;
use crate::{
    keyring::{KeyInfo, KeyState, Policy, RingInfo},
    pb,
};

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
        created_at: Some(t.created_at.to_proto()),
        publish_at: Some(t.publish_at.to_proto()),
        activate_at: Some(t.activate_at.to_proto()),
        retire_at: t.retire_at.map(|t| t.to_proto()),
        remove_at: t.remove_at.map(|t| t.to_proto()),
        revoked_at: t.revoked_at.map(|t| t.to_proto()),
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

/// A complete policy from its protobuf form; every field is required.
pub fn policy_from(p: &pb::Policy) -> Result<Policy, Status> {
    let field = |name: &str, d: &Option<prost_types::Duration>| -> Result<Duration, Status> {
        let d = d
            .as_ref()
            .ok_or_else(|| invalid(&format!("policy.{name}"), "is required"))?;
        if d.seconds < 0 || d.nanos != 0 {
            return Err(invalid(
                &format!("policy.{name}"),
                "must be a non-negative whole number of seconds",
            ));
        }
        Ok(Duration::from_secs(d.seconds.unsigned_abs()))
    };
    Ok(Policy {
        rotation_period: field("rotation_period", &p.rotation_period)?,
        publish_lead: field("publish_lead", &p.publish_lead)?,
        grace: field("grace", &p.grace)?,
        max_token_ttl: field("max_token_ttl", &p.max_token_ttl)?,
        default_token_ttl: field("default_token_ttl", &p.default_token_ttl)?,
        jwks_max_age: field("jwks_max_age", &p.jwks_max_age)?,
        clock_skew: field("clock_skew", &p.clock_skew)?,
    })
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
    }
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

impl From<crate::crypto::verify::Failure> for pb::VerifyFailure {
    fn from(f: crate::crypto::verify::Failure) -> Self {
        use crate::crypto::verify::Failure;
        match f {
            Failure::Malformed => pb::VerifyFailure::Malformed,
            Failure::MissingKid => pb::VerifyFailure::MissingKid,
            Failure::UnknownKid => pb::VerifyFailure::UnknownKid,
            Failure::AlgMismatch => pb::VerifyFailure::AlgMismatch,
            Failure::BadSignature => pb::VerifyFailure::BadSignature,
            Failure::Expired => pb::VerifyFailure::Expired,
            Failure::NotYetValid => pb::VerifyFailure::NotYetValid,
            Failure::RevokedKey => pb::VerifyFailure::RevokedKey,
        }
    }
}
