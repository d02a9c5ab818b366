//! KEKs held in process memory: `file:PATH` and `env:VAR`.
//!
//! The 32 key bytes sit in a zeroize-on-drop buffer; wrapping is AES-256-GCM
//! with a fresh random nonce (`nonce || ciphertext || tag`).

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::{
    Engine, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use zeroize::Zeroizing;

use super::{DataKey, Kek, KekError};
use crate::crypto::random_bytes;

/// Decoders for an `env:` KEK: either alphabet, with or without padding.
const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

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
        Self::from_base64(var, &value)
    }

    /// A KEK from `value`, the base64 of exactly 32 bytes: standard or
    /// URL-safe alphabet, padded or not (surrounding whitespace ignored).
    /// `var` names the variable in errors; the value never appears in one.
    pub fn from_base64(var: &str, value: &str) -> Result<Self, KekError> {
        let bad = |why: String| {
            KekError::Unavailable(format!(
                "env KEK ${var}: {why}; it must hold the base64 (standard or URL-safe) of \
                 exactly 32 random bytes, e.g. from `head -c 32 /dev/urandom | base64`"
            ))
        };
        let value = value.trim();
        // Decoded into a wiped buffer on the stack: `decode` would return a
        // heap Vec, and the attempt in the wrong alphabet frees a partly
        // decoded key unwiped.
        let mut buf = Zeroizing::new([0u8; 64]);
        let mut decoded = None;
        for engine in [&STANDARD, &URL_SAFE] {
            match engine.decode_slice(value, &mut *buf) {
                Ok(n) => {
                    decoded = Some(n);
                    break;
                }
                Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
                    return Err(bad("decodes to more than 32 bytes".to_owned()));
                }
                Err(base64::DecodeSliceError::DecodeError(_)) => {}
            }
        }
        let n = decoded.ok_or_else(|| bad("not valid base64".to_owned()))?;
        let key: [u8; 32] = buf[..n]
            .try_into()
            .map_err(|_| bad(format!("decodes to {n} bytes, not 32")))?;
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
        // Sealed in place in the buffer returned, made with room for the
        // tag: appending it to a full Vec would reallocate and free a
        // plaintext copy of the data key unwiped. Until sealed the buffer
        // holds the data key, so it is wiped if sealing fails.
        let mut out = Zeroizing::new(Vec::with_capacity(
            NONCE_LEN + dek.len() + AES_256_GCM.tag_len(),
        ));
        out.extend_from_slice(&nonce);
        out.extend_from_slice(dek);
        let tag = self
            .aead()?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| KekError::Unavailable("AES-256-GCM seal failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        // Sealed: ciphertext only from here on.
        Ok(std::mem::take(&mut *out))
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

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose as b64;

    use super::*;

    /// 32 bytes whose base64 uses `+` or `/` (so the URL-safe form differs).
    const KEY: [u8; 32] = [
        0xfb, 0xff, 0xbf, 0xfb, 0xef, 0xfe, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09,
        0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
        0xfb, 0xff,
    ];

    #[test]
    fn env_kek_accepts_standard_and_url_safe_base64_padded_or_not() {
        let forms = [
            b64::STANDARD.encode(KEY),
            b64::STANDARD_NO_PAD.encode(KEY),
            b64::URL_SAFE.encode(KEY),
            b64::URL_SAFE_NO_PAD.encode(KEY),
            format!("  {}\n", b64::STANDARD.encode(KEY)),
        ];
        assert!(
            forms[0].contains('+') || forms[0].contains('/'),
            "{}",
            forms[0]
        );
        assert!(
            forms[2].contains('-') || forms[2].contains('_'),
            "{}",
            forms[2]
        );
        for form in forms {
            let kek = LocalKek::from_base64("SIGNET_KEK", &form)
                .unwrap_or_else(|e| panic!("{form:?}: {e}"));
            assert_eq!(*kek.key, KEY, "{form:?}");
        }
    }

    #[test]
    fn env_kek_errors_name_the_variable_and_the_fix() {
        let short = b64::STANDARD.encode([7u8; 31]);
        let cases = [
            ("not base64!", "env KEK $SIGNET_KEK: not valid base64; "),
            (
                short.as_str(),
                "env KEK $SIGNET_KEK: decodes to 31 bytes, not 32; ",
            ),
        ];
        for (value, want) in cases {
            let e = LocalKek::from_base64("SIGNET_KEK", value)
                .err()
                .unwrap()
                .to_string();
            assert!(e.starts_with(want), "{e}");
            assert!(
                e.ends_with("e.g. from `head -c 32 /dev/urandom | base64`"),
                "{e}"
            );
            assert!(!e.contains(value), "the value is not echoed: {e}");
        }
    }
}
