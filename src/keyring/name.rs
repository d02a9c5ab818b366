//! Key ring names and Rotate request ids.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::crypto::claims::InputError;

/// A validated key ring name: 1 to 64 characters of `a-z`, `0-9`, `-`, `_`
/// and `.`, starting with a letter or digit. Safe in paths, URLs, metric
/// labels and log lines without escaping.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RingName(String);

/// The longest ring name.
pub const MAX_RING_NAME: usize = 64;

impl RingName {
    /// Parses `s`; `field` names the request field in the error.
    pub fn parse(s: &str, field: &str) -> Result<Self, InputError> {
        let rule = "must be 1 to 64 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit";
        let valid = !s.is_empty()
            && s.len() <= MAX_RING_NAME
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if valid {
            Ok(Self(s.to_owned()))
        } else if s.is_empty() {
            Err(InputError::new(field, format!("is empty; it {rule}")))
        } else {
            Err(InputError::new(
                field,
                format!("{s:?} is not a valid ring name: it {rule}"),
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RingName {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, "ring")
    }
}

impl TryFrom<String> for RingName {
    type Error = InputError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s, "ring")
    }
}

impl From<RingName> for String {
    fn from(n: RingName) -> String {
        n.0
    }
}

/// A validated Rotate request id (idempotency key): 1 to 128 characters of
/// `A-Z`, `a-z`, `0-9`, `-`, `_`, `.` and `:` (a UUID fits). Scoped to one
/// ring.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(String);

/// The longest request id.
pub const MAX_REQUEST_ID: usize = 128;

impl RequestId {
    /// Parses `s`: `None` when empty (no request id), an error naming
    /// `field` when it breaks the rule. The value is not echoed.
    pub fn parse_optional(s: &str, field: &str) -> Result<Option<Self>, InputError> {
        if s.is_empty() {
            return Ok(None);
        }
        let valid = s.len() <= MAX_REQUEST_ID
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if valid {
            Ok(Some(Self(s.to_owned())))
        } else {
            Err(InputError::new(
                field,
                "must be 1 to 128 characters of A-Z, a-z, 0-9, '-', '_', '.' or ':' (a UUID fits)",
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert_eq!(RequestId::parse_optional("", "request_id").unwrap(), None);
        let uuid = "0b7e0c4e-55a3-4bde-9d5b-4f2a0a1d2c3e";
        assert_eq!(
            RequestId::parse_optional(uuid, "request_id")
                .unwrap()
                .unwrap()
                .as_str(),
            uuid
        );
        assert!(RequestId::parse_optional(&"a".repeat(128), "request_id").is_ok());
        for bad in [
            "a".repeat(129),
            "a b".into(),
            "é".into(),
            "a/b".into(),
            "a\nb".into(),
        ] {
            let e = RequestId::parse_optional(&bad, "request_id").unwrap_err();
            assert_eq!(
                e.to_string(),
                "request_id: must be 1 to 128 characters of A-Z, a-z, 0-9, '-', '_', '.' or ':' (a UUID fits)"
            );
        }
    }

    #[test]
    fn accepts_and_refuses() {
        for ok in ["default", "a", "tokens.prod-eu_1", "9lives"] {
            assert!(RingName::parse(ok, "name").is_ok(), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", "Default", "-x", ".x", "a/b", "a b", "é", long.as_str()] {
            let e = RingName::parse(bad, "name")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.starts_with("name: "), "{bad}: {e}");
        }
    }
}
