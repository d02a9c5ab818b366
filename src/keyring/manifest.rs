//! The sealed manifest of a ring: what the store says about a ring, vouched
//! for by a key only an unsealed Signet holds.
//!
//! Key blobs are sealed, but the rows around them are not: someone who can
//! write the database could restore a revoked key's earlier row (its old
//! blob still opens under the KEK with its old timeline), lengthen a
//! policy's token lifetime, or roll a whole ring back to a backup. The
//! manifest closes that: it lists the ring's generation, key spec, policy
//! and every key's kid, timeline and tombstone, and carries an HMAC-SHA256
//! tag under the *manifest key* with the ring's name bound in. The key
//! manager writes a new manifest in the same store transaction as every
//! change (so it describes exactly the generation it is stored with) and
//! trusts the rows only as far as the manifest vouches for them:
//!
//! - a key row the manifest does not list is ignored and reported;
//! - a row whose timeline or tombstone differs, a policy or spec that
//!   differs, a generation that differs, or a tag that does not verify:
//!   the ring is *refused* (Sign answers DATA_LOSS naming the ring);
//! - a manifest older than one this process (or, through
//!   [`Generations`], this data directory) has already seen: refused as a
//!   rollback;
//! - the policy must also pass the hard rules ([`Policy::validate`]).
//!
//! # The manifest key
//!
//! Derived (HKDF-SHA256, its own label) from the store's audit key, which
//! is 32 random bytes generated once per store and kept there wrapped by
//! the KEK. So it is sealed under the KEK like every key, loaded at Unseal,
//! dropped at Seal, and a rekey (which re-wraps the same bytes) leaves it
//! unchanged. Without the KEK nobody can write a manifest that verifies.
//!
//! # Format
//!
//! `JSON || TAG`: the manifest as JSON, then 32 bytes of
//! `HMAC-SHA256(key, "signet-ring-manifest-v1" || 0x00 || ring || 0x00 || JSON)`.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Policy, Timeline};
use crate::{crypto::Kid, store::RingRecord};

/// The HKDF label of the manifest key.
const KEY_INFO: &[u8] = b"signet ring manifest key v1";
/// The domain separator inside every tag.
const TAG_DOMAIN: &[u8] = b"signet-ring-manifest-v1";
/// HMAC-SHA256's tag length.
const TAG_LEN: usize = 32;

/// The key manifests are tagged with. A secret: wiped on drop, no `Debug`,
/// `Clone` or `Serialize`.
pub struct ManifestKey {
    key: Zeroizing<[u8; 32]>,
}

impl ManifestKey {
    /// Derives the manifest key from the store's audit key bytes (see the
    /// module docs for why that root).
    pub(crate) fn derive(root: &[u8; 32]) -> Self {
        use aws_lc_rs::hkdf;
        struct Len;
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                32
            }
        }
        let mut key = Zeroizing::new([0u8; 32]);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"").extract(root);
        // 32 bytes is far below HKDF-SHA256's limit (255 * 32), the one
        // thing expand and fill can fail on.
        let filled = prk
            .expand(&[KEY_INFO], Len)
            .and_then(|okm| okm.fill(key.as_mut_slice()));
        debug_assert!(filled.is_ok());
        Self { key }
    }

    fn tag(&self, ring: &str, body: &[u8]) -> hmac::Tag {
        // Built per call from the wiped buffer, so the long-lived copy of
        // the key is only ours.
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.key.as_slice());
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(TAG_DOMAIN);
        ctx.update(&[0]);
        ctx.update(ring.as_bytes());
        ctx.update(&[0]);
        ctx.update(body);
        ctx.sign()
    }

    /// The sealed manifest describing `record` as it stands (its
    /// `generation` must be the one it will be stored with).
    pub(crate) fn seal(&self, record: &RingRecord) -> Vec<u8> {
        let manifest = Manifest::of(record);
        // A struct of strings, numbers and timelines always serialises.
        let mut out = serde_json::to_vec(&manifest).unwrap_or_default();
        let tag = self.tag(record.name.as_str(), &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Checks `record` (as loaded from the store) against its manifest.
    /// Returns the record reduced to what the manifest vouches for (rows it
    /// does not list removed) and the kids of the rows removed.
    pub(crate) fn check(&self, mut record: RingRecord) -> Result<Vetted, Refusal> {
        let sealed = record.manifest.as_deref().ok_or(Refusal::Missing)?;
        let split = sealed.len().checked_sub(TAG_LEN).ok_or(Refusal::Forged)?;
        let (body, tag) = sealed.split_at(split);
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, self.key.as_slice()),
            &[
                TAG_DOMAIN,
                &[0],
                record.name.as_str().as_bytes(),
                &[0],
                body,
            ]
            .concat(),
            tag,
        )
        .map_err(|_| Refusal::Forged)?;
        let m: Manifest = serde_json::from_slice(body).map_err(|_| Refusal::Forged)?;
        if m.v != 1 || m.ring != record.name.as_str() {
            return Err(Refusal::Forged);
        }
        let differs = |what: String| Err(Refusal::Differs(what));
        if m.generation != record.generation {
            return differs(format!(
                "the ring row says generation {}, its manifest {}",
                record.generation, m.generation
            ));
        }
        if m.alg != record.spec.alg().name() || m.rsa_bits != record.spec.rsa_bits() {
            return differs("the key algorithm or size".into());
        }
        if m.policy != record.policy {
            return differs("the policy".into());
        }
        let listed: HashSet<&str> = m.keys.iter().map(|k| k.kid.as_str()).collect();
        let ignored: Vec<Kid> = record
            .keys
            .iter()
            .filter(|k| !listed.contains(k.kid.as_str()))
            .map(|k| k.kid.clone())
            .collect();
        record.keys.retain(|k| listed.contains(k.kid.as_str()));
        for entry in &m.keys {
            let Some(row) = record.keys.iter().find(|k| k.kid.as_str() == entry.kid) else {
                if entry.destroyed {
                    continue; // a tombstone row gone: nothing to publish or sign
                }
                return differs(format!("key {} is missing", entry.kid));
            };
            if row.timeline != entry.timeline {
                return differs(format!("the timeline of key {}", entry.kid));
            }
            if entry.destroyed && row.sealed.is_some() {
                return differs(format!("key {} was destroyed but has material", entry.kid));
            }
            if !entry.destroyed && row.sealed.is_none() {
                return differs(format!("the material of key {} is missing", entry.kid));
            }
        }
        // Rows in manifest order, as the manager wrote them.
        record.keys.sort_by_key(|k| {
            m.keys
                .iter()
                .position(|e| e.kid == k.kid.as_str())
                .unwrap_or(usize::MAX)
        });
        record
            .policy
            .validate()
            .map_err(|e| Refusal::Differs(format!("the policy breaks a hard rule: {e}")))?;
        Ok(Vetted { record, ignored })
    }
}

/// A ring as its manifest vouches for it.
#[derive(Debug)]
pub(crate) struct Vetted {
    /// The record, without the rows the manifest does not list.
    pub record: RingRecord,
    /// The kids of the rows removed.
    pub ignored: Vec<Kid>,
}

/// Why a ring's stored state is not trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No manifest where one is required.
    #[error("its manifest is missing")]
    Missing,
    /// The tag does not verify, or the manifest does not parse or names
    /// another ring: written without the KEK.
    #[error("its manifest was not written by Signet (the tag does not verify)")]
    Forged,
    /// The rows differ from what the manifest lists.
    #[error("the stored rows differ from its manifest: {0}")]
    Differs(String),
    /// The manifest is older than one seen before.
    #[error("rolled back: generation {found} is older than generation {seen} seen before")]
    Rollback {
        /// The highest generation seen before.
        seen: u64,
        /// The generation found now.
        found: u64,
    },
}

impl Refusal {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Forged => "forged",
            Refusal::Differs(_) => "differs",
            Refusal::Rollback { .. } => "rollback",
        }
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Manifest {
    v: u32,
    ring: String,
    generation: u64,
    alg: String,
    rsa_bits: u32,
    policy: Policy,
    keys: Vec<Entry>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    kid: String,
    timeline: Timeline,
    destroyed: bool,
}

impl Manifest {
    fn of(r: &RingRecord) -> Self {
        Self {
            v: 1,
            ring: r.name.as_str().to_owned(),
            generation: r.generation,
            alg: r.spec.alg().name().to_owned(),
            rsa_bits: r.spec.rsa_bits(),
            policy: r.policy.clone(),
            keys: r
                .keys
                .iter()
                .map(|k| Entry {
                    kid: k.kid.as_str().to_owned(),
                    timeline: k.timeline,
                    destroyed: k.sealed.is_none(),
                })
                .collect(),
        }
    }
}

/// The highest manifest generation seen per ring, kept in a file in the
/// data directory so a rollback is caught across a restart too.
#[derive(Debug, Default)]
pub struct Generations {
    file: Option<PathBuf>,
    seen: BTreeMap<String, u64>,
}

impl Generations {
    /// The file's name inside the data directory.
    pub const FILE: &'static str = "ring-generations.json";

    /// Reads `file` (a missing file is an empty record). Fails on a file
    /// that exists but does not parse: starting without it would forget
    /// every rollback it guards against.
    pub fn open(file: &Path) -> Result<Self, String> {
        let seen = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{}: not a ring-generation record ({e}); restore it from a backup, or \
                     remove it to trust the store's current state",
                    file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        Ok(Self {
            file: Some(file.to_owned()),
            seen,
        })
    }

    /// The highest generation seen for `ring`.
    pub fn seen(&self, ring: &str) -> Option<u64> {
        self.seen.get(ring).copied()
    }

    /// Refuses `generation` of `ring` if an older one than already seen.
    pub(crate) fn check(&self, ring: &str, generation: u64) -> Result<(), Refusal> {
        match self.seen(ring) {
            Some(seen) if generation < seen => Err(Refusal::Rollback {
                seen,
                found: generation,
            }),
            _ => Ok(()),
        }
    }

    /// Records `generation` of `ring` as seen; returns whether it raised
    /// the mark (and the file must be written).
    pub(crate) fn raise(&mut self, ring: &str, generation: u64) -> bool {
        let entry = self.seen.entry(ring.to_owned()).or_insert(0);
        if generation > *entry {
            *entry = generation;
            true
        } else {
            false
        }
    }

    /// Forgets `ring`'s mark: after an operator restored the store from a
    /// backup on purpose.
    pub fn forget(&mut self, ring: &str) -> bool {
        self.seen.remove(ring).is_some()
    }

    /// Writes the record durably (temporary file, fsync, rename, fsync of
    /// the directory). A record without a file (tests, the memory store)
    /// lives in memory only.
    pub fn save(&self) -> std::io::Result<()> {
        use std::io::Write;
        let Some(file) = &self.file else {
            return Ok(());
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        let tmp = file.with_extension("json.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&self.seen).unwrap_or_default())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, file)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{
        clock::UnixTime,
        crypto::{Algorithm, KeySpec},
        keyring::RingName,
        store::{SealedBlob, contract::key_record},
    };

    fn ring() -> RingRecord {
        let mut old = key_record(100);
        old.timeline.retire_at = Some(UnixTime::from_secs(200));
        old.timeline.remove_at = Some(UnixTime::from_secs(300));
        old.sealed = None;
        RingRecord {
            name: RingName::parse("payments", "n").unwrap(),
            spec: KeySpec::new(Algorithm::EdDsa, 0).unwrap(),
            policy: Policy::default(),
            generation: 7,
            keys: vec![old, key_record(200)],
            manifest: None,
        }
    }

    fn sealed(key: &ManifestKey) -> RingRecord {
        let mut r = ring();
        r.manifest = Some(key.seal(&r));
        r
    }

    #[test]
    fn a_sealed_ring_checks_and_every_edit_is_refused() {
        let key = ManifestKey::derive(&[1; 32]);
        let good = sealed(&key);
        let vetted = key.check(good.clone()).unwrap();
        assert!(vetted.ignored.is_empty());
        assert_eq!(vetted.record.keys, good.keys);

        let mut policy = good.clone();
        policy.policy.max_token_ttl = std::time::Duration::from_secs(86_400 * 365);
        assert!(matches!(key.check(policy), Err(Refusal::Differs(m)) if m.contains("policy")));

        let mut timeline = good.clone();
        timeline.keys[1].timeline.remove_at = Some(UnixTime::from_secs(9_999_999));
        assert!(matches!(key.check(timeline), Err(Refusal::Differs(m)) if m.contains("timeline")));

        // The revoked key's earlier row: material back, old timeline.
        let mut restored = good.clone();
        restored.keys[0].sealed = Some(SealedBlob(b"old blob".to_vec()));
        restored.keys[0].timeline = ring().keys[0].timeline;
        restored.keys[0].timeline.retire_at = None;
        restored.keys[0].timeline.remove_at = None;
        assert!(matches!(key.check(restored), Err(Refusal::Differs(_))));
        let mut blob_only = good.clone();
        blob_only.keys[0].sealed = Some(SealedBlob(b"old blob".to_vec()));
        assert!(
            matches!(key.check(blob_only), Err(Refusal::Differs(m)) if m.contains("destroyed"))
        );

        let mut generation = good.clone();
        generation.generation = 8;
        assert!(
            matches!(key.check(generation), Err(Refusal::Differs(m)) if m.contains("generation"))
        );

        let mut renamed = good.clone();
        renamed.name = RingName::parse("other", "n").unwrap();
        assert_eq!(key.check(renamed).unwrap_err(), Refusal::Forged);

        let mut flipped = good.clone();
        if let Some(m) = flipped.manifest.as_mut() {
            m[3] ^= 1;
        }
        assert_eq!(key.check(flipped).unwrap_err(), Refusal::Forged);

        let other_key = ManifestKey::derive(&[2; 32]);
        assert_eq!(other_key.check(good.clone()).unwrap_err(), Refusal::Forged);

        let mut none = good;
        none.manifest = None;
        assert_eq!(key.check(none).unwrap_err(), Refusal::Missing);
    }

    #[test]
    fn a_row_the_manifest_does_not_list_is_ignored() {
        let key = ManifestKey::derive(&[1; 32]);
        let mut r = sealed(&key);
        let listed = r.keys.clone();
        let stray = key_record(400);
        r.keys.insert(1, stray.clone());
        let vetted = key.check(r).unwrap();
        assert_eq!(vetted.ignored, vec![stray.kid]);
        assert_eq!(vetted.record.keys, listed);
    }

    #[test]
    fn a_policy_beyond_the_hard_rules_is_refused_even_when_sealed() {
        let key = ManifestKey::derive(&[1; 32]);
        let mut r = ring();
        r.policy.max_token_ttl = std::time::Duration::from_secs(10 * 365 * 86_400);
        r.manifest = Some(key.seal(&r));
        assert!(matches!(key.check(r), Err(Refusal::Differs(m)) if m.contains("hard rule")));
    }

    #[test]
    fn generations_refuse_a_rollback_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(Generations::FILE);
        let mut g = Generations::open(&file).unwrap();
        assert!(g.raise("payments", 5));
        assert!(!g.raise("payments", 4), "never lowered");
        g.save().unwrap();
        let g = Generations::open(&file).unwrap();
        assert_eq!(g.seen("payments"), Some(5));
        assert!(g.check("payments", 5).is_ok());
        assert_eq!(
            g.check("payments", 3),
            Err(Refusal::Rollback { seen: 5, found: 3 })
        );
        std::fs::write(&file, b"not json").unwrap();
        assert!(Generations::open(&file).unwrap_err().contains("restore it"));
    }
}
