//! Strict parsing of caller-supplied JSON: claims and extra header members.
//!
//! Parse, don't validate: what comes out is a JSON object that is valid
//! UTF-8, within the size and depth caps, free of duplicate member names
//! (which different JWT libraries resolve differently), and whose registered
//! claims have the types RFC 7519 gives them.

use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Size and nesting limits for caller JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted document in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of objects and arrays (the top-level object
    /// counts as 1).
    pub max_depth: usize,
}

impl Limits {
    /// Limits for `claims_json`: 16 KiB, 32 levels.
    pub const CLAIMS: Limits = Limits {
        max_bytes: 16 * 1024,
        max_depth: 32,
    };
    /// Limits for `header_json`: 1 KiB, flat.
    pub const HEADER: Limits = Limits {
        max_bytes: 1024,
        max_depth: 1,
    };
}

/// Caller JSON broke a rule. Displays as `field: rule`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct InputError {
    /// The request field or JSON member at fault, e.g. `claims_json.exp`.
    pub field: String,
    /// The rule it broke, phrased so the caller knows what to change.
    pub rule: String,
}

impl InputError {
    pub(crate) fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// Parses `bytes` as a JSON object under `limits`; `field` names the request
/// field in errors.
pub fn parse_object(
    bytes: &[u8],
    limits: Limits,
    field: &str,
) -> Result<Map<String, Value>, InputError> {
    if bytes.len() > limits.max_bytes {
        return Err(InputError::new(
            field,
            format!(
                "is {} bytes; the limit is {} bytes",
                bytes.len(),
                limits.max_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        InputError::new(
            field,
            format!(
                "is not valid UTF-8 (bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict {
        depth: 0,
        max_depth: limits.max_depth,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v))
    .map_err(|e| InputError::new(field, format!("is not acceptable JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(InputError::new(
            field,
            format!("must be a JSON object, not {}", kind(&other)),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON value visitor that rejects duplicate member names and nesting
/// deeper than `max_depth`.
#[derive(Clone, Copy)]
struct Strict {
    depth: usize,
    max_depth: usize,
}

impl Strict {
    fn enter<E: serde::de::Error>(self) -> Result<Strict, E> {
        let depth = self.depth + 1;
        if depth > self.max_depth {
            return Err(E::custom(format_args!(
                "nesting deeper than {} levels",
                self.max_depth
            )));
        }
        Ok(Strict { depth, ..self })
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(A::Error::custom(format_args!(
                    "duplicate member name {key:?}"
                )));
            }
            let value = map.next_value_seed(inner)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Registered claims that Signet sets itself; a caller may not supply them.
const SERVICE_CLAIMS: [&str; 2] = ["iat", "exp"];

/// Type-checks the registered claims of RFC 7519 section 4.1 and refuses the
/// ones the service sets.
pub fn check_registered(claims: &Map<String, Value>) -> Result<(), InputError> {
    for name in ["iss", "sub", "jti"] {
        if let Some(v) = claims.get(name)
            && !v.is_string()
        {
            return Err(InputError::new(
                format!("claims_json.{name}"),
                format!("must be a string, not {}", kind(v)),
            ));
        }
    }
    if let Some(aud) = claims.get("aud") {
        let ok = match aud {
            Value::String(_) => true,
            Value::Array(items) => !items.is_empty() && items.iter().all(Value::is_string),
            _ => false,
        };
        if !ok {
            return Err(InputError::new(
                "claims_json.aud",
                "must be a string or a non-empty array of strings",
            ));
        }
    }
    if let Some(v) = claims.get("nbf") {
        numeric_date("nbf", v)?;
    }
    for name in SERVICE_CLAIMS {
        if let Some(v) = claims.get(name) {
            numeric_date(name, v)?;
            return Err(InputError::new(
                format!("claims_json.{name}"),
                "is set by Signet (iat = now, exp = now + ttl); remove it and pass ttl instead",
            ));
        }
    }
    Ok(())
}

/// A NumericDate: whole seconds since the epoch, as a non-negative integer.
fn numeric_date(name: &str, v: &Value) -> Result<i64, InputError> {
    v.as_i64().filter(|s| *s >= 0).ok_or_else(|| {
        InputError::new(
            format!("claims_json.{name}"),
            format!(
                "must be a NumericDate (non-negative integer seconds since the epoch), not {}",
                kind(v)
            ),
        )
    })
}

/// Reads a checked `nbf` claim, if any.
pub fn not_before(claims: &Map<String, Value>) -> Option<i64> {
    claims.get("nbf").and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Map<String, Value>, InputError> {
        parse_object(s.as_bytes(), Limits::CLAIMS, "claims_json")
    }

    #[test]
    fn accepts_plain_object() {
        let m = parse(r#"{"sub":"alice","n":[1,{"a":null}]}"#).unwrap_or_default();
        assert_eq!(m["sub"], "alice");
        assert!(check_registered(&m).is_ok());
    }

    #[test]
    fn rejects_non_objects() {
        for s in ["[]", "1", "\"x\"", "null", "true"] {
            let e = parse(s).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                e.starts_with("claims_json: must be a JSON object"),
                "{s}: {e}"
            );
        }
    }

    #[test]
    fn rejects_duplicates_at_any_depth() {
        for s in [r#"{"sub":"a","sub":"b"}"#, r#"{"x":{"k":1,"k":2}}"#] {
            let e = parse(s).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("duplicate member name"), "{s}: {e}");
        }
    }

    #[test]
    fn depth_cap() {
        let ok = format!("{}{}", "{\"a\":".repeat(31) + "{", "}".repeat(32));
        assert!(parse(&ok).is_ok());
        let deep = format!("{}{}", "{\"a\":".repeat(32) + "{", "}".repeat(33));
        let e = parse(&deep)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("nesting deeper than 32"), "{e}");
    }

    #[test]
    fn size_cap_and_utf8() {
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(16 * 1024));
        let e = parse(&big).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("the limit is 16384 bytes"), "{e}");
        let e = parse_object(b"{\"x\":\"\xff\"}", Limits::CLAIMS, "claims_json")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn trailing_garbage_rejected() {
        assert!(parse(r#"{"a":1} x"#).is_err());
    }

    #[test]
    fn registered_claim_types() {
        let cases = [
            (r#"{"sub":1}"#, "claims_json.sub: must be a string"),
            (r#"{"aud":[1]}"#, "claims_json.aud: must be a string or"),
            (r#"{"aud":[]}"#, "claims_json.aud: must be a string or"),
            (
                r#"{"nbf":"soon"}"#,
                "claims_json.nbf: must be a NumericDate",
            ),
            (
                r#"{"exp":"tomorrow"}"#,
                "claims_json.exp: must be a NumericDate",
            ),
            (r#"{"iat":1.5}"#, "claims_json.iat: must be a NumericDate"),
            (r#"{"exp":2000000000}"#, "claims_json.exp: is set by Signet"),
            (r#"{"iat":1}"#, "claims_json.iat: is set by Signet"),
        ];
        for (s, want) in cases {
            let m = parse(s).unwrap_or_default();
            let e = check_registered(&m)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.starts_with(want), "{s}: {e}");
        }
        let ok = parse(r#"{"aud":["a","b"],"nbf":5,"iss":"i","jti":"j"}"#).unwrap_or_default();
        assert!(check_registered(&ok).is_ok());
    }

    proptest::proptest! {
        /// Any JSON object serde_json writes (which has unique keys) parses to
        /// the same value, and arbitrary bytes never panic the parser.
        #[test]
        fn parse_agrees_with_serde_json(m in proptest::collection::btree_map("[a-z]{1,4}", proptest::prelude::any::<i32>(), 0..8)) {
            let s = serde_json::to_string(&m).unwrap_or_default();
            let ours = parse(&s).map(Value::Object).ok();
            let theirs: Option<Value> = serde_json::from_str(&s).ok();
            proptest::prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_object(&bytes, Limits::CLAIMS, "claims_json");
        }
    }
}
