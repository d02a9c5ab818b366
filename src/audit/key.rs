//! [`AuditKey`]: the HMAC key for digests of sensitive values in audit lines.

use aws_lc_rs::hmac;
use zeroize::Zeroizing;

/// The key under which audit lines carry HMAC-SHA256 digests of sensitive
/// values (the claims, the `sub` claim) instead of the values themselves.
///
/// An auditor who holds the key can check whether a given claims set or
/// subject appears in the log; anyone else learns nothing from the digests.
///
/// # Obtaining it
///
/// The key is 32 random bytes generated once per store and kept there
/// sealed under the KEK exactly like a data key: `kek.wrap(&key,
/// AuditKey::WRAP_AAD)` when it is created, `kek.unwrap(&wrapped,
/// AuditKey::WRAP_AAD)` at unseal, then [`AuditKey::from_bytes`]. Because the
/// KEK only wraps and unwraps, this works when the KEK lives in an HSM that
/// never releases it. The caller (the unseal path) does that part; this
/// module only uses the key. A rekey re-wraps the same bytes, so digests stay
/// comparable across KEK rotations.
///
/// A secret type: wiped on drop; no `Debug`, `Display`, `Clone` or
/// `Serialize`.
pub struct AuditKey {
    key: Zeroizing<[u8; 32]>,
    /// The HMAC state keyed once (its inner and outer pads hashed), so a
    /// digest costs only the message: two per audited Sign. aws-lc wipes
    /// it on drop (`HMAC_CTX_cleanup` cleanses the whole context), like
    /// the bytes above.
    hmac: hmac::Key,
}

impl AuditKey {
    /// The associated data to wrap and unwrap the audit key with, so a
    /// wrapped data key can never be opened as the audit key or vice versa.
    pub const WRAP_AAD: &'static [u8] = b"signet-audit-key-v1";

    /// Takes ownership of the 32 key bytes (see the type's docs for where
    /// they come from).
    pub fn from_bytes(key: Zeroizing<[u8; 32]>) -> Self {
        let hmac = hmac::Key::new(hmac::HMAC_SHA256, key.as_slice());
        Self { key, hmac }
    }

    /// The checkpoint signing key of this store, derived from this key
    /// (see [`CheckpointSigner`](super::CheckpointSigner)).
    pub fn checkpoint_signer(&self) -> super::CheckpointSigner {
        super::CheckpointSigner::derive(&self.key)
    }

    /// The key ring manifests are tagged with, derived from this key (see
    /// `keyring::manifest`).
    pub(crate) fn manifest_key(&self) -> crate::keyring::manifest::ManifestKey {
        crate::keyring::manifest::ManifestKey::derive(&self.key)
    }

    /// The lowercase hex HMAC-SHA256 of `value` under this key: stable for
    /// the same key and value, unrelated across keys.
    pub fn hmac_hex(&self, value: &[u8]) -> String {
        hex::encode(hmac::sign(&self.hmac, value).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    /// HMAC-SHA256 from its definition (RFC 2104), with an independent
    /// SHA-256, as the known answer.
    fn reference_hmac(key: &[u8; 32], msg: &[u8]) -> String {
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(key);
        let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(msg)
            .finalize();
        let outer = Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize();
        hex::encode(outer)
    }

    #[test]
    fn hmac_is_stable_and_keyed() {
        let k1 = AuditKey::from_bytes(Zeroizing::new([7u8; 32]));
        let k2 = AuditKey::from_bytes(Zeroizing::new([8u8; 32]));
        let value = br#"{"sub":"alice"}"#;
        let d = k1.hmac_hex(value);
        assert_eq!(d, reference_hmac(&[7u8; 32], value));
        assert_eq!(d.len(), 64);
        assert_eq!(d, k1.hmac_hex(value), "stable");
        assert_ne!(d, k2.hmac_hex(value), "differs per key");
        assert_ne!(d, k1.hmac_hex(b"alice"), "differs per value");
    }
}
