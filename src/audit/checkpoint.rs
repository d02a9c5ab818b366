//! Signed checkpoints: what lets anyone holding the public key alone verify
//! an audit log offline.
//!
//! The hash chain proves order, not authorship: whoever can write the file
//! can edit a line and recompute every later hash. So at short intervals the
//! writer appends a *signed* record (`audit.checkpoint`) whose Ed25519
//! signature covers its own seq and time, `prev` (the hash of the line
//! before it, and through the chain every line before that) and
//! `checkpoint_prev` (the hash of the previous signed record). Resync
//! markers (`audit.resync`) and accepted gaps (`audit.gap`) are signed the
//! same way, so none can be forged to explain away deleted lines.
//!
//! The signed bytes are a plain text any language can rebuild
//! ([`signed_bytes`]):
//!
//! ```text
//! signet-audit-v1\n{rpc}\n{seq}\n{time}\n{prev}\n{checkpoint_prev}\n{reason}\n
//! ```
//!
//! The signing key is derived (HKDF-SHA256, its own label) from the store's
//! audit key, which is sealed under the KEK and re-wrapped by `operator
//! rekey`: one signing key per store, never stored in clear, never exported.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ed25519_dalek::{
    Signer as _, Verifier as _,
    pkcs8::{DecodePublicKey, EncodePublicKey, spki::der::pem::LineEnding},
};

use super::record::{AuditRecord, RESYNC_RPC};

/// The `rpc` of a checkpoint record.
pub const CHECKPOINT_RPC: &str = "audit.checkpoint";

/// The `rpc` of an accepted gap (`signet audit accept-gap`).
pub const GAP_RPC: &str = "audit.gap";

/// Whether records of `rpc` carry a signature.
pub fn is_signed_kind(rpc: &str) -> bool {
    rpc == CHECKPOINT_RPC || rpc == RESYNC_RPC || rpc == GAP_RPC
}

/// The bytes a signed record's signature covers (see the module docs).
pub fn signed_bytes(rec: &AuditRecord) -> Vec<u8> {
    format!(
        "signet-audit-v1\n{}\n{}\n{}\n{}\n{}\n{}\n",
        rec.rpc,
        rec.seq,
        rec.time,
        rec.prev,
        rec.checkpoint_prev.as_deref().unwrap_or_default(),
        rec.reason.as_deref().unwrap_or_default()
    )
    .into_bytes()
}

/// The audit signing key. A secret type: wiped on drop (ed25519-dalek's
/// `zeroize`), no `Debug`, `Clone` or `Serialize`.
pub struct CheckpointSigner {
    key: ed25519_dalek::SigningKey,
}

/// The HKDF label of the signing key, so it is independent of the HMAC key
/// it is derived from.
const SIGNING_INFO: &[u8] = b"signet-audit-checkpoint-ed25519-v1";

impl CheckpointSigner {
    /// Derives the signing key from the audit key's bytes.
    pub(super) fn derive(root: &[u8; 32]) -> Self {
        use aws_lc_rs::hkdf;
        struct Len;
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                32
            }
        }
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"").extract(root);
        // 32 bytes is far below HKDF-SHA256's limit (255 * 32), the one
        // thing expand and fill can fail on.
        let filled = prk
            .expand(&[SIGNING_INFO], Len)
            .and_then(|okm| okm.fill(seed.as_mut_slice()));
        debug_assert!(filled.is_ok());
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// The public half, for verifiers.
    pub fn public(&self) -> CheckpointKey {
        CheckpointKey(self.key.verifying_key())
    }

    /// Signs `rec` (see [`signed_bytes`]): base64url without padding.
    pub fn sign(&self, rec: &AuditRecord) -> String {
        B64.encode(self.key.sign(&signed_bytes(rec)).to_bytes())
    }
}

/// The public audit signing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointKey(ed25519_dalek::VerifyingKey);

impl CheckpointKey {
    /// SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn to_pem(&self) -> String {
        self.0.to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// An OKP JWK (RFC 8037) with `use: sig`, `alg: EdDSA`.
    pub fn to_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": B64.encode(self.0.as_bytes()),
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// Reads a key given as SPKI PEM or as an Ed25519 JWK.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with('{') {
            let jwk: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("not a JWK: {e}"))?;
            if jwk["kty"] != "OKP" || jwk["crv"] != "Ed25519" {
                return Err("the JWK is not an Ed25519 (OKP) key".into());
            }
            let x = jwk["x"]
                .as_str()
                .and_then(|x| B64.decode(x).ok())
                .and_then(|x| <[u8; 32]>::try_from(x).ok())
                .ok_or("the JWK's x is not 32 base64url bytes")?;
            return ed25519_dalek::VerifyingKey::from_bytes(&x)
                .map(Self)
                .map_err(|_| "the JWK's x is not an Ed25519 point".into());
        }
        ed25519_dalek::VerifyingKey::from_public_key_pem(text)
            .map(Self)
            .map_err(|e| format!("not an Ed25519 public key PEM: {e}"))
    }

    /// Whether `rec`'s signature is valid under this key.
    pub fn verify(&self, rec: &AuditRecord) -> bool {
        let Some(sig) = rec
            .sig
            .as_deref()
            .and_then(|s| B64.decode(s).ok())
            .and_then(|s| <[u8; 64]>::try_from(s).ok())
        else {
            return false;
        };
        self.0
            .verify(
                &signed_bytes(rec),
                &ed25519_dalek::Signature::from_bytes(&sig),
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;

    #[test]
    fn signatures_cover_every_signed_field_and_keys_round_trip() {
        let signer = CheckpointSigner::derive(&[7; 32]);
        let mut rec = AuditRecord {
            seq: 12,
            time: "2026-12-01T00:00:00.000Z".into(),
            prev: "ab".repeat(32),
            checkpoint_prev: Some("cd".repeat(32)),
            ..AuditRecord::new(CHECKPOINT_RPC, Outcome::Ok, "OK")
        };
        rec.sig = Some(signer.sign(&rec));
        let public = signer.public();
        assert!(public.verify(&rec));
        for parsed in [
            CheckpointKey::parse(&public.to_pem()).unwrap(),
            CheckpointKey::parse(&public.to_jwk().to_string()).unwrap(),
        ] {
            assert_eq!(parsed, public);
        }
        let tampered = [
            AuditRecord {
                seq: 13,
                ..rec.clone()
            },
            AuditRecord {
                prev: "00".repeat(32),
                ..rec.clone()
            },
            AuditRecord {
                checkpoint_prev: None,
                ..rec.clone()
            },
            AuditRecord {
                reason: Some("x".into()),
                ..rec.clone()
            },
            AuditRecord {
                rpc: RESYNC_RPC.into(),
                ..rec.clone()
            },
            AuditRecord {
                time: "2027-01-01T00:00:00.000Z".into(),
                ..rec.clone()
            },
        ];
        for t in tampered {
            assert!(!public.verify(&t), "{t:?}");
        }
        let other = CheckpointSigner::derive(&[8; 32]).public();
        assert!(!other.verify(&rec), "another store's key");
        assert_ne!(
            CheckpointSigner::derive(&[7; 32]).public(),
            other,
            "derived per store"
        );
    }

    #[test]
    fn signed_bytes_are_the_documented_text() {
        let rec = AuditRecord {
            seq: 3,
            time: "T".into(),
            prev: "P".into(),
            reason: Some("R".into()),
            ..AuditRecord::new(GAP_RPC, Outcome::Ok, "OK")
        };
        assert_eq!(
            signed_bytes(&rec),
            b"signet-audit-v1\naudit.gap\n3\nT\nP\n\nR\n".to_vec()
        );
    }
}
