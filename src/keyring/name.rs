//! Key ring names.

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

#[cfg(test)]
mod tests {
    use super::*;

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
