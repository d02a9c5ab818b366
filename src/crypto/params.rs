//! Public key parameters, their RFC 7638 thumbprints (the kid), and the
//! JWK a key is published as.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};

use super::{Algorithm, Jwk, Kid};

/// The public parameters of a key, base64url-encoded as JWK members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PublicParams {
    /// `kty: RSA`: modulus and exponent, big-endian without leading zeros.
    Rsa { n: String, e: String },
    /// `kty: EC`, `crv: P-256`: the point's coordinates.
    P256 { x: String, y: String },
    /// `kty: OKP`, `crv: Ed25519`: the public key.
    Ed25519 { x: String },
}

impl PublicParams {
    pub(crate) fn rsa(n: &[u8], e: &[u8]) -> Self {
        PublicParams::Rsa {
            n: B64.encode(n),
            e: B64.encode(e),
        }
    }

    pub(crate) fn p256(x: &[u8], y: &[u8]) -> Self {
        PublicParams::P256 {
            x: B64.encode(x),
            y: B64.encode(y),
        }
    }

    pub(crate) fn ed25519(x: &[u8]) -> Self {
        PublicParams::Ed25519 { x: B64.encode(x) }
    }

    /// The RFC 7638 thumbprint: SHA-256 over the required members in
    /// lexicographic order with no whitespace. Every value is base64url or a
    /// fixed name, so none needs JSON escaping.
    pub(crate) fn thumbprint(&self) -> Kid {
        let canonical = match self {
            PublicParams::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
            PublicParams::P256 { x, y } => {
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            PublicParams::Ed25519 { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        Kid::new(B64.encode(digest.as_ref()))
    }

    /// The JWK `alg` publishes these parameters as: `use: "sig"`, the
    /// thumbprint as kid, nothing private.
    pub(crate) fn jwk(&self, alg: Algorithm) -> Jwk {
        let kid = self.thumbprint().as_str().to_owned();
        let mut jwk = Jwk {
            kty: String::new(),
            kid,
            use_: "sig".to_owned(),
            alg: alg.name().to_owned(),
            crv: None,
            n: None,
            e: None,
            x: None,
            y: None,
        };
        match self {
            PublicParams::Rsa { n, e } => {
                jwk.kty = "RSA".into();
                jwk.n = Some(n.clone());
                jwk.e = Some(e.clone());
            }
            PublicParams::P256 { x, y } => {
                jwk.kty = "EC".into();
                jwk.crv = Some("P-256".into());
                jwk.x = Some(x.clone());
                jwk.y = Some(y.clone());
            }
            PublicParams::Ed25519 { x } => {
                jwk.kty = "OKP".into();
                jwk.crv = Some("Ed25519".into());
                jwk.x = Some(x.clone());
            }
        }
        jwk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example key of RFC 7638 section 3.1 and its published thumbprint.
    #[test]
    fn rfc7638_example_thumbprint() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let params = PublicParams::Rsa {
            n: n.into(),
            e: "AQAB".into(),
        };
        assert_eq!(
            params.thumbprint().as_str(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn jwk_has_only_public_members() {
        let jwk = PublicParams::ed25519(&[7u8; 32]).jwk(Algorithm::EdDsa);
        let v = serde_json::to_value(&jwk).unwrap_or_default();
        let mut keys: Vec<_> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        assert_eq!(keys, ["alg", "crv", "kid", "kty", "use", "x"]);
        assert_eq!(v["use"], "sig");
        assert_eq!(v["kty"], "OKP");
    }
}
