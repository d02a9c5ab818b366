//! Key-encryption keys: what wraps each key's data key.

use async_trait::async_trait;
use zeroize::Zeroizing;

/// A 256-bit data key in the clear. Wiped on drop.
pub type DataKey = Zeroizing<[u8; 32]>;

/// Why a KEK provider failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KekError {
    /// The provider could not be opened or reached: the message says which
    /// provider, what failed and what to do (never key bytes or a PIN).
    #[error("{0}")]
    Unavailable(String),
    /// The wrapped value did not open under this KEK and context: a wrong
    /// KEK, or a blob that was altered or moved.
    #[error("the wrapped data key does not open under this key-encryption key")]
    Integrity,
}

/// A key-encryption key. Implementations keep the key where it belongs (in
/// memory that is wiped on drop, or inside an HSM that never releases it).
///
/// `wrap` and `unwrap` are authenticated: `aad` binds the wrapped key to its
/// context, and `unwrap` with different `aad` fails with
/// [`KekError::Integrity`]. They may block on I/O (an HSM): callers run them
/// off the signing path.
#[async_trait]
pub trait Kek: Send + Sync + 'static {
    /// Provider kind for status output: `file`, `env` or `pkcs11`.
    fn kind(&self) -> &'static str;

    /// Encrypts `dek` under the KEK, bound to `aad`.
    async fn wrap(&self, dek: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>, KekError>;

    /// Decrypts a value made by [`Kek::wrap`] with the same `aad`.
    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, KekError>;
}
