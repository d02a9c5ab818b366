//! Public keys as JWKs (RFC 7517), and JWK Sets.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A key id: the RFC 7638 JWK thumbprint (base64url SHA-256, 43 characters).
///
/// Derived from the public key alone, so every replica computes the same kid
/// for the same key, and a kid can never silently name a different key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Kid(String);

impl Kid {
    /// Wraps a kid read back from storage or a token header.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The kid as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A public JSON Web Key as published in a JWKS: `kid`, `kty`, `alg`,
/// `use: "sig"` and the public parameters, nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `RSA`, `EC` or `OKP`.
    pub kty: String,
    /// The key's thumbprint.
    pub kid: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// The JWS algorithm the key signs with.
    pub alg: String,
    /// Curve for EC and OKP keys.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crv: Option<String>,
    /// RSA modulus.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n: Option<String>,
    /// RSA public exponent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub e: Option<String>,
    /// EC x coordinate, or the Ed25519 public key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x: Option<String>,
    /// EC y coordinate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub y: Option<String>,
}

impl Jwk {
    /// The key id.
    pub fn kid(&self) -> Kid {
        Kid(self.kid.clone())
    }
}

/// A JSON Web Key Set (RFC 7517 section 5), as served at a JWKS URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    /// The published keys.
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// The key named `kid`, if the set has it.
    pub fn key(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}
