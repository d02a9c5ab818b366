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
    rings: Mutex<BTreeMap<RingName, RingRecord>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<RingName, RingRecord>> {
        // A panic while holding the lock cannot leave a ring half-updated:
        // updates are validated first and applied by whole-value assignment.
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn load(&self) -> Result<Vec<RingRecord>, StoreError> {
        Ok(self.lock().values().cloned().collect())
    }

    async fn create_ring(&self, ring: &RingRecord) -> Result<(), StoreError> {
        let mut rings = self.lock();
        if rings.contains_key(&ring.name) {
            return Err(StoreError::RingExists(ring.name.clone()));
        }
        let mut stored = ring.clone();
        stored.generation = 1;
        rings.insert(ring.name.clone(), stored);
        Ok(())
    }

    async fn update_ring(&self, update: &RingUpdate) -> Result<u64, StoreError> {
        let mut rings = self.lock();
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
        for (kid, timeline) in &update.timelines {
            let key = next
                .keys
                .iter_mut()
                .find(|k| &k.kid == kid)
                .ok_or_else(|| StoreError::KidNotFound {
                    ring: update.ring.clone(),
                    kid: kid.clone(),
                })?;
            key.timeline = *timeline;
        }
        next.generation += 1;
        let generation = next.generation;
        rings.insert(update.ring.clone(), next);
        Ok(generation)
    }
}
