//! Private signing keys.
//!
//! [`SigningKey`] is the only type in Signet that holds private key material
//! in usable form. It has no `Debug`, `Display`, `Clone` or `Serialize`, so it
//! cannot end up in a log line, an error or a response by accident. Its
//! memory is wiped when it is dropped: `ed25519-dalek` zeroizes its secret on
//! drop, and AWS-LC's allocator cleanses every buffer it frees, which covers
//! the RSA and ECDSA key structures.

use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    rsa::KeySize,
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256,
        RSA_PSS_SHA256, RsaEncoding, RsaKeyPair,
    },
};
use ed25519_dalek::{
    Signer as _,
    pkcs8::{DecodePrivateKey, EncodePrivateKey},
};
use zeroize::Zeroizing;

use super::{Algorithm, CryptoError, Jwk, KeySpec, Kid, params::PublicParams, random_bytes};

enum Inner {
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
    P256(EcdsaKeyPair),
    // Boxed: the dalek key holds its seed inline, so every move of a
    // `SigningKey` through a heap slot (a task's output, a future's state)
    // would leave a copy of the seed behind in memory freed unwiped. Boxed,
    // only the pointer moves, and dalek wipes the one copy on drop.
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// A parsed private key, ready to sign, with its public JWK.
pub struct SigningKey {
    alg: Algorithm,
    inner: Inner,
    jwk: Jwk,
}

impl SigningKey {
    /// Generates a fresh key. RSA generation takes tens to hundreds of
    /// milliseconds: call it off the async reactor.
    pub fn generate(spec: KeySpec) -> Result<Self, CryptoError> {
        let alg = spec.alg();
        let inner = match alg {
            Algorithm::Rs256 | Algorithm::Ps256 => {
                let size = match spec.rsa_bits() {
                    3072 => KeySize::Rsa3072,
                    4096 => KeySize::Rsa4096,
                    // KeySpec admits only 2048, 3072 and 4096.
                    _ => KeySize::Rsa2048,
                };
                Inner::Rsa(RsaKeyPair::generate(size)?, rsa_padding(alg))
            }
            Algorithm::Es256 => {
                Inner::P256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?)
            }
            Algorithm::EdDsa | Algorithm::Ed25519 => {
                let seed = Zeroizing::new(random_bytes::<32>()?);
                Inner::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&seed)))
            }
        };
        Self::with_inner(alg, inner)
    }

    /// Parses a PKCS#8 private key for `alg`, as stored sealed.
    pub fn from_pkcs8(alg: Algorithm, der: &[u8]) -> Result<Self, CryptoError> {
        let inner = match alg {
            Algorithm::Rs256 | Algorithm::Ps256 => {
                Inner::Rsa(RsaKeyPair::from_pkcs8(der)?, rsa_padding(alg))
            }
            Algorithm::Es256 => Inner::P256(EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                der,
            )?),
            Algorithm::EdDsa | Algorithm::Ed25519 => Inner::Ed25519(Box::new(
                ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(|_| CryptoError)?,
            )),
        };
        Self::with_inner(alg, inner)
    }

    fn with_inner(alg: Algorithm, inner: Inner) -> Result<Self, CryptoError> {
        let params = match &inner {
            Inner::Rsa(kp, _) => {
                let public = kp.public_key();
                PublicParams::rsa(
                    public.modulus().big_endian_without_leading_zero(),
                    public.exponent().big_endian_without_leading_zero(),
                )
            }
            Inner::P256(kp) => {
                // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
                let point = kp.public_key().as_ref();
                if point.len() != 65 || point[0] != 0x04 {
                    return Err(CryptoError);
                }
                PublicParams::p256(&point[1..33], &point[33..65])
            }
            Inner::Ed25519(sk) => PublicParams::ed25519(sk.verifying_key().as_bytes()),
        };
        let jwk = params.jwk(alg);
        Ok(Self { alg, inner, jwk })
    }

    /// The PKCS#8 DER encoding of the private key, for sealing. The buffer is
    /// wiped when dropped; never log or return it.
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let der = match &self.inner {
            Inner::Rsa(kp, _) => Zeroizing::new(kp.as_der()?.as_ref().to_vec()),
            Inner::P256(kp) => Zeroizing::new(kp.to_pkcs8v1()?.as_ref().to_vec()),
            Inner::Ed25519(sk) => Zeroizing::new(
                sk.to_pkcs8_der()
                    .map_err(|_| CryptoError)?
                    .as_bytes()
                    .to_vec(),
            ),
        };
        Ok(der)
    }

    /// Signs `msg` and returns the JWS signature bytes (for ES256 the fixed
    /// 64-byte `R || S` form JWS requires).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match &self.inner {
            Inner::Rsa(kp, padding) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(*padding, &SystemRandom::new(), msg, &mut sig)?;
                Ok(sig)
            }
            Inner::P256(kp) => Ok(kp.sign(&SystemRandom::new(), msg)?.as_ref().to_vec()),
            Inner::Ed25519(sk) => Ok(sk.sign(msg).to_bytes().to_vec()),
        }
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The public key as published in the JWKS.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The key id (RFC 7638 thumbprint of the public key).
    pub fn kid(&self) -> Kid {
        self.jwk.kid()
    }
}

fn rsa_padding(alg: Algorithm) -> &'static dyn RsaEncoding {
    if alg == Algorithm::Ps256 {
        &RSA_PSS_SHA256
    } else {
        &RSA_PKCS1_SHA256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(alg: Algorithm) -> KeySpec {
        KeySpec::new(alg, 0).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn pkcs8_round_trip_keeps_kid() {
        for alg in Algorithm::ALL {
            let key = SigningKey::generate(spec(alg)).unwrap_or_else(|e| panic!("{alg}: {e}"));
            let der = key.to_pkcs8().unwrap_or_else(|e| panic!("{alg}: {e}"));
            let again = SigningKey::from_pkcs8(alg, &der).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(key.kid(), again.kid(), "{alg}");
            assert_eq!(key.kid().as_str().len(), 43, "{alg}: base64url SHA-256");
        }
    }

    #[test]
    fn fresh_keys_have_distinct_kids() {
        let a = SigningKey::generate(spec(Algorithm::Es256)).unwrap_or_else(|e| panic!("{e}"));
        let b = SigningKey::generate(spec(Algorithm::Es256)).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a.kid(), b.kid());
    }

    #[test]
    fn signature_sizes() {
        let cases = [
            (Algorithm::Rs256, 256),
            (Algorithm::Ps256, 256),
            (Algorithm::Es256, 64),
            (Algorithm::EdDsa, 64),
        ];
        for (alg, len) in cases {
            let key = SigningKey::generate(spec(alg)).unwrap_or_else(|e| panic!("{e}"));
            let sig = key.sign(b"x").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(sig.len(), len, "{alg}");
        }
    }

    #[test]
    fn garbage_pkcs8_is_opaque_error() {
        for alg in Algorithm::ALL {
            assert!(SigningKey::from_pkcs8(alg, b"not a key").is_err());
        }
    }
}
