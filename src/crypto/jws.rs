//! JWS compact serialization (RFC 7515), assembled by hand from a cached key
//! pair: header and payload are base64url-encoded JSON, the signature covers
//! `header.payload`.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use serde::Serialize;

use super::{
    Algorithm, CryptoError, SigningKey,
    claims::{InputError, Limits, parse_object},
};

/// Header members only Signet sets. Letting a caller choose any of these
/// would let it pick the verification key or algorithm for its own token.
const RESERVED_HEADER: [&str; 10] = [
    "alg", "kid", "jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256", "crit", "b64",
];

/// Header members a caller may set through `header_json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtraHeader {
    /// `typ`, e.g. `at+jwt` for RFC 9068 access tokens. Default `JWT`.
    pub typ: Option<String>,
    /// `cty`, the content type of the payload.
    pub cty: Option<String>,
}

impl ExtraHeader {
    /// Parses `header_json`. Empty bytes mean no extra members.
    pub fn parse(bytes: &[u8]) -> Result<Self, InputError> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let map = parse_object(bytes, Limits::HEADER, "header_json")?;
        let mut out = Self::default();
        for (name, value) in map {
            let field = format!("header_json.{name}");
            let slot = match name.as_str() {
                "typ" => &mut out.typ,
                "cty" => &mut out.cty,
                n if RESERVED_HEADER.contains(&n) => {
                    return Err(InputError::new(
                        field,
                        "is set by Signet; callers cannot choose it",
                    ));
                }
                _ => {
                    return Err(InputError::new(
                        field,
                        "is not allowed (only typ and cty may be set)",
                    ));
                }
            };
            let text = value
                .as_str()
                .filter(|s| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| {
                    InputError::new(
                        &field,
                        "must be a string of 1 to 64 printable ASCII characters",
                    )
                })?;
            *slot = Some(text.to_owned());
        }
        Ok(out)
    }

    /// Whether the default header applies unchanged.
    pub fn is_default(&self) -> bool {
        self.typ.is_none() && self.cty.is_none()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    kid: &'a str,
    typ: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cty: Option<&'a str>,
}

/// The base64url-encoded protected header for a token signed by `alg`/`kid`.
pub fn encode_header(alg: Algorithm, kid: &str, extra: &ExtraHeader) -> String {
    let header = Header {
        alg: alg.name(),
        kid,
        typ: extra.typ.as_deref().unwrap_or("JWT"),
        cty: extra.cty.as_deref(),
    };
    // Serializing a struct of strings cannot fail.
    let json = serde_json::to_vec(&header).unwrap_or_default();
    B64.encode(json)
}

/// Assembles `header.payload.signature` with a pre-encoded header.
pub fn sign_compact(
    header_b64: &str,
    payload_json: &[u8],
    key: &SigningKey,
) -> Result<String, CryptoError> {
    let payload_len = base64::encoded_len(payload_json.len(), false).unwrap_or(0);
    let mut token = String::with_capacity(header_b64.len() + payload_len + 360);
    token.push_str(header_b64);
    token.push('.');
    B64.encode_string(payload_json, &mut token);
    let sig = key.sign(token.as_bytes())?;
    token.push('.');
    B64.encode_string(sig, &mut token);
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        ExtraHeader::parse(s.as_bytes())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn reserved_members_refused() {
        for name in RESERVED_HEADER {
            let e = err(&format!(r#"{{"{name}":"x"}}"#));
            assert_eq!(
                e,
                format!("header_json.{name}: is set by Signet; callers cannot choose it")
            );
        }
        assert!(err(r#"{"zip":"DEF"}"#).contains("only typ and cty"));
        assert!(err(r#"{"typ":1}"#).starts_with("header_json.typ: must be a string"));
        assert!(err(r#"{"typ":{"a":1}}"#).contains("nesting deeper than 1"));
    }

    #[test]
    fn typ_override() {
        let h = ExtraHeader::parse(br#"{"typ":"at+jwt"}"#).unwrap_or_default();
        assert_eq!(h.typ.as_deref(), Some("at+jwt"));
        let b64 = encode_header(Algorithm::Es256, "k", &h);
        let json = B64.decode(b64).unwrap_or_default();
        assert_eq!(json, br#"{"alg":"ES256","kid":"k","typ":"at+jwt"}"#);
    }
}
