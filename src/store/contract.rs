//! The behaviour every [`KeyStore`] must show, written once and run against
//! each implementation (`tests/store_contract.rs`). Each check panics with a
//! message naming the broken rule.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{KeyRecord, KeyStore, RingRecord, RingUpdate, StoreError};
use crate::{
    clock::UnixTime,
    crypto::{Algorithm, KeySpec, SigningKey},
    keyring::{Policy, RingName, Timeline},
};

/// Runs every contract check against `store`, which must be empty.
pub async fn run_all(store: &dyn KeyStore) {
    create_then_load(store).await;
    duplicate_ring_refused(store).await;
    update_applies_and_bumps_generation(store).await;
    stale_generation_conflicts_and_changes_nothing(store).await;
    kid_never_reused(store).await;
    failed_update_is_atomic(store).await;
    unknown_ring(store).await;
}

/// A fresh public record for `ring` (generates a real Ed25519 key).
pub fn key_record(at: i64) -> KeyRecord {
    let spec = KeySpec::new(Algorithm::EdDsa, 0).unwrap();
    let key = SigningKey::generate(spec).unwrap();
    KeyRecord {
        kid: key.kid(),
        jwk: key.jwk().clone(),
        timeline: Timeline::immediate(UnixTime::from_secs(at)),
    }
}

fn ring(name: &str, keys: Vec<KeyRecord>) -> RingRecord {
    RingRecord {
        name: RingName::parse(name, "name").unwrap(),
        spec: KeySpec::new(Algorithm::EdDsa, 0).unwrap(),
        policy: Policy::default(),
        generation: 0,
        keys,
    }
}

async fn get(store: &dyn KeyStore, name: &str) -> RingRecord {
    store
        .load()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.name.as_str() == name)
        .unwrap_or_else(|| panic!("ring {name} not loaded"))
}

async fn create_then_load(store: &dyn KeyStore) {
    let r = ring("c-load", vec![key_record(100)]);
    store.create_ring(&r).await.unwrap();
    let got = get(store, "c-load").await;
    assert_eq!(got.generation, 1, "a new ring starts at generation 1");
    assert_eq!(got.keys, r.keys, "keys round-trip exactly");
    assert_eq!(got.spec, r.spec);
    assert_eq!(got.policy, r.policy);
}

async fn duplicate_ring_refused(store: &dyn KeyStore) {
    let r = ring("c-dup", vec![key_record(1)]);
    store.create_ring(&r).await.unwrap();
    let again = store.create_ring(&ring("c-dup", vec![key_record(2)])).await;
    assert!(matches!(again, Err(StoreError::RingExists(_))), "{again:?}");
    assert_eq!(
        get(store, "c-dup").await.keys,
        r.keys,
        "first ring untouched"
    );
}

async fn update_applies_and_bumps_generation(store: &dyn KeyStore) {
    let first = key_record(10);
    store
        .create_ring(&ring("c-upd", vec![first.clone()]))
        .await
        .unwrap();
    let second = key_record(20);
    let mut retired = first.timeline;
    retired.retire_at = Some(UnixTime::from_secs(20));
    retired.remove_at = Some(UnixTime::from_secs(30));
    let g = store
        .update_ring(&RingUpdate {
            ring: RingName::parse("c-upd", "n").unwrap(),
            expected_generation: 1,
            insert: vec![second.clone()],
            timelines: vec![(first.kid.clone(), retired)],
        })
        .await
        .unwrap();
    assert_eq!(g, 2);
    let got = get(store, "c-upd").await;
    assert_eq!(got.generation, 2);
    assert_eq!(got.keys.len(), 2);
    assert_eq!(got.keys[0].timeline, retired, "timeline updated");
    assert_eq!(got.keys[1], second, "new key appended after the old one");
}

async fn stale_generation_conflicts_and_changes_nothing(store: &dyn KeyStore) {
    store
        .create_ring(&ring("c-cas", vec![key_record(1)]))
        .await
        .unwrap();
    let before = get(store, "c-cas").await;
    let r = store
        .update_ring(&RingUpdate {
            ring: before.name.clone(),
            expected_generation: 7,
            insert: vec![key_record(2)],
            timelines: vec![],
        })
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    assert_eq!(
        get(store, "c-cas").await,
        before,
        "a lost CAS writes nothing"
    );
}

async fn kid_never_reused(store: &dyn KeyStore) {
    let k = key_record(1);
    store
        .create_ring(&ring("c-kid", vec![k.clone()]))
        .await
        .unwrap();
    let r = store
        .update_ring(&RingUpdate {
            ring: RingName::parse("c-kid", "n").unwrap(),
            expected_generation: 1,
            insert: vec![k],
            timelines: vec![],
        })
        .await;
    assert!(matches!(r, Err(StoreError::KidReused { .. })), "{r:?}");
    assert_eq!(get(store, "c-kid").await.generation, 1);
}

async fn failed_update_is_atomic(store: &dyn KeyStore) {
    store
        .create_ring(&ring("c-atom", vec![key_record(1)]))
        .await
        .unwrap();
    let before = get(store, "c-atom").await;
    // A valid insert followed by a timeline change for a kid that does not
    // exist: the whole update must fail and the insert must not land.
    let r = store
        .update_ring(&RingUpdate {
            ring: before.name.clone(),
            expected_generation: 1,
            insert: vec![key_record(2)],
            timelines: vec![(
                crate::crypto::Kid::new("no-such-kid"),
                Timeline::immediate(UnixTime::from_secs(3)),
            )],
        })
        .await;
    assert!(matches!(r, Err(StoreError::KidNotFound { .. })), "{r:?}");
    assert_eq!(
        get(store, "c-atom").await,
        before,
        "nothing of a failed update lands"
    );
}

async fn unknown_ring(store: &dyn KeyStore) {
    let r = store
        .update_ring(&RingUpdate {
            ring: RingName::parse("c-none", "n").unwrap(),
            expected_generation: 1,
            insert: vec![],
            timelines: vec![],
        })
        .await;
    assert!(matches!(r, Err(StoreError::RingNotFound(_))), "{r:?}");
}
