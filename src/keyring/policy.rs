//! Per-ring policy: how long tokens live and how long retired keys stay
//! published.

use std::time::Duration;

use serde::{Deserialize, Serialize};

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// A ring's policy. Stored with the ring; every field has a safe default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Longest token lifetime Sign accepts. Default 1 h.
    #[serde(with = "secs")]
    pub max_token_ttl: Duration,
    /// Lifetime when a Sign request gives none. Default 15 min.
    #[serde(with = "secs")]
    pub default_token_ttl: Duration,
    /// How long a key stays in the JWKS after it stops signing, so every
    /// token it signed can still be verified. Default 7 days.
    #[serde(with = "secs")]
    pub grace: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_token_ttl: Duration::from_secs(HOUR),
            default_token_ttl: Duration::from_secs(15 * MINUTE),
            grace: Duration::from_secs(7 * DAY),
        }
    }
}

/// Durations stored as whole seconds.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}
