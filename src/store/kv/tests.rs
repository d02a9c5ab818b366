//! KvStore against the contract suite, and cut short at every step.
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::store::contract;

#[tokio::test]
async fn kv_store_keeps_the_contract() {
    let store = KvStore::open(MemoryKv::new(), "kv-memory").await.unwrap();
    contract::run_all(&store).await;
    // Keys stay sealed in the backend's strongest protection.
    for (key, wrapped) in store.backend().keys() {
        if key.starts_with(BLOBS) || key == AUDIT_KEY {
            assert!(wrapped, "{key} must be stored with seal_wrap");
        }
    }
}

/// A backend whose puts and deletes fail after `budget` of them: a
/// crash at that point of a write.
struct Crashing {
    kv: MemoryKv,
    budget: AtomicUsize,
}

impl Crashing {
    fn spend(&self) -> Result<(), StoreError> {
        let ok = self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_ok();
        if ok {
            Ok(())
        } else {
            Err(StoreError::Unavailable("crashed".into()))
        }
    }
}

#[async_trait]
impl KvBackend for Crashing {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(key).await
    }
    async fn put(&self, key: &str, value: &[u8], wrap: bool) -> Result<(), StoreError> {
        self.spend()?;
        self.kv.put(key, value, wrap).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.spend()?;
        self.kv.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.kv.list(prefix).await
    }
}

fn ring(keys: Vec<KeyRecord>) -> RingRecord {
    RingRecord {
        name: RingName::parse("crash", "name").unwrap(),
        spec: KeySpec::new(Algorithm::EdDsa, 0).unwrap(),
        policy: Policy::default(),
        generation: 0,
        keys,
        manifest: Some(b"m1".to_vec()),
    }
}

/// A write cut short after any number of its puts and deletes leaves
/// the ring as it was before or as it is after, never a mixture, and
/// every key the loaded ring names has its sealed blob.
#[tokio::test]
async fn a_crash_at_any_step_leaves_the_old_ring_or_the_new() {
    for budget in 0..8 {
        let store = KvStore::open(
            Crashing {
                kv: MemoryKv::new(),
                budget: AtomicUsize::new(usize::MAX),
            },
            "kv-memory",
        )
        .await
        .unwrap();
        store
            .create_ring(&ring(vec![contract::key_record(100)]))
            .await
            .unwrap();
        let before = store.load().await.unwrap();
        let mut retimed = before[0].keys[0].clone();
        retimed.timeline.retire_at = Some(crate::clock::UnixTime::from_secs(500));
        retimed.sealed = Some(SealedBlob(b"resealed".to_vec()));
        let update = RingUpdate {
            ring: before[0].name.clone(),
            expected_generation: 1,
            insert: vec![contract::key_record(200)],
            update: vec![retimed],
            policy: None,
            manifest: Some(b"m2".to_vec()),
        };
        store.kv.budget.store(budget, Ordering::SeqCst);
        let result = store.update_ring(&update).await;
        store.kv.budget.store(usize::MAX, Ordering::SeqCst);
        let after = store.load().await.unwrap();
        match result {
            Ok(_) => {
                assert_eq!(after[0].generation, 2, "budget {budget}");
                assert_eq!(after[0].manifest.as_deref(), Some(&b"m2"[..]));
            }
            Err(_) if after[0].generation == 1 => assert_eq!(after, before),
            Err(_) => {
                // Committed; only the clean-up after the commit failed.
                assert_eq!(after[0].keys.len(), 2, "budget {budget}");
            }
        }
    }
}
