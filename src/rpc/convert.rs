//! Conversions between service types and their protobuf forms.

use std::time::Duration;

use tonic::Status;

use super::status::invalid;
use crate::{
    keyring::{KeyInfo, KeyState, RingInfo},
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
