//! Token verification with the algorithm pinned to the key, never taken
//! from the token. Shared by [`crate::Verifier`] and Signet's Verify RPC.
//!
//! The signature check is `jsonwebtoken`'s (over aws-lc-rs); header parsing
//! and classification are here so that every failure gets one of a fixed
//! set of reasons, and so that Ed25519 keys published under the fully
//! specified name `Ed25519` (RFC 9864), which `jsonwebtoken` does not parse
//! in a header, verify like `EdDSA` ones.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use jsonwebtoken::{Algorithm as JwtAlg, DecodingKey};
use serde_json::{Map, Value};

use crate::Jwk;

/// Why a token failed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// Not a compact JWS with JSON header and claims, or no `exp`.
    Malformed,
    /// The header names no kid.
    MissingKid,
    /// The kid is not in the key set.
    UnknownKid,
    /// The header's alg differs from the key's.
    AlgMismatch,
    /// The signature does not verify.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// The key was revoked.
    RevokedKey,
}

impl Failure {
    /// Every reason, in the order of the protobuf enum.
    pub const ALL: [Failure; 8] = [
        Failure::Malformed,
        Failure::MissingKid,
        Failure::UnknownKid,
        Failure::AlgMismatch,
        Failure::BadSignature,
        Failure::Expired,
        Failure::NotYetValid,
        Failure::RevokedKey,
    ];

    /// The reason as a metric label and log value.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Malformed => "malformed",
            Failure::MissingKid => "missing_kid",
            Failure::UnknownKid => "unknown_kid",
            Failure::AlgMismatch => "alg_mismatch",
            Failure::BadSignature => "bad_signature",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not_yet_valid",
            Failure::RevokedKey => "revoked_key",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed verification: the reason and an explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The reason, from the fixed set.
    pub failure: Failure,
    /// What exactly was wrong.
    pub message: String,
    /// The token's kid, if it could be read.
    pub kid: Option<String>,
    /// The token's alg, if it could be read.
    pub alg: Option<String>,
}

/// A verified token.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// The key that signed it.
    pub kid: String,
    /// Its algorithm.
    pub alg: String,
    /// Its claims.
    pub claims: Map<String, Value>,
}

/// What a key set knows about a kid.
pub enum Lookup<'a> {
    /// A key verifiers accept.
    Key(&'a Jwk),
    /// A key that was revoked.
    Revoked,
    /// No such key.
    Unknown,
}

fn decode_json(part: &str) -> Option<Map<String, Value>> {
    let bytes = B64.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// The `jsonwebtoken` algorithm and decoding key for a JWK.
fn decoding_key(jwk: &Jwk) -> Option<(JwtAlg, DecodingKey)> {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let alg = match jwk.alg.as_str() {
        "RS256" => JwtAlg::RS256,
        "PS256" => JwtAlg::PS256,
        "ES256" => JwtAlg::ES256,
        "EdDSA" | "Ed25519" => JwtAlg::EdDSA,
        _ => return None,
    };
    let key = match jwk.kty.as_str() {
        "RSA" => DecodingKey::from_rsa_components(&s(&jwk.n), &s(&jwk.e)).ok()?,
        "EC" => DecodingKey::from_ec_components(&s(&jwk.x), &s(&jwk.y)).ok()?,
        "OKP" => DecodingKey::from_ed_components(&s(&jwk.x)).ok()?,
        _ => return None,
    };
    Some((alg, key))
}

/// Verifies `token` with the key `lookup` finds for its kid, at `now`
/// (seconds), allowing `leeway` seconds of clock skew on `exp` and `nbf`.
pub fn verify<'a>(
    token: &str,
    lookup: impl FnOnce(&str) -> Lookup<'a>,
    now: i64,
    leeway: i64,
) -> Result<Verified, Rejected> {
    let mut rejected = Rejected {
        failure: Failure::Malformed,
        message: String::new(),
        kid: None,
        alg: None,
    };
    let fail = |mut r: Rejected, failure: Failure, message: String| {
        r.failure = failure;
        r.message = message;
        Err(r)
    };
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return fail(
            rejected,
            Failure::Malformed,
            "not a compact JWS (three base64url parts)".into(),
        );
    }
    let Some(header) = decode_json(parts[0]) else {
        return fail(
            rejected,
            Failure::Malformed,
            "the header is not a base64url JSON object".into(),
        );
    };
    rejected.alg = header.get("alg").and_then(Value::as_str).map(str::to_owned);
    let Some(kid) = header.get("kid").and_then(Value::as_str).map(str::to_owned) else {
        return fail(
            rejected,
            Failure::MissingKid,
            "the header names no kid".into(),
        );
    };
    rejected.kid = Some(kid.clone());
    let jwk = match lookup(&kid) {
        Lookup::Key(jwk) => jwk,
        Lookup::Revoked => {
            return fail(
                rejected,
                Failure::RevokedKey,
                format!("key {kid} was revoked"),
            );
        }
        Lookup::Unknown => {
            return fail(
                rejected,
                Failure::UnknownKid,
                format!("no key {kid} in the key set"),
            );
        }
    };
    let token_alg = rejected.alg.clone().unwrap_or_default();
    if token_alg != jwk.alg {
        return fail(
            rejected,
            Failure::AlgMismatch,
            format!(
                "the header says alg {token_alg:?}; key {kid} is {}",
                jwk.alg
            ),
        );
    }
    let Some((alg, key)) = decoding_key(jwk) else {
        return fail(
            rejected,
            Failure::UnknownKid,
            format!("key {kid} is not a usable public key"),
        );
    };
    let signing_input = &token[..parts[0].len() + 1 + parts[1].len()];
    match jsonwebtoken::crypto::verify(parts[2], signing_input.as_bytes(), &key, alg) {
        Ok(true) => {}
        _ => {
            return fail(
                rejected,
                Failure::BadSignature,
                format!("the signature does not verify under key {kid}"),
            );
        }
    }
    let Some(claims) = decode_json(parts[1]) else {
        return fail(
            rejected,
            Failure::Malformed,
            "the claims are not a base64url JSON object".into(),
        );
    };
    let Some(exp) = claims.get("exp").and_then(Value::as_i64) else {
        return fail(rejected, Failure::Malformed, "no integer exp claim".into());
    };
    if now > exp.saturating_add(leeway) {
        return fail(
            rejected,
            Failure::Expired,
            format!("expired {}s ago", now - exp),
        );
    }
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_i64)
        && now.saturating_add(leeway) < nbf
    {
        return fail(
            rejected,
            Failure::NotYetValid,
            format!("not valid for another {}s", nbf - now),
        );
    }
    Ok(Verified {
        kid,
        alg: token_alg,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::{
        rand::SystemRandom,
        signature::{Ed25519KeyPair, KeyPair as _},
    };
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_000_000;

    struct Key {
        pair: Ed25519KeyPair,
        jwk: Jwk,
    }

    fn key(kid: &str) -> Key {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = Jwk {
            kty: "OKP".into(),
            kid: kid.into(),
            use_: "sig".into(),
            alg: "EdDSA".into(),
            crv: Some("Ed25519".into()),
            n: None,
            e: None,
            x: Some(B64.encode(pair.public_key().as_ref())),
            y: None,
        };
        Key { pair, jwk }
    }

    fn sign(key: &Key, header: Value, claims: Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = key.pair.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    fn check(key: &Key, token: &str) -> Result<Verified, Rejected> {
        verify(
            token,
            |kid| match kid {
                k if k == key.jwk.kid => Lookup::Key(&key.jwk),
                "gone" => Lookup::Revoked,
                _ => Lookup::Unknown,
            },
            NOW,
            60,
        )
    }

    fn failure(key: &Key, token: &str) -> (Failure, String) {
        let r = check(key, token).unwrap_err();
        (r.failure, r.message)
    }

    #[test]
    fn accepts_a_good_token_and_classifies_every_refusal() {
        let k = key("k1");
        let header = json!({"alg": "EdDSA", "kid": "k1"});
        let good = sign(&k, header.clone(), json!({"sub": "alice", "exp": NOW + 10}));
        let v = check(&k, &good).unwrap();
        assert_eq!((v.kid.as_str(), v.alg.as_str()), ("k1", "EdDSA"));
        assert_eq!(v.claims["sub"], "alice");

        // Other claims under the same signature.
        let parts: Vec<&str> = good.split('.').collect();
        let other = B64.encode(json!({"sub": "mallory", "exp": NOW + 10}).to_string());
        let tampered = format!("{}.{other}.{}", parts[0], parts[2]);
        assert_eq!(
            failure(&k, &tampered),
            (
                Failure::BadSignature,
                "the signature does not verify under key k1".into()
            )
        );
        // The alg comes from the key: a header naming another is refused
        // before any signature check.
        let es = sign(
            &k,
            json!({"alg": "ES256", "kid": "k1"}),
            json!({"exp": NOW}),
        );
        assert_eq!(failure(&k, &es).0, Failure::AlgMismatch);
        let none = sign(&k, json!({"alg": "none", "kid": "k1"}), json!({"exp": NOW}));
        assert_eq!(failure(&k, &none).0, Failure::AlgMismatch);

        let cases = [
            (
                json!({"alg": "EdDSA"}),
                json!({"exp": NOW}),
                Failure::MissingKid,
            ),
            (
                json!({"alg": "EdDSA", "kid": "k2"}),
                json!({"exp": NOW}),
                Failure::UnknownKid,
            ),
            (
                json!({"alg": "EdDSA", "kid": "gone"}),
                json!({"exp": NOW}),
                Failure::RevokedKey,
            ),
            (header.clone(), json!({"sub": "no exp"}), Failure::Malformed),
            (header.clone(), json!({"exp": NOW - 61}), Failure::Expired),
            (
                header.clone(),
                json!({"exp": NOW + 600, "nbf": NOW + 61}),
                Failure::NotYetValid,
            ),
        ];
        for (h, c, want) in cases {
            assert_eq!(failure(&k, &sign(&k, h, c.clone())).0, want, "{c}");
        }
        // Within the leeway on either side.
        assert!(check(&k, &sign(&k, header.clone(), json!({"exp": NOW - 60}))).is_ok());
        let nbf = json!({"exp": NOW + 600, "nbf": NOW + 60});
        assert!(check(&k, &sign(&k, header, nbf)).is_ok());

        assert_eq!(failure(&k, "a.b").0, Failure::Malformed);
        assert_eq!(failure(&k, "!!.e30.e30").0, Failure::Malformed);
    }
}
