//! Per-ring policy: how often keys rotate, how long before signing a key is
//! published, how long after it stops signing it stays published, and how
//! long tokens live. The rules that keep every valid token verifiable are
//! enforced here (DESIGN.md section 1).

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// A ring's policy. Stored with the ring; every field has a safe default.
/// Changing it never rewrites existing timelines: the next successor uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// How long a key signs before its successor takes over. Default 90 d.
    #[serde(with = "secs")]
    pub rotation_period: Duration,
    /// How long a new key is in the JWKS before it signs. Default 6 d.
    #[serde(with = "secs")]
    pub publish_lead: Duration,
    /// How long a key stays in the JWKS after it stops signing, so every
    /// token it signed can still be verified. Default 7 d.
    #[serde(with = "secs")]
    pub grace: Duration,
    /// Longest token lifetime Sign accepts. Default 1 h.
    #[serde(with = "secs")]
    pub max_token_ttl: Duration,
    /// Lifetime when a Sign request gives none. Default 15 min.
    #[serde(with = "secs")]
    pub default_token_ttl: Duration,
    /// Longest time verifiers may cache the JWKS (`Cache-Control: max-age`).
    /// Default 1 h.
    #[serde(with = "secs")]
    pub jwks_max_age: Duration,
    /// Clock difference tolerated between Signet and verifiers. Default 60 s.
    #[serde(with = "secs")]
    pub clock_skew: Duration,
    /// The `iss` of every token the ring signs, and the issuer its OIDC
    /// discovery document names. Default none: no `iss` is set, no
    /// discovery document is served. Left out of the stored form when
    /// unset, so policies stored before it existed read (and seal) alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<super::Issuer>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            rotation_period: Duration::from_secs(90 * DAY),
            publish_lead: Duration::from_secs(6 * DAY),
            grace: Duration::from_secs(7 * DAY),
            max_token_ttl: Duration::from_secs(HOUR),
            default_token_ttl: Duration::from_secs(15 * MINUTE),
            jwks_max_age: Duration::from_secs(HOUR),
            clock_skew: Duration::from_secs(60),
            issuer: None,
        }
    }
}

/// A duration as `90d`, `6d 12h`, `1h 1m`, `45s`.
pub struct Short(pub Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.0.as_secs();
        if s == 0 {
            return f.write_str("0s");
        }
        let mut first = true;
        for (unit, name) in [(DAY, "d"), (HOUR, "h"), (MINUTE, "m"), (1, "s")] {
            if s >= unit {
                if !first {
                    f.write_str(" ")?;
                }
                write!(f, "{}{name}", s / unit)?;
                s %= unit;
                first = false;
            }
        }
        Ok(())
    }
}

/// A hard rule a policy broke. The message names the rule and the numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy: {0}")]
pub struct PolicyError(pub String);

/// Advice about an accepted policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shortest and longest rotation period accepted.
pub const ROTATION_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(HOUR), Duration::from_secs(365 * DAY));

/// The longest any policy duration may be: 10 years (of 365 days). Far above
/// every sensible value, and low enough that sums of durations and instants
/// plus a duration stay far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * DAY);

impl Policy {
    /// Every duration field with its name, in declaration order.
    pub fn fields(&self) -> [(&'static str, Duration); 7] {
        [
            ("rotation_period", self.rotation_period),
            ("publish_lead", self.publish_lead),
            ("grace", self.grace),
            ("max_token_ttl", self.max_token_ttl),
            ("default_token_ttl", self.default_token_ttl),
            ("jwks_max_age", self.jwks_max_age),
            ("clock_skew", self.clock_skew),
        ]
    }

    /// Checks the hard rules; returns the advice for a valid policy.
    pub fn validate(&self) -> Result<Vec<Warning>, PolicyError> {
        let p = self;
        let fail = |s: String| Err(PolicyError(s));
        for (name, d) in p.fields() {
            if d > MAX_DURATION {
                return fail(format!(
                    "{name} ({}) must be at most 10 years ({} s)",
                    Short(d),
                    MAX_DURATION.as_secs()
                ));
            }
        }
        // Every field is at most MAX_DURATION from here on, so no sum below
        // comes near saturating.
        let (lo, hi) = ROTATION_BOUNDS;
        if p.rotation_period < lo || p.rotation_period > hi {
            return fail(format!(
                "rotation_period ({}) must be between {} and {}",
                Short(p.rotation_period),
                Short(lo),
                Short(hi)
            ));
        }
        if p.max_token_ttl < Duration::from_secs(1) || p.default_token_ttl < Duration::from_secs(1)
        {
            return fail("max_token_ttl and default_token_ttl must be at least 1s".into());
        }
        if p.default_token_ttl > p.max_token_ttl {
            return fail(format!(
                "default_token_ttl ({}) must be <= max_token_ttl ({})",
                Short(p.default_token_ttl),
                Short(p.max_token_ttl)
            ));
        }
        let min_grace = p
            .max_token_ttl
            .saturating_add(p.jwks_max_age)
            .saturating_add(p.clock_skew);
        if p.grace < min_grace {
            return fail(format!(
                "grace ({}) must be >= max_token_ttl + jwks_max_age + clock_skew ({} + {} + {} = {}), \
                 or tokens signed just before rotation stop verifying before they expire",
                Short(p.grace),
                Short(p.max_token_ttl),
                Short(p.jwks_max_age),
                Short(p.clock_skew),
                Short(min_grace)
            ));
        }
        let min_lead = p.jwks_max_age.saturating_add(p.clock_skew);
        if p.publish_lead < min_lead {
            return fail(format!(
                "publish_lead ({}) must be >= jwks_max_age + clock_skew ({} + {} = {}), \
                 or a verifier's cached JWKS can lack the key that signs",
                Short(p.publish_lead),
                Short(p.jwks_max_age),
                Short(p.clock_skew),
                Short(min_lead)
            ));
        }
        if p.rotation_period <= p.publish_lead {
            return fail(format!(
                "rotation_period ({}) must be > publish_lead ({})",
                Short(p.rotation_period),
                Short(p.publish_lead)
            ));
        }
        let mut warnings = Vec::new();
        if p.rotation_period < Duration::from_secs(90 * DAY)
            || p.rotation_period > Duration::from_secs(180 * DAY)
        {
            warnings.push(Warning(format!(
                "rotation_period {} is outside the usual 90d-180d",
                Short(p.rotation_period)
            )));
        }
        if p.publish_lead < Duration::from_secs(DAY) {
            warnings.push(Warning(format!(
                "publish_lead {} is under 24h; some verifiers (e.g. Microsoft's) cache a JWKS \
                 for a day and would not know the new key when it starts signing",
                Short(p.publish_lead)
            )));
        }
        let thumb = ttl_rule_of_thumb(p.rotation_period);
        if p.max_token_ttl > thumb {
            warnings.push(Warning(format!(
                "max_token_ttl {} is above the rule of thumb for a {} rotation ({}; 90d -> 1h, \
                 30d -> 15m)",
                Short(p.max_token_ttl),
                Short(p.rotation_period),
                Short(thumb)
            )));
        }
        Ok(warnings)
    }
}

/// The longest token lifetime that suits a rotation period: 1 h at 90 d and
/// beyond, 15 min at 30 d, linear in between, proportionally shorter below.
pub fn ttl_rule_of_thumb(rotation: Duration) -> Duration {
    let r = rotation.as_secs();
    let secs = if r >= 90 * DAY {
        HOUR
    } else if r >= 30 * DAY {
        15 * MINUTE + (r - 30 * DAY) * (45 * MINUTE) / (60 * DAY)
    } else {
        (15 * MINUTE * r / (30 * DAY)).max(1)
    };
    Duration::from_secs(secs)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn d(days: u64) -> Duration {
        Duration::from_secs(days * DAY)
    }

    #[test]
    fn defaults_are_valid_and_quiet() {
        assert_eq!(Policy::default().validate(), Ok(vec![]));
    }

    #[test]
    fn each_hard_rule_is_refused_with_its_numbers() {
        let base = Policy::default();
        let cases = [
            (
                Policy {
                    grace: Duration::from_secs(HOUR),
                    ..base.clone()
                },
                "policy: grace (1h) must be >= max_token_ttl + jwks_max_age + clock_skew (1h + 1h + 1m = 2h 1m)",
            ),
            (
                Policy {
                    publish_lead: Duration::from_secs(HOUR),
                    ..base.clone()
                },
                "policy: publish_lead (1h) must be >= jwks_max_age + clock_skew (1h + 1m = 1h 1m)",
            ),
            (
                Policy {
                    rotation_period: d(6),
                    ..base.clone()
                },
                "policy: rotation_period (6d) must be > publish_lead (6d)",
            ),
            (
                Policy {
                    default_token_ttl: Duration::from_secs(2 * HOUR),
                    ..base.clone()
                },
                "policy: default_token_ttl (2h) must be <= max_token_ttl (1h)",
            ),
            (
                Policy {
                    rotation_period: d(400),
                    ..base.clone()
                },
                "policy: rotation_period (400d) must be between 1h and 365d",
            ),
        ];
        for (p, want) in cases {
            let got = p
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(got.starts_with(want), "{got}\nwanted {want}");
        }
    }

    #[test]
    fn every_duration_is_bounded_at_ten_years_without_overflow() {
        assert_eq!(MAX_DURATION, Duration::from_secs(315_360_000));
        let base = Policy::default();
        let names = base.fields().map(|(name, _)| name);
        for huge in [
            MAX_DURATION + Duration::from_secs(1),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ] {
            for (i, name) in names.iter().enumerate() {
                let mut p = base.clone();
                let field = [
                    &mut p.rotation_period,
                    &mut p.publish_lead,
                    &mut p.grace,
                    &mut p.max_token_ttl,
                    &mut p.default_token_ttl,
                    &mut p.jwks_max_age,
                    &mut p.clock_skew,
                ];
                *field.into_iter().nth(i).unwrap() = huge;
                let e = p.validate().unwrap_err().to_string();
                assert!(
                    e.starts_with(&format!("policy: {name} ("))
                        && e.ends_with(") must be at most 10 years (315360000 s)"),
                    "{e}"
                );
            }
            // Every field huge at once: refused, never an overflow panic.
            let all = Policy {
                rotation_period: huge,
                publish_lead: huge,
                grace: huge,
                max_token_ttl: huge,
                default_token_ttl: huge,
                jwks_max_age: huge,
                clock_skew: huge,
                issuer: None,
            };
            assert!(all.validate().is_err());
        }
        // Exactly ten years is allowed where the other rules allow it.
        let p = Policy {
            grace: MAX_DURATION,
            ..base.clone()
        };
        assert!(p.validate().is_ok());
    }

    #[test]
    fn advice() {
        let p = Policy {
            rotation_period: d(30),
            publish_lead: Duration::from_secs(2 * HOUR),
            grace: d(2),
            ..Policy::default()
        };
        let w: Vec<String> = p
            .validate()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].starts_with("rotation_period 30d is outside the usual 90d-180d"));
        assert!(w[1].starts_with("publish_lead 2h is under 24h"));
        assert!(
            w[2].starts_with("max_token_ttl 1h is above the rule of thumb for a 30d rotation (15m")
        );
    }

    #[test]
    fn rule_of_thumb_scales() {
        assert_eq!(ttl_rule_of_thumb(d(90)), Duration::from_secs(HOUR));
        assert_eq!(ttl_rule_of_thumb(d(365)), Duration::from_secs(HOUR));
        assert_eq!(ttl_rule_of_thumb(d(30)), Duration::from_secs(15 * MINUTE));
        assert_eq!(
            ttl_rule_of_thumb(d(60)),
            Duration::from_secs(37 * MINUTE + 30)
        );
    }

    #[test]
    fn old_records_without_new_fields_get_defaults() {
        let p: Policy =
            serde_json::from_str(r#"{"max_token_ttl":600,"default_token_ttl":60,"grace":604800}"#)
                .unwrap_or_default();
        assert_eq!(p.max_token_ttl, Duration::from_secs(600));
        assert_eq!(p.rotation_period, d(90));
    }

    #[test]
    fn short_durations() {
        assert_eq!(
            Short(Duration::from_secs(6 * DAY + 12 * HOUR)).to_string(),
            "6d 12h"
        );
        assert_eq!(Short(Duration::from_secs(3661)).to_string(), "1h 1m 1s");
    }
}
