//! KEKs held in process memory: `file:PATH` and `env:VAR`.
//!
//! The 32 key bytes sit in a zeroize-on-drop buffer; wrapping is AES-256-GCM
//! with a fresh random nonce (`nonce || ciphertext || tag`).

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::{Engine, engine::general_purpose::STANDARD};
use zeroize::Zeroizing;

use super::{DataKey, Kek, KekError};
use crate::crypto::random_bytes;

/// A KEK whose bytes are in this process.
pub struct LocalKek {
    kind: &'static str,
    key: Zeroizing<[u8; 32]>,
}

impl LocalKek {
    /// Reads a KEK file: exactly 32 raw bytes, readable by its owner only.
    pub fn from_file(path: &Path) -> Result<Self, KekError> {
        let shown = path.display();
        let meta = fs::metadata(path)
            .map_err(|e| KekError::Unavailable(format!("file KEK {shown}: cannot read it: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KekError::Unavailable(format!(
                "file KEK {shown}: readable by group or others (mode {mode:03o}); run `chmod 600 {shown}`"
            )));
        }
        let bytes = Zeroizing::new(fs::read(path).map_err(|e| {
            KekError::Unavailable(format!("file KEK {shown}: cannot read it: {e}"))
        })?);
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            KekError::Unavailable(format!(
                "file KEK {shown}: must hold exactly 32 random bytes, found {}",
                bytes.len()
            ))
        })?;
        Ok(Self {
            kind: "file",
            key: Zeroizing::new(key),
        })
    }

    /// Creates a KEK file of 32 random bytes with mode 0600. Fails if the
    /// file exists: an existing KEK is never overwritten.
    pub fn create_file(path: &Path) -> Result<(), KekError> {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let shown = path.display();
        let key = Zeroizing::new(
            random_bytes::<32>().map_err(|_| KekError::Unavailable("no randomness".into()))?,
        );
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                KekError::Unavailable(format!("file KEK {shown}: cannot create it: {e}"))
            })?;
        f.write_all(key.as_slice())
            .and_then(|()| f.sync_all())
            .map_err(|e| KekError::Unavailable(format!("file KEK {shown}: cannot write it: {e}")))
    }

    /// A random KEK that lives only in this process.
    pub fn random() -> Result<Self, KekError> {
        let key =
            random_bytes::<32>().map_err(|_| KekError::Unavailable("no randomness".into()))?;
        Ok(Self {
            kind: "ephemeral",
            key: Zeroizing::new(key),
        })
    }

    /// Reads a base64 KEK from the environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, KekError> {
        let value = Zeroizing::new(std::env::var(var).map_err(|_| {
            KekError::Unavailable(format!("env KEK ${var}: the variable is not set"))
        })?);
        let bytes = Zeroizing::new(
            STANDARD
                .decode(value.trim())
                .map_err(|_| KekError::Unavailable(format!("env KEK ${var}: not valid base64")))?,
        );
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            KekError::Unavailable(format!(
                "env KEK ${var}: must decode to exactly 32 bytes, found {}",
                bytes.len()
            ))
        })?;
        Ok(Self {
            kind: "env",
            key: Zeroizing::new(key),
        })
    }

    fn aead(&self) -> Result<LessSafeKey, KekError> {
        UnboundKey::new(&AES_256_GCM, self.key.as_slice())
            .map(LessSafeKey::new)
            .map_err(|_| KekError::Unavailable("AES-256-GCM unavailable".into()))
    }
}

#[async_trait]
impl Kek for LocalKek {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn wrap(&self, dek: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>, KekError> {
        let nonce = random_bytes::<NONCE_LEN>()
            .map_err(|_| KekError::Unavailable("no randomness".into()))?;
        let mut out = nonce.to_vec();
        let mut body = dek.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| KekError::Unavailable("AES-256-GCM seal failed".into()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, KekError> {
        let (nonce, body) = wrapped
            .split_at_checked(NONCE_LEN)
            .ok_or(KekError::Integrity)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KekError::Integrity)?;
        let mut body = Zeroizing::new(body.to_vec());
        let plain = self
            .aead()?
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .map_err(|_| KekError::Integrity)?;
        let key: [u8; 32] = (&*plain).try_into().map_err(|_| KekError::Integrity)?;
        Ok(Zeroizing::new(key))
    }
}
