//! The behaviour every [`KeyStore`] must show, written once and run against
//! each implementation (`tests/integration/store_contract.rs`). Each check panics with a
//! message naming the broken rule.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{KeyRecord, KeyStore, RingRecord, RingUpdate, SealedBlob, StoreError};
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
    destroyed_material_is_gone_and_kid_stays_reserved(store).await;
    policy_and_reason_change_with_the_generation(store).await;
    manifest_is_kept_with_its_ring(store).await;
    kek_check_is_written_once(store).await;
    audit_key_is_written_once(store).await;
    audit_anchors_are_replaced_per_log(store).await;
    rekey_replaces_blobs_and_check_atomically(store).await;
}

async fn manifest_is_kept_with_its_ring(store: &dyn KeyStore) {
    let name = RingName::parse("c-manifest", "n").unwrap();
    let mut r = ring("c-manifest", vec![key_record(1)]);
    r.manifest = Some(b"manifest-1".to_vec());
    store.create_ring(&r).await.unwrap();
    let got = get(store, "c-manifest").await;
    assert_eq!(
        got.manifest.as_deref(),
        Some(&b"manifest-1"[..]),
        "created with its manifest"
    );

    let update = |expected, manifest: Option<&[u8]>| RingUpdate {
        ring: name.clone(),
        expected_generation: expected,
        insert: vec![],
        update: vec![],
        policy: None,
        manifest: manifest.map(<[u8]>::to_vec),
    };
    store
        .update_ring(&update(1, Some(b"manifest-2")))
        .await
        .unwrap();
    assert_eq!(
        get(store, "c-manifest").await.manifest.as_deref(),
        Some(&b"manifest-2"[..]),
        "an update replaces the manifest with its generation"
    );
    store.update_ring(&update(2, None)).await.unwrap();
    assert_eq!(
        get(store, "c-manifest").await.manifest.as_deref(),
        Some(&b"manifest-2"[..]),
        "an update without one leaves it"
    );
    let lost = store.update_ring(&update(1, Some(b"stale"))).await;
    assert!(matches!(lost, Err(StoreError::Conflict(_))), "{lost:?}");
    let got = get(store, "c-manifest").await;
    assert_eq!(
        (got.generation, got.manifest.as_deref()),
        (3, Some(&b"manifest-2"[..])),
        "a lost compare-and-swap writes no manifest"
    );
}

async fn audit_key_is_written_once(store: &dyn KeyStore) {
    assert_eq!(store.audit_key().await.unwrap(), None);
    assert_eq!(store.init_audit_key(b"first").await.unwrap(), b"first");
    assert_eq!(
        store.init_audit_key(b"second").await.unwrap(),
        b"first",
        "a second writer gets the first key"
    );
    assert_eq!(
        store.audit_key().await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
}

async fn audit_anchors_are_replaced_per_log(store: &dyn KeyStore) {
    assert_eq!(store.audit_anchor("host-a:/a.log").await.unwrap(), None);
    store
        .set_audit_anchor("host-a:/a.log", b"7 aa")
        .await
        .unwrap();
    store
        .set_audit_anchor("host-b:/a.log", b"3 bb")
        .await
        .unwrap();
    store
        .set_audit_anchor("host-a:/a.log", b"9 cc")
        .await
        .unwrap();
    assert_eq!(
        store
            .audit_anchor("host-a:/a.log")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"9 cc"[..]),
        "the latest anchor replaces the one before"
    );
    assert_eq!(
        store
            .audit_anchor("host-b:/a.log")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"3 bb"[..]),
        "each log has its own"
    );
}

/// A fresh public record for `ring` (generates a real Ed25519 key).
pub fn key_record(at: i64) -> KeyRecord {
    let spec = KeySpec::new(Algorithm::EdDsa, 0).unwrap();
    let key = SigningKey::generate(spec).unwrap();
    KeyRecord {
        kid: key.kid(),
        jwk: key.jwk().clone(),
        timeline: Timeline::immediate(UnixTime::from_secs(at)),
        sealed: Some(SealedBlob(format!("sealed-{at}").into_bytes())),
        reason: Some(format!("created at {at}")),
        request_id: Some(format!("request-{at}")),
    }
}

fn ring(name: &str, keys: Vec<KeyRecord>) -> RingRecord {
    RingRecord {
        name: RingName::parse(name, "name").unwrap(),
        spec: KeySpec::new(Algorithm::EdDsa, 0).unwrap(),
        policy: Policy::default(),
        generation: 0,
        keys,
        manifest: None,
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
    let mut retired = first.clone();
    retired.timeline.retire_at = Some(UnixTime::from_secs(20));
    retired.timeline.remove_at = Some(UnixTime::from_secs(30));
    retired.sealed = Some(SealedBlob(b"resealed".to_vec()));
    let g = store
        .update_ring(&RingUpdate {
            policy: None,
            manifest: None,
            ring: RingName::parse("c-upd", "n").unwrap(),
            expected_generation: 1,
            insert: vec![second.clone()],
            update: vec![retired.clone()],
        })
        .await
        .unwrap();
    assert_eq!(g, 2);
    let got = get(store, "c-upd").await;
    assert_eq!(got.generation, 2);
    assert_eq!(got.keys.len(), 2);
    assert_eq!(got.keys[0], retired, "timeline and sealed blob updated");
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
            policy: None,
            manifest: None,
            ring: before.name.clone(),
            expected_generation: 7,
            insert: vec![key_record(2)],
            update: vec![],
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
            policy: None,
            manifest: None,
            ring: RingName::parse("c-kid", "n").unwrap(),
            expected_generation: 1,
            insert: vec![k],
            update: vec![],
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
            policy: None,
            manifest: None,
            ring: before.name.clone(),
            expected_generation: 1,
            insert: vec![key_record(2)],
            update: vec![KeyRecord {
                kid: crate::crypto::Kid::new("no-such-kid"),
                ..key_record(3)
            }],
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
            policy: None,
            manifest: None,
            ring: RingName::parse("c-none", "n").unwrap(),
            expected_generation: 1,
            insert: vec![],
            update: vec![],
        })
        .await;
    assert!(matches!(r, Err(StoreError::RingNotFound(_))), "{r:?}");
}

async fn destroyed_material_is_gone_and_kid_stays_reserved(store: &dyn KeyStore) {
    let k = key_record(1);
    store
        .create_ring(&ring("c-tomb", vec![k.clone()]))
        .await
        .unwrap();
    let destroyed = KeyRecord {
        sealed: None,
        ..k.clone()
    };
    store
        .update_ring(&RingUpdate {
            policy: None,
            manifest: None,
            ring: RingName::parse("c-tomb", "n").unwrap(),
            expected_generation: 1,
            insert: vec![],
            update: vec![destroyed.clone()],
        })
        .await
        .unwrap();
    let got = get(store, "c-tomb").await;
    assert_eq!(
        got.keys,
        vec![destroyed],
        "tombstone keeps kid and public key, no blob"
    );
    let r = store
        .update_ring(&RingUpdate {
            policy: None,
            manifest: None,
            ring: got.name.clone(),
            expected_generation: 2,
            insert: vec![k],
            update: vec![],
        })
        .await;
    assert!(matches!(r, Err(StoreError::KidReused { .. })), "{r:?}");
}

/// Runs first on a fresh store: the check value starts unset.
async fn kek_check_is_written_once(store: &dyn KeyStore) {
    assert_eq!(
        store.kek_check().await.unwrap(),
        None,
        "a new store has no check value"
    );
    store.init_kek_check(b"check-1").await.unwrap();
    let again = store.init_kek_check(b"check-2").await;
    assert!(
        matches!(again, Err(StoreError::KekCheckExists)),
        "{again:?}"
    );
    assert_eq!(
        store.kek_check().await.unwrap().as_deref(),
        Some(&b"check-1"[..])
    );
}

async fn rekey_replaces_blobs_and_check_atomically(store: &dyn KeyStore) {
    store
        .create_ring(&ring("c-rekey-a", vec![key_record(1)]))
        .await
        .unwrap();
    store
        .create_ring(&ring("c-rekey-b", vec![key_record(2)]))
        .await
        .unwrap();
    let before_check = store.kek_check().await.unwrap();
    let mut a = get(store, "c-rekey-a").await;
    let mut b = get(store, "c-rekey-b").await;
    a.keys[0].sealed = Some(SealedBlob(b"rewrapped-a".to_vec()));
    b.keys[0].sealed = Some(SealedBlob(b"rewrapped-b".to_vec()));
    // A stale generation on one ring: nothing at all may change.
    let mut stale = b.clone();
    stale.generation = 99;
    let with_stale: Vec<_> = others(store)
        .await
        .into_iter()
        .chain([a.clone(), stale])
        .collect();
    let audit = Some(&b"rewrapped-audit"[..]);
    let r = store.rekey(b"new-check", audit, &with_stale).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    assert_eq!(store.kek_check().await.unwrap(), before_check);
    assert_eq!(
        store.audit_key().await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
    assert_ne!(
        get(store, "c-rekey-a").await.keys,
        a.keys,
        "no blob replaced"
    );

    // Leaving a ring out would strand its blobs under the old KEK.
    let partial: Vec<_> = others(store).await.into_iter().chain([a.clone()]).collect();
    let r = store.rekey(b"new-check", audit, &partial).await;
    assert!(
        matches!(r, Err(StoreError::Conflict(ref n)) if n.as_str() == "c-rekey-b"),
        "{r:?}"
    );
    assert_eq!(store.kek_check().await.unwrap(), before_check);

    let all: Vec<_> = others(store)
        .await
        .into_iter()
        .chain([a.clone(), b.clone()])
        .collect();
    // The store holds an audit key: a rekey must re-wrap it too.
    let r = store.rekey(b"new-check", None, &all).await;
    assert!(matches!(r, Err(StoreError::AuditKeyChanged)), "{r:?}");
    assert_eq!(store.kek_check().await.unwrap(), before_check);
    assert_ne!(get(store, "c-rekey-a").await.keys, a.keys);

    let manifest_before = get(store, "c-rekey-a").await.manifest;
    let mut all = all;
    for ring in &mut all {
        if ring.name.as_str() == "c-rekey-a" {
            ring.manifest = Some(b"manifest after rekey".to_vec());
        }
    }
    assert_ne!(
        manifest_before.as_deref(),
        Some(&b"manifest after rekey"[..])
    );
    store.rekey(b"new-check", audit, &all).await.unwrap();
    assert_eq!(store.audit_key().await.unwrap().as_deref(), audit);
    assert_eq!(
        get(store, "c-rekey-a").await.manifest.as_deref(),
        Some(&b"manifest after rekey"[..]),
        "a rekey writes the manifest given for the new generation"
    );
    assert_eq!(
        store.kek_check().await.unwrap().as_deref(),
        Some(&b"new-check"[..])
    );
    let got_a = get(store, "c-rekey-a").await;
    assert_eq!(got_a.keys, a.keys);
    assert_eq!(got_a.generation, a.generation + 1);
    assert_eq!(get(store, "c-rekey-b").await.keys, b.keys);
}

/// Every ring but the rekey test's own, as stored (rekey must list them all).
async fn others(store: &dyn KeyStore) -> Vec<RingRecord> {
    store
        .load()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.name.as_str().starts_with("c-rekey"))
        .collect()
}

async fn policy_and_reason_change_with_the_generation(store: &dyn KeyStore) {
    let k = key_record(1);
    store
        .create_ring(&ring("c-policy", vec![k.clone()]))
        .await
        .unwrap();
    let policy = Policy {
        rotation_period: std::time::Duration::from_secs(30 * 86_400),
        ..Policy::default()
    };
    let revised = KeyRecord {
        reason: Some("compromised laptop".into()),
        ..k.clone()
    };
    store
        .update_ring(&RingUpdate {
            ring: RingName::parse("c-policy", "n").unwrap(),
            expected_generation: 1,
            insert: vec![],
            update: vec![revised.clone()],
            policy: Some(policy.clone()),
            manifest: None,
        })
        .await
        .unwrap();
    let got = get(store, "c-policy").await;
    assert_eq!(got.policy, policy, "policy stored with the update");
    assert_eq!(
        got.keys,
        vec![revised.clone()],
        "reason stored with the key"
    );
    assert_eq!(got.generation, 2);

    // The request id is written at insert only: an update leaves it.
    let without_id = KeyRecord {
        request_id: None,
        ..revised.clone()
    };
    store
        .update_ring(&RingUpdate {
            ring: RingName::parse("c-policy", "n").unwrap(),
            expected_generation: 2,
            insert: vec![],
            update: vec![without_id],
            policy: None,
            manifest: None,
        })
        .await
        .unwrap();
    let got = get(store, "c-policy").await;
    assert_eq!(
        got.keys,
        vec![revised.clone()],
        "request id kept from the insert"
    );
    assert_eq!(k.request_id.as_deref(), Some("request-1"));

    // A given request id replaces it (a promoted successor's).
    let promoted = KeyRecord {
        request_id: Some("promote-1".into()),
        ..revised
    };
    store
        .update_ring(&RingUpdate {
            ring: RingName::parse("c-policy", "n").unwrap(),
            expected_generation: 3,
            insert: vec![],
            update: vec![promoted.clone()],
            policy: None,
            manifest: None,
        })
        .await
        .unwrap();
    let got = get(store, "c-policy").await;
    assert_eq!(got.keys, vec![promoted], "a given request id is stored");
}
