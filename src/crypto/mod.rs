//! Signing algorithms, public keys and the JWS compact encoding.
//!
//! RSA and ECDSA go through `aws-lc-rs`, Ed25519 through `ed25519-dalek`.
//! Tokens are assembled here from cached key pairs: a key is parsed once, when
//! it enters memory, never per request.

mod algorithm;
pub mod claims;
pub mod jws;
mod key;
mod params;
mod pem;

pub use algorithm::{Algorithm, KeySpec, KeySpecError};
pub use key::SigningKey;
pub use pem::Spki;
pub use signet_verifier::{Jwk, Kid, verify};

/// A cryptographic operation failed.
///
/// Deliberately opaque: which step failed, and why, is not information a
/// caller should be able to probe for.
#[derive(Debug, thiserror::Error)]
#[error("cryptographic operation failed")]
pub struct CryptoError;

impl From<aws_lc_rs::error::Unspecified> for CryptoError {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        CryptoError
    }
}

impl From<aws_lc_rs::error::KeyRejected> for CryptoError {
    fn from(_: aws_lc_rs::error::KeyRejected) -> Self {
        CryptoError
    }
}

/// Fills a fresh buffer of `N` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut buf = [0u8; N];
    aws_lc_rs::rand::fill(&mut buf)?;
    Ok(buf)
}
