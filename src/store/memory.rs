//! A store that keeps everything in process memory. Nothing survives a
//! restart; for tests and for running before durable storage is configured.

use std::{collections::BTreeMap, sync::Mutex};

use async_trait::async_trait;

use super::{KeyStore, RingRecord, RingUpdate, StoreError};
use crate::keyring::RingName;

/// An in-memory [`KeyStore`].
///
/// A std `Mutex` is enough: every critical section is a few map operations
/// with no `.await` inside, so it is never held across a suspension point.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    rings: BTreeMap<RingName, RingRecord>,
    kek_check: Option<Vec<u8>>,
    audit_key: Option<Vec<u8>>,
    anchors: BTreeMap<String, Vec<u8>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a ring half-updated:
        // updates are validated first and applied by whole-value assignment.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn load(&self) -> Result<Vec<RingRecord>, StoreError> {
        Ok(self.lock().rings.values().cloned().collect())
    }

    async fn create_ring(&self, ring: &RingRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let rings = &mut inner.rings;
        if rings.contains_key(&ring.name) {
            return Err(StoreError::RingExists(ring.name.clone()));
        }
        let mut stored = ring.clone();
        stored.generation = 1;
        rings.insert(ring.name.clone(), stored);
        Ok(())
    }

    async fn update_ring(&self, update: &RingUpdate) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let rings = &mut inner.rings;
        let current = rings
            .get(&update.ring)
            .ok_or_else(|| StoreError::RingNotFound(update.ring.clone()))?;
        if current.generation != update.expected_generation {
            return Err(StoreError::Conflict(update.ring.clone()));
        }
        // Build the new record completely before replacing the old one.
        let mut next = current.clone();
        for key in &update.insert {
            if next.keys.iter().any(|k| k.kid == key.kid) {
                return Err(StoreError::KidReused {
                    ring: update.ring.clone(),
                    kid: key.kid.clone(),
                });
            }
            next.keys.push(key.clone());
        }
        for changed in &update.update {
            let key = next
                .keys
                .iter_mut()
                .find(|k| k.kid == changed.kid)
                .ok_or_else(|| StoreError::KidNotFound {
                    ring: update.ring.clone(),
                    kid: changed.kid.clone(),
                })?;
            key.timeline = changed.timeline;
            key.sealed = changed.sealed.clone();
            key.reason = changed.reason.clone();
            if changed.request_id.is_some() {
                key.request_id = changed.request_id.clone();
            }
        }
        if let Some(policy) = update.policy.clone() {
            next.policy = policy;
        }
        if let Some(manifest) = &update.manifest {
            next.manifest = Some(manifest.clone());
        }
        next.generation += 1;
        let generation = next.generation;
        rings.insert(update.ring.clone(), next);
        Ok(generation)
    }

    async fn kek_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().kek_check.clone())
    }

    async fn init_kek_check(&self, check: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.kek_check.is_some() {
            return Err(StoreError::KekCheckExists);
        }
        inner.kek_check = Some(check.to_vec());
        Ok(())
    }

    async fn audit_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().audit_key.clone())
    }

    async fn audit_anchor(&self, log: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().anchors.get(log).cloned())
    }

    async fn set_audit_anchor(&self, log: &str, value: &[u8]) -> Result<(), StoreError> {
        self.lock().anchors.insert(log.to_owned(), value.to_vec());
        Ok(())
    }

    async fn init_audit_key(&self, wrapped: &[u8]) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .lock()
            .audit_key
            .get_or_insert_with(|| wrapped.to_vec())
            .clone())
    }

    async fn rekey(
        &self,
        check: &[u8],
        audit_key: Option<&[u8]>,
        rings: &[RingRecord],
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.audit_key.is_some() != audit_key.is_some() {
            return Err(StoreError::AuditKeyChanged);
        }
        // Validate everything before changing anything.
        let mut next = inner.rings.clone();
        for ring in rings {
            let cur = next
                .get_mut(&ring.name)
                .ok_or_else(|| StoreError::RingNotFound(ring.name.clone()))?;
            if cur.generation != ring.generation {
                return Err(StoreError::Conflict(ring.name.clone()));
            }
            for key in &ring.keys {
                let stored = cur
                    .keys
                    .iter_mut()
                    .find(|k| k.kid == key.kid)
                    .ok_or_else(|| StoreError::KidNotFound {
                        ring: ring.name.clone(),
                        kid: key.kid.clone(),
                    })?;
                stored.timeline = key.timeline;
                stored.sealed = key.sealed.clone();
            }
            if let Some(manifest) = &ring.manifest {
                cur.manifest = Some(manifest.clone());
            }
            cur.generation += 1;
        }
        if let Some(missing) = inner
            .rings
            .keys()
            .find(|name| !rings.iter().any(|r| &r.name == *name))
        {
            return Err(StoreError::Conflict(missing.clone()));
        }
        inner.rings = next;
        inner.kek_check = Some(check.to_vec());
        inner.audit_key = audit_key.map(<[u8]>::to_vec);
        Ok(())
    }
}
