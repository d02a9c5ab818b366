//! The sealed-key format: envelope encryption with a per-key data key.
//!
//! ```text
//! blob = "SGK1" || u16 len(wrapped) || wrapped || nonce (12) || AES-256-GCM(pkcs8) || tag (16)
//! wrapped = KEK.wrap(data key, aad = "signet-dek-v1" | ring | kid | alg)
//! ```
//!
//! The private key's AEAD associated data binds the format version, ring,
//! kid, algorithm and the key's whole timeline, so a blob copied to another
//! record, or a record whose timeline was edited or rolled back, fails to
//! open. Every timeline change therefore re-seals the key (new data key).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use super::{Kek, KekError};
use crate::{
    crypto::{Algorithm, Kid, SigningKey, random_bytes},
    keyring::{RingName, Timeline},
    store::SealedBlob,
};

const MAGIC: &[u8; 4] = b"SGK1";
const CHECK_AAD: &[u8] = b"signet-kek-check-v1";
const CHECK_VALUE: [u8; 32] = *b"signet KEK check value, v1 .....";

/// Why a sealed key could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The KEK provider failed; the message says which and why.
    #[error(transparent)]
    Kek(KekError),
    /// The blob does not open for this record: altered, moved to another
    /// kid, or its timeline edited or rolled back.
    #[error("sealed record failed its integrity check")]
    Integrity,
}

impl From<KekError> for SealError {
    fn from(e: KekError) -> Self {
        match e {
            KekError::Integrity => SealError::Integrity,
            other => SealError::Kek(other),
        }
    }
}

/// What a sealed key is bound to.
#[derive(Clone, Copy, Debug)]
pub struct KeyContext<'a> {
    /// The ring the key belongs to.
    pub ring: &'a RingName,
    /// The key's id.
    pub kid: &'a Kid,
    /// The key's algorithm.
    pub alg: Algorithm,
    /// The key's timeline as stored with the blob.
    pub timeline: &'a Timeline,
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Length-prefixed, so no two contexts encode to the same bytes.
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl KeyContext<'_> {
    fn dek_aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        field(&mut out, b"signet-dek-v1");
        field(&mut out, self.ring.as_str().as_bytes());
        field(&mut out, self.kid.as_str().as_bytes());
        field(&mut out, self.alg.name().as_bytes());
        out
    }

    fn key_aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(192);
        field(&mut out, b"signet-key-v1");
        field(&mut out, self.ring.as_str().as_bytes());
        field(&mut out, self.kid.as_str().as_bytes());
        field(&mut out, self.alg.name().as_bytes());
        let t = self.timeline;
        let times = [
            Some(t.created_at),
            Some(t.publish_at),
            Some(t.activate_at),
            t.retire_at,
            t.remove_at,
            t.revoked_at,
        ];
        for time in times {
            match time {
                Some(time) => {
                    out.push(1);
                    out.extend_from_slice(&time.as_secs().to_be_bytes());
                }
                None => out.push(0),
            }
        }
        out
    }
}

fn aead(dek: &[u8; 32]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&AES_256_GCM, dek)
        .map(LessSafeKey::new)
        .map_err(|_| SealError::Kek(KekError::Unavailable("AES-256-GCM unavailable".into())))
}

fn no_rng(_: crate::crypto::CryptoError) -> SealError {
    SealError::Kek(KekError::Unavailable(
        "the system random generator failed".into(),
    ))
}

/// Seals `key` for the record described by `ctx` under a fresh data key.
pub async fn seal(
    kek: &dyn Kek,
    ctx: KeyContext<'_>,
    key: &SigningKey,
) -> Result<SealedBlob, SealError> {
    let dek = Zeroizing::new(random_bytes::<32>().map_err(no_rng)?);
    let wrapped = kek.wrap(&dek, &ctx.dek_aad()).await?;
    let nonce = random_bytes::<NONCE_LEN>().map_err(no_rng)?;
    let pkcs8 = key.to_pkcs8().map_err(|_| SealError::Integrity)?;
    // The buffer holds plaintext until sealed in place; wipe it either way.
    // Room for the tag from the start: appending it to a full Vec would
    // reallocate and free the plaintext copy unwiped.
    let tag_len = AES_256_GCM.tag_len();
    let mut body = Zeroizing::new(Vec::with_capacity(pkcs8.len() + tag_len));
    body.extend_from_slice(&pkcs8);
    drop(pkcs8);
    aead(&dek)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(ctx.key_aad()),
            &mut *body,
        )
        .map_err(|_| SealError::Integrity)?;
    let wrapped_len = u16::try_from(wrapped.len()).map_err(|_| {
        SealError::Kek(KekError::Unavailable(
            "the KEK returned an oversized wrapped key".into(),
        ))
    })?;
    let mut out = Vec::with_capacity(4 + 2 + wrapped.len() + NONCE_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&wrapped_len.to_be_bytes());
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(SealedBlob(out))
}

struct Parts<'a> {
    wrapped: &'a [u8],
    nonce: &'a [u8],
    body: &'a [u8],
}

fn split(blob: &SealedBlob) -> Result<Parts<'_>, SealError> {
    let rest = blob.0.strip_prefix(MAGIC).ok_or(SealError::Integrity)?;
    let (len, rest) = rest.split_at_checked(2).ok_or(SealError::Integrity)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let (wrapped, rest) = rest.split_at_checked(len).ok_or(SealError::Integrity)?;
    let (nonce, body) = rest
        .split_at_checked(NONCE_LEN)
        .ok_or(SealError::Integrity)?;
    Ok(Parts {
        wrapped,
        nonce,
        body,
    })
}

/// Opens a blob made by [`seal`] for the same record. The opened key must
/// also have the kid the record names.
pub async fn open(
    kek: &dyn Kek,
    ctx: KeyContext<'_>,
    blob: &SealedBlob,
) -> Result<SigningKey, SealError> {
    let parts = split(blob)?;
    let dek = kek.unwrap(parts.wrapped, &ctx.dek_aad()).await?;
    let nonce = Nonce::try_assume_unique_for_key(parts.nonce).map_err(|_| SealError::Integrity)?;
    let mut body = Zeroizing::new(parts.body.to_vec());
    let pkcs8 = aead(&dek)?
        .open_in_place(nonce, Aad::from(ctx.key_aad()), &mut body)
        .map_err(|_| SealError::Integrity)?;
    let key = SigningKey::from_pkcs8(ctx.alg, pkcs8).map_err(|_| SealError::Integrity)?;
    if &key.kid() != ctx.kid {
        return Err(SealError::Integrity);
    }
    Ok(key)
}

/// Re-wraps a blob's data key from `old` to `new` without touching the
/// sealed private key.
pub async fn rewrap(
    old: &dyn Kek,
    new: &dyn Kek,
    ctx: KeyContext<'_>,
    blob: &SealedBlob,
) -> Result<SealedBlob, SealError> {
    let parts = split(blob)?;
    let aad = ctx.dek_aad();
    let dek = old.unwrap(parts.wrapped, &aad).await?;
    let wrapped = new.wrap(&dek, &aad).await?;
    let wrapped_len = u16::try_from(wrapped.len()).map_err(|_| SealError::Integrity)?;
    let mut out = Vec::with_capacity(blob.0.len() + wrapped.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&wrapped_len.to_be_bytes());
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(parts.nonce);
    out.extend_from_slice(parts.body);
    Ok(SealedBlob(out))
}

/// A new KEK check value: a known value wrapped under `kek`.
pub async fn make_check(kek: &dyn Kek) -> Result<Vec<u8>, KekError> {
    kek.wrap(&CHECK_VALUE, CHECK_AAD).await
}

/// Whether `check` opens under `kek` (the right KEK for this store).
pub async fn verify_check(kek: &dyn Kek, check: &[u8]) -> Result<bool, KekError> {
    match kek.unwrap(check, CHECK_AAD).await {
        Ok(v) => Ok(*v == CHECK_VALUE),
        Err(KekError::Integrity) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::UnixTime, crypto::KeySpec, seal::LocalKek};

    fn kek(dir: &std::path::Path, name: &str) -> LocalKek {
        let path = dir.join(name);
        LocalKek::create_file(&path).unwrap();
        LocalKek::from_file(&path).unwrap()
    }

    #[tokio::test]
    async fn round_trip_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (kek(dir.path(), "a"), kek(dir.path(), "b"));
        let key = SigningKey::generate(KeySpec::new(Algorithm::Es256, 0).unwrap()).unwrap();
        let ring = RingName::parse("r", "r").unwrap();
        let other_ring = RingName::parse("s", "r").unwrap();
        let kid = key.kid();
        let tl = Timeline::immediate(UnixTime::from_secs(100));
        let ctx = KeyContext {
            ring: &ring,
            kid: &kid,
            alg: Algorithm::Es256,
            timeline: &tl,
        };
        let blob = seal(&k1, ctx, &key).await.unwrap();
        assert_eq!(open(&k1, ctx, &blob).await.unwrap().kid(), kid);

        let mut later = tl;
        later.retire_at = Some(UnixTime::from_secs(200));
        let cases = [
            KeyContext {
                timeline: &later,
                ..ctx
            },
            KeyContext {
                ring: &other_ring,
                ..ctx
            },
            KeyContext {
                alg: Algorithm::Rs256,
                ..ctx
            },
        ];
        for c in cases {
            assert!(
                matches!(open(&k1, c, &blob).await, Err(SealError::Integrity)),
                "{c:?}"
            );
        }
        assert!(matches!(
            open(&k2, ctx, &blob).await,
            Err(SealError::Integrity)
        ));

        let moved = rewrap(&k1, &k2, ctx, &blob).await.unwrap();
        assert_eq!(open(&k2, ctx, &moved).await.unwrap().kid(), kid);
        assert!(open(&k1, ctx, &moved).await.is_err());

        let check = make_check(&k1).await.unwrap();
        assert!(verify_check(&k1, &check).await.unwrap());
        assert!(!verify_check(&k2, &check).await.unwrap());
    }

    #[tokio::test]
    async fn kek_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        LocalKek::create_file(&path).unwrap();
        assert!(
            LocalKek::create_file(&path).is_err(),
            "never overwrites a KEK"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = LocalKek::from_file(&path).err().unwrap().to_string();
        assert!(e.contains("readable by group or others (mode 640)"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        let e = LocalKek::from_file(&path).err().unwrap().to_string();
        assert!(e.contains("exactly 32 random bytes, found 5"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Flipping any bit of a sealed record makes it fail to open.
        #[test]
        fn any_flipped_byte_fails(pos in 0usize..4096, bit in 0u8..8) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let k = kek(dir.path(), "k");
                let key = SigningKey::generate(KeySpec::new(Algorithm::EdDsa, 0).unwrap()).unwrap();
                let ring = RingName::parse("r", "r").unwrap();
                let kid = key.kid();
                let tl = Timeline::immediate(UnixTime::from_secs(1));
                let ctx = KeyContext { ring: &ring, kid: &kid, alg: Algorithm::EdDsa, timeline: &tl };
                let mut blob = seal(&k, ctx, &key).await.unwrap();
                let i = pos % blob.0.len();
                blob.0[i] ^= 1 << bit;
                assert!(matches!(open(&k, ctx, &blob).await, Err(SealError::Integrity)));
            });
        }
    }
}
