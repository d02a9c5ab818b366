//! The KeyStore contract suite, run against every store implementation.

use std::sync::Arc;

use signet::{
    crypto::{Algorithm, KeySpec},
    keyring::{Policy, RingName},
    store::{KeyStore, RingRecord, RingUpdate, SealedBlob, SqliteStore, StoreError, contract},
};

/// A ring of two fresh keys. Outside a `#[test]`, so clippy's test allowance
/// does not cover the unwraps of these constant, valid inputs.
#[allow(clippy::unwrap_used)]
fn ring(name: &str) -> RingRecord {
    RingRecord {
        name: RingName::parse(name, "name").unwrap(),
        spec: KeySpec::new(Algorithm::EdDsa, 0).unwrap(),
        policy: Policy::default(),
        generation: 0,
        keys: vec![contract::key_record(100), contract::key_record(200)],
    }
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    let store = signet::store::MemoryStore::new();
    contract::run_all(&store).await;
}

#[tokio::test]
async fn sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("signet.db"))
        .await
        .unwrap();
    assert_eq!(store.kind(), "sqlite");
    contract::run_all(&store).await;
}

#[tokio::test]
async fn sqlite_store_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signet.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.create_ring(&ring("persist")).await.unwrap();
    store.init_kek_check(b"check").await.unwrap();
    let before = store.load().await.unwrap();
    drop(store);

    let reopened = SqliteStore::open(&path).await.unwrap();
    assert_eq!(reopened.load().await.unwrap(), before);
    assert_eq!(before[0].keys.len(), 2, "keys survive, oldest first");
    assert_eq!(
        reopened.kek_check().await.unwrap().as_deref(),
        Some(&b"check"[..])
    );
}

#[tokio::test]
async fn sqlite_schema_migration_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signet.db");
    let first = SqliteStore::open(&path).await.unwrap();
    first.create_ring(&ring("migrated")).await.unwrap();
    // Opening again (while the first store is still open, as a second
    // process would) finds the schema current and changes nothing.
    let second = SqliteStore::open(&path).await.unwrap();
    assert_eq!(second.load().await.unwrap(), first.load().await.unwrap());
    first.close().await;
    drop(first);
    let third = SqliteStore::open(&path).await.unwrap();
    assert_eq!(third.load().await.unwrap().len(), 1);
}

#[cfg(unix)]
#[tokio::test]
async fn sqlite_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signet.db");
    let _store = SqliteStore::open(&path).await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o} opens the file to others");
}

/// Concurrent writers to one ring, through two stores on the same file as
/// two replicas would: exactly one update wins, every other one is told it
/// lost the race (never "database is locked").
#[tokio::test]
async fn sqlite_concurrent_updates_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signet.db");
    let a = Arc::new(SqliteStore::open(&path).await.unwrap());
    let b = Arc::new(SqliteStore::open(&path).await.unwrap());
    a.create_ring(&ring("race")).await.unwrap();

    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                store
                    .update_ring(&RingUpdate {
                        policy: None,
                        ring: RingName::parse("race", "n").unwrap(),
                        expected_generation: 1,
                        insert: vec![contract::key_record(1000 + i)],
                        update: vec![],
                    })
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(generation) => {
                assert_eq!(generation, 2);
                won += 1;
            }
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("a losing writer must see Conflict, got {e:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one writer wins");
    let stored = b.load().await.unwrap();
    assert_eq!(stored[0].generation, 2);
    assert_eq!(stored[0].keys.len(), 3, "only the winner's key landed");
}

/// A destroyed blob must not linger on disk, in the database file or its
/// WAL, while the store stays open.
#[tokio::test]
async fn sqlite_destroyed_blob_leaves_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signet.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let marker = b"DESTROY-ME-4f1c9a".repeat(4);
    let mut key = contract::key_record(1);
    key.sealed = Some(SealedBlob(marker.clone()));
    let mut r = ring("destroy");
    r.keys = vec![key.clone()];
    store.create_ring(&r).await.unwrap();
    key.sealed = None;
    store
        .update_ring(&RingUpdate {
            policy: None,
            ring: r.name.clone(),
            expected_generation: 1,
            insert: vec![],
            update: vec![key],
        })
        .await
        .unwrap();

    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "destroyed blob still in {:?}",
            entry.file_name()
        );
    }
    assert_eq!(store.load().await.unwrap()[0].keys[0].sealed, None);
}

/// A row that no longer decodes is reported as the store being unavailable,
/// naming the ring, rather than loaded half-understood.
#[tokio::test]
async fn sqlite_corrupt_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signet.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.create_ring(&ring("damaged")).await.unwrap();

    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
    let raw = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::query("UPDATE rings SET alg = 'HS256' WHERE name = 'damaged'")
        .execute(&raw)
        .await
        .unwrap();

    match store.load().await {
        Err(StoreError::Unavailable(msg)) => {
            assert!(msg.contains("corrupt") && msg.contains("damaged"), "{msg}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
