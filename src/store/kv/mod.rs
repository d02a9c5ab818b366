//! The [`KeyStore`] contract written once over a plain key-value store
//! ([`KvBackend`]: get, put, delete, list), the way Vault's logical layer
//! sits on its physical backends. OpenBao's plugin storage is one such
//! backend (`plugin::storage`); [`MemoryKv`] is another, for tests.
//!
//! A key-value store has no transactions, so every write is ordered to
//! make the one `put` of a ring record the commit point:
//!
//! 1. writes are serialised in this process (one writer lock);
//! 2. new sealed blobs are written first, each under a fresh, never reused
//!    key (`blobs/RING/KID/RANDOM`, write-once, `seal_wrap` set);
//! 3. the ring record (`rings/RING`: public keys, timelines, the blob key of
//!    each key) is written last: the commit;
//! 4. blobs the new record no longer names are deleted after it.
//!
//! A crash at any point leaves the old record or the new one; at worst some
//! blobs that no record names, which [`KeyStore::load`] never reads. A
//! rekey changes every ring and the KEK check value together, which no
//! single `put` covers: it writes its whole outcome as one journal record
//! (`rekey`) first, then applies it; [`KvStore::open`] finishes a journal a
//! crash left behind.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde::{Deserialize, Serialize};

use super::{KeyRecord, KeyStore, RingRecord, RingUpdate, SealedBlob, StoreError};
use crate::{
    crypto::{Algorithm, Jwk, KeySpec, Kid},
    keyring::{Policy, RingName, Timeline},
};

/// A key-value store: flat string keys, byte values.
#[async_trait]
pub trait KvBackend: Send + Sync + 'static {
    /// The value under `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `value` under `key`, replacing any value. `seal_wrap` asks the
    /// backend for its strongest protection (OpenBao: seal wrapping).
    async fn put(&self, key: &str, value: &[u8], seal_wrap: bool) -> Result<(), StoreError>;
    /// Removes `key`; removing a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// The names one level below `prefix` (which ends in `/`): keys, and
    /// folders ending in `/`, without the prefix.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
}

const RINGS: &str = "rings/";
const BLOBS: &str = "blobs/";
const ANCHORS: &str = "anchors/";
const KEK_CHECK: &str = "kek-check";
const AUDIT_KEY: &str = "audit-key";
const JOURNAL: &str = "rekey";

/// A ring as stored: the record with each sealed blob replaced by the key
/// it is stored under.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredRing {
    name: RingName,
    alg: String,
    rsa_bits: u32,
    policy: Policy,
    generation: u64,
    keys: Vec<StoredKey>,
    /// The ring's sealed manifest (opaque here), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manifest: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredKey {
    kid: Kid,
    jwk: Jwk,
    timeline: Timeline,
    /// Where the sealed blob is; `None` once the material is destroyed.
    blob: Option<String>,
    reason: Option<String>,
    request_id: Option<String>,
}

/// A rekey's complete outcome, written before any of it is applied.
#[derive(Serialize, Deserialize)]
struct Journal {
    check: String,
    audit_key: Option<String>,
    rings: Vec<StoredRing>,
    /// Blobs the rekey replaced, deleted once it is applied.
    stale_blobs: Vec<String>,
}

/// A [`KeyStore`] over any [`KvBackend`].
pub struct KvStore<B> {
    kv: B,
    kind: &'static str,
    /// One writer at a time in this process: reads of the current record
    /// and the writes that depend on them never interleave.
    writer: tokio::sync::Mutex<()>,
}

impl<B: KvBackend> KvStore<B> {
    /// Opens the store over `kv`, finishing a rekey a crash interrupted.
    /// `kind` is what [`KeyStore::kind`] reports.
    pub async fn open(kv: B, kind: &'static str) -> Result<Self, StoreError> {
        let store = Self {
            kv,
            kind,
            writer: tokio::sync::Mutex::new(()),
        };
        if let Some(bytes) = store.kv.get(JOURNAL).await? {
            let journal: Journal = decode(JOURNAL, &bytes)?;
            tracing::warn!("finishing a rekey that was interrupted");
            store.apply(journal).await?;
        }
        Ok(store)
    }

    /// The backend, for the plugin's own small records.
    pub fn backend(&self) -> &B {
        &self.kv
    }

    async fn stored(&self, name: &RingName) -> Result<Option<StoredRing>, StoreError> {
        match self.kv.get(&ring_key(name)).await? {
            Some(bytes) => decode(name.as_str(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|_| StoreError::Unavailable(format!("cannot encode {key}")))?;
        self.kv.put(key, &bytes, false).await
    }

    /// Writes `sealed` under a fresh key of its own and returns that key.
    async fn put_blob(
        &self,
        ring: &RingName,
        kid: &Kid,
        sealed: &SealedBlob,
    ) -> Result<String, StoreError> {
        let suffix = crate::crypto::random_bytes::<12>()
            .map_err(|_| StoreError::Unavailable("no randomness for a blob key".into()))?;
        let key = format!("{BLOBS}{ring}/{}/{}", kid.as_str(), hex::encode(suffix));
        self.kv.put(&key, &sealed.0, true).await?;
        Ok(key)
    }

    async fn stored_key(&self, ring: &RingName, key: &KeyRecord) -> Result<StoredKey, StoreError> {
        let blob = match &key.sealed {
            Some(sealed) => Some(self.put_blob(ring, &key.kid, sealed).await?),
            None => None,
        };
        Ok(StoredKey {
            kid: key.kid.clone(),
            jwk: key.jwk.clone(),
            timeline: key.timeline,
            blob,
            reason: key.reason.clone(),
            request_id: key.request_id.clone(),
        })
    }

    /// Deletes blobs no record names any more. A failure leaves an orphan,
    /// which nothing reads: logged, not returned.
    async fn drop_blobs(&self, blobs: impl IntoIterator<Item = String>) {
        for blob in blobs {
            if let Err(e) = self.kv.delete(&blob).await {
                tracing::warn!(error = %e, blob, "could not delete a replaced sealed blob");
            }
        }
    }

    async fn record(&self, stored: StoredRing) -> Result<RingRecord, StoreError> {
        let bad = |what: &str| super::columns::corrupt(self.kind, stored.name.as_str(), None, what);
        let alg: Algorithm = stored.alg.parse().map_err(|_| bad("unknown algorithm"))?;
        let spec = KeySpec::new(alg, stored.rsa_bits).map_err(|_| bad("invalid key spec"))?;
        let mut keys = Vec::with_capacity(stored.keys.len());
        for k in stored.keys {
            let sealed = match &k.blob {
                Some(blob) => Some(SealedBlob(self.kv.get(blob).await?.ok_or_else(|| {
                    super::columns::corrupt(
                        self.kind,
                        stored.name.as_str(),
                        Some(&k.kid),
                        "sealed blob missing",
                    )
                })?)),
                None => None,
            };
            keys.push(KeyRecord {
                kid: k.kid,
                jwk: k.jwk,
                timeline: k.timeline,
                sealed,
                reason: k.reason,
                request_id: k.request_id,
            });
        }
        let manifest = match &stored.manifest {
            Some(m) => Some(B64.decode(m).map_err(|_| bad("corrupt manifest"))?),
            None => None,
        };
        Ok(RingRecord {
            name: stored.name,
            spec,
            policy: stored.policy,
            generation: stored.generation,
            keys,
            manifest,
        })
    }

    /// Applies a rekey journal (idempotent), then removes it.
    async fn apply(&self, journal: Journal) -> Result<(), StoreError> {
        for ring in &journal.rings {
            self.put_json(&ring_key(&ring.name), ring).await?;
        }
        self.kv
            .put(KEK_CHECK, &b64_decode(&journal.check)?, false)
            .await?;
        if let Some(audit) = &journal.audit_key {
            self.kv.put(AUDIT_KEY, &b64_decode(audit)?, true).await?;
        }
        self.kv.delete(JOURNAL).await?;
        self.drop_blobs(journal.stale_blobs).await;
        Ok(())
    }
}

fn ring_key(name: &RingName) -> String {
    format!("{RINGS}{name}")
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|_| StoreError::Unavailable(format!("corrupt record {what:?}")))
}

fn b64_decode(s: &str) -> Result<Vec<u8>, StoreError> {
    B64.decode(s)
        .map_err(|_| StoreError::Unavailable("corrupt rekey journal".into()))
}

#[async_trait]
impl<B: KvBackend> KeyStore for KvStore<B> {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn load(&self) -> Result<Vec<RingRecord>, StoreError> {
        let mut out = Vec::new();
        for name in self.kv.list(RINGS).await? {
            if name.ends_with('/') {
                continue;
            }
            let name = RingName::parse(&name, "name")
                .map_err(|_| super::columns::corrupt(self.kind, &name, None, "invalid name"))?;
            // Listed but gone: deleted between the two calls; nothing does.
            if let Some(stored) = self.stored(&name).await? {
                out.push(self.record(stored).await?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create_ring(&self, ring: &RingRecord) -> Result<(), StoreError> {
        let _w = self.writer.lock().await;
        if self.stored(&ring.name).await?.is_some() {
            return Err(StoreError::RingExists(ring.name.clone()));
        }
        let mut keys = Vec::with_capacity(ring.keys.len());
        for key in &ring.keys {
            keys.push(self.stored_key(&ring.name, key).await?);
        }
        let stored = StoredRing {
            name: ring.name.clone(),
            alg: ring.spec.alg().name().to_owned(),
            rsa_bits: ring.spec.rsa_bits(),
            policy: ring.policy.clone(),
            generation: 1,
            keys,
            manifest: ring.manifest.as_ref().map(|m| B64.encode(m)),
        };
        self.put_json(&ring_key(&ring.name), &stored).await
    }

    async fn update_ring(&self, update: &RingUpdate) -> Result<u64, StoreError> {
        let _w = self.writer.lock().await;
        let mut next = self
            .stored(&update.ring)
            .await?
            .ok_or_else(|| StoreError::RingNotFound(update.ring.clone()))?;
        if next.generation != update.expected_generation {
            return Err(StoreError::Conflict(update.ring.clone()));
        }
        // Check everything before writing anything.
        let mut seen: BTreeSet<&Kid> = next.keys.iter().map(|k| &k.kid).collect();
        for key in &update.insert {
            if !seen.insert(&key.kid) {
                return Err(StoreError::KidReused {
                    ring: update.ring.clone(),
                    kid: key.kid.clone(),
                });
            }
        }
        for changed in &update.update {
            if !next.keys.iter().any(|k| k.kid == changed.kid) {
                return Err(StoreError::KidNotFound {
                    ring: update.ring.clone(),
                    kid: changed.kid.clone(),
                });
            }
        }
        let mut stale = Vec::new();
        for changed in &update.update {
            let blob = match &changed.sealed {
                Some(sealed) => Some(self.put_blob(&update.ring, &changed.kid, sealed).await?),
                None => None,
            };
            // Checked above: every updated kid is in the ring.
            if let Some(key) = next.keys.iter_mut().find(|k| k.kid == changed.kid) {
                stale.extend(std::mem::replace(&mut key.blob, blob));
                key.timeline = changed.timeline;
                key.reason = changed.reason.clone();
                if changed.request_id.is_some() {
                    key.request_id = changed.request_id.clone();
                }
            }
        }
        for key in &update.insert {
            let stored = self.stored_key(&update.ring, key).await?;
            next.keys.push(stored);
        }
        if let Some(policy) = &update.policy {
            next.policy = policy.clone();
        }
        if let Some(manifest) = &update.manifest {
            next.manifest = Some(B64.encode(manifest));
        }
        next.generation += 1;
        self.put_json(&ring_key(&update.ring), &next).await?;
        self.drop_blobs(stale).await;
        Ok(next.generation)
    }

    async fn kek_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(KEK_CHECK).await
    }

    async fn init_kek_check(&self, check: &[u8]) -> Result<(), StoreError> {
        let _w = self.writer.lock().await;
        if self.kv.get(KEK_CHECK).await?.is_some() {
            return Err(StoreError::KekCheckExists);
        }
        self.kv.put(KEK_CHECK, check, false).await
    }

    async fn audit_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(AUDIT_KEY).await
    }

    async fn init_audit_key(&self, wrapped: &[u8]) -> Result<Vec<u8>, StoreError> {
        let _w = self.writer.lock().await;
        if let Some(existing) = self.kv.get(AUDIT_KEY).await? {
            return Ok(existing);
        }
        self.kv.put(AUDIT_KEY, wrapped, true).await?;
        Ok(wrapped.to_vec())
    }

    async fn audit_anchor(&self, log: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(&format!("{ANCHORS}{}", hex::encode(log))).await
    }

    async fn set_audit_anchor(&self, log: &str, value: &[u8]) -> Result<(), StoreError> {
        self.kv
            .put(&format!("{ANCHORS}{}", hex::encode(log)), value, false)
            .await
    }

    async fn rekey(
        &self,
        check: &[u8],
        audit_key: Option<&[u8]>,
        rings: &[RingRecord],
    ) -> Result<(), StoreError> {
        let _w = self.writer.lock().await;
        if self.kv.get(AUDIT_KEY).await?.is_some() != audit_key.is_some() {
            return Err(StoreError::AuditKeyChanged);
        }
        let mut current = BTreeMap::new();
        for name in self.kv.list(RINGS).await? {
            if let Ok(name) = RingName::parse(&name, "name")
                && let Some(stored) = self.stored(&name).await?
            {
                current.insert(name, stored);
            }
        }
        // Validate everything before writing anything.
        for ring in rings {
            let cur = current
                .get(&ring.name)
                .ok_or_else(|| StoreError::RingNotFound(ring.name.clone()))?;
            if cur.generation != ring.generation {
                return Err(StoreError::Conflict(ring.name.clone()));
            }
            if let Some(k) = ring
                .keys
                .iter()
                .find(|k| !cur.keys.iter().any(|c| c.kid == k.kid))
            {
                return Err(StoreError::KidNotFound {
                    ring: ring.name.clone(),
                    kid: k.kid.clone(),
                });
            }
        }
        if let Some(missing) = current
            .keys()
            .find(|n| !rings.iter().any(|r| &r.name == *n))
        {
            return Err(StoreError::Conflict(missing.clone()));
        }
        let mut stale = Vec::new();
        let mut next = Vec::new();
        for ring in rings {
            let Some(mut stored) = current.remove(&ring.name) else {
                continue; // Checked above: every listed ring is stored.
            };
            for key in &ring.keys {
                let blob = match &key.sealed {
                    Some(sealed) => Some(self.put_blob(&ring.name, &key.kid, sealed).await?),
                    None => None,
                };
                if let Some(k) = stored.keys.iter_mut().find(|k| k.kid == key.kid) {
                    stale.extend(std::mem::replace(&mut k.blob, blob));
                    k.timeline = key.timeline;
                }
            }
            stored.generation += 1;
            if let Some(manifest) = &ring.manifest {
                stored.manifest = Some(B64.encode(manifest));
            }
            next.push(stored);
        }
        let journal = Journal {
            check: B64.encode(check),
            audit_key: audit_key.map(|a| B64.encode(a)),
            rings: next,
            stale_blobs: stale,
        };
        let bytes = serde_json::to_vec(&journal)
            .map_err(|_| StoreError::Unavailable("cannot encode the rekey journal".into()))?;
        self.kv.put(JOURNAL, &bytes, true).await?;
        self.apply(journal).await
    }
}

/// A [`KvBackend`] in process memory, with the listing semantics of
/// OpenBao's storage. For tests.
#[derive(Debug, Default)]
pub struct MemoryKv {
    map: std::sync::Mutex<BTreeMap<String, (Vec<u8>, bool)>>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Vec<u8>, bool)>> {
        // Each critical section is one map operation: nothing half-done.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every key with whether it was stored seal-wrapped.
    pub fn keys(&self) -> Vec<(String, bool)> {
        self.lock()
            .iter()
            .map(|(k, (_, wrap))| (k.clone(), *wrap))
            .collect()
    }
}

#[async_trait]
impl KvBackend for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(key).map(|(v, _)| v.clone()))
    }

    async fn put(&self, key: &str, value: &[u8], seal_wrap: bool) -> Result<(), StoreError> {
        self.lock()
            .insert(key.to_owned(), (value.to_vec(), seal_wrap));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.lock().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut out = BTreeSet::new();
        for key in self.lock().keys() {
            if let Some(rest) = key.strip_prefix(prefix) {
                match rest.find('/') {
                    Some(i) => out.insert(rest[..=i].to_owned()),
                    None => out.insert(rest.to_owned()),
                };
            }
        }
        Ok(out.into_iter().collect())
    }
}

#[cfg(test)]
mod tests;
