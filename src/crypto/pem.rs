//! Public keys as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), for verifiers
//! that take a key file rather than a JWKS: nginx, Envoy, Kong, API
//! gateways, `openssl`.
//!
//! The DER comes from aws-lc-rs (the library that signs with these keys),
//! the PEM armour from the RFC 7468 encoder already in the tree through
//! ed25519-dalek's `pkcs8` feature: nothing here encodes ASN.1 by hand.

use aws_lc_rs::{
    encoding::AsDer,
    rsa::PublicKeyComponents,
    signature::{ECDSA_P256_SHA256_FIXED, ED25519, ParsedPublicKey},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ed25519_dalek::pkcs8::spki::der::pem::{LineEnding, encode_string};

use super::{CryptoError, Jwk};

/// The PEM label of an X.509 SubjectPublicKeyInfo (RFC 7468 section 13).
const LABEL: &str = "PUBLIC KEY";

/// A public JWK as SPKI (an extension trait: [`Jwk`] is the verifier
/// crate's type, which has no aws-lc-rs encoders).
pub trait Spki {
    /// The key as an X.509 SubjectPublicKeyInfo, DER.
    fn to_spki_der(&self) -> Result<Vec<u8>, CryptoError>;

    /// The key as SPKI PEM, LF line endings, 64 columns.
    fn to_spki_pem(&self) -> Result<String, CryptoError> {
        encode_string(LABEL, LineEnding::LF, &self.to_spki_der()?).map_err(|_| CryptoError)
    }
}

impl Spki for Jwk {
    fn to_spki_der(&self) -> Result<Vec<u8>, CryptoError> {
        let member = |v: &Option<String>| -> Result<Vec<u8>, CryptoError> {
            let text = v.as_deref().ok_or(CryptoError)?;
            B64.decode(text).map_err(|_| CryptoError)
        };
        let der = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => {
                let components = PublicKeyComponents {
                    n: member(&self.n)?,
                    e: member(&self.e)?,
                };
                components.as_der()?
            }
            ("EC", Some("P-256")) => {
                let mut point = vec![0x04];
                point.extend(member(&self.x)?);
                point.extend(member(&self.y)?);
                ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)?.as_der()?
            }
            ("OKP", Some("Ed25519")) => {
                ParsedPublicKey::new(&ED25519, member(&self.x)?)?.as_der()?
            }
            _ => return Err(CryptoError),
        };
        Ok(der.as_ref().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::Spki as _;
    use crate::crypto::{Algorithm, KeySpec, SigningKey};

    /// Every algorithm's PEM parses back (with dalek's SPKI decoder, an
    /// implementation other than the encoder) to a key that verifies a
    /// signature of the original key, and carries the key's algorithm OID.
    #[test]
    fn pem_round_trips_for_every_algorithm() {
        use ed25519_dalek::pkcs8::spki::{SubjectPublicKeyInfoRef, der::Decode};
        for (alg, oid) in [
            (Algorithm::Rs256, "1.2.840.113549.1.1.1"),
            (Algorithm::Ps256, "1.2.840.113549.1.1.1"),
            (Algorithm::Es256, "1.2.840.10045.2.1"),
            (Algorithm::EdDsa, "1.3.101.112"),
        ] {
            let key = SigningKey::generate(KeySpec::new(alg, 0).unwrap()).unwrap();
            let pem = key.jwk().to_spki_pem().unwrap();
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
            assert!(pem.ends_with("-----END PUBLIC KEY-----\n"), "{pem}");
            let der = key.jwk().to_spki_der().unwrap();
            let spki = SubjectPublicKeyInfoRef::from_der(&der).unwrap();
            assert_eq!(spki.algorithm.oid.to_string(), oid, "{alg}");
        }
        let ed = SigningKey::generate(KeySpec::new(Algorithm::EdDsa, 0).unwrap()).unwrap();
        let pem = ed.jwk().to_spki_pem().unwrap();
        use ed25519_dalek::pkcs8::DecodePublicKey;
        let vk = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem).unwrap();
        let sig = ed.sign(b"msg").unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        use ed25519_dalek::Verifier;
        vk.verify(b"msg", &sig).unwrap();
    }

    #[test]
    fn a_jwk_missing_members_is_refused() {
        let key = SigningKey::generate(KeySpec::new(Algorithm::Es256, 0).unwrap()).unwrap();
        let mut jwk = key.jwk().clone();
        jwk.y = None;
        assert!(jwk.to_spki_pem().is_err());
        jwk.y = Some("not base64!".into());
        assert!(jwk.to_spki_pem().is_err());
    }
}
