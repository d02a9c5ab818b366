//! The KeyStore contract suite, run against every store implementation.

use std::{future::Future, sync::Arc, time::Duration};

use crate::common::postgres;
use signet::{
    crypto::{Algorithm, KeySpec},
    keyring::{Policy, RingName},
    store::{
        KeyStore, PostgresStore, RingRecord, RingUpdate, SealedBlob, SqliteStore, StoreError,
        contract,
    },
};
use sqlx::Connection;

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
        manifest: None,
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
                        manifest: None,
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
            manifest: None,
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

// PostgreSQL: each test works in a schema of its own (`common::postgres`)
// and drops it at the end.

/// Opens a store in `schema`, failing the test with advice if PostgreSQL is
/// not there.
async fn open_postgres(url: &str, schema: &str) -> PostgresStore {
    PostgresStore::open_in_schema(url, schema)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL and it is not usable: {e}\n\
                 Run scripts/test (scripts/postgres-setup finds or starts a server), or set \
                 SIGNET_TEST_POSTGRES_URL to a server where this user may create schemas."
            )
        })
}

/// Runs `test(url, schema)` with a fresh schema name, then drops the schema
/// (best effort) whether the test passed or panicked.
async fn in_fresh_schema<F, Fut>(test: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let url = postgres::url();
    let schema = postgres::fresh_schema("store");
    // A task, so that a panic is caught and the schema still dropped.
    let outcome = tokio::spawn(test(url.clone(), schema.clone())).await;
    drop_schema(&url, &schema).await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
}

async fn drop_schema(url: &str, schema: &str) {
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        return;
    };
    // `schema` comes from `postgres::fresh_schema`: a plain identifier.
    let ddl = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
}

#[tokio::test]
async fn postgres_store_keeps_the_contract() {
    in_fresh_schema(|url, schema| async move {
        let store = open_postgres(&url, &schema).await;
        assert_eq!(store.kind(), "postgres");
        contract::run_all(&store).await;
        store.close().await;
    })
    .await;
}

/// Concurrent writers to one ring, through two stores on the same schema as
/// two replicas would: exactly one update wins, every other one is told it
/// lost the race (never a lock or serialization error).
#[tokio::test]
async fn postgres_concurrent_updates_have_one_winner() {
    in_fresh_schema(|url, schema| async move {
        let a = Arc::new(open_postgres(&url, &schema).await);
        let b = Arc::new(open_postgres(&url, &schema).await);
        a.create_ring(&ring("race")).await.unwrap();

        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    store
                        .update_ring(&RingUpdate {
                            policy: None,
                            manifest: None,
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
    })
    .await;
}

/// Replicas starting at the same moment on a new schema: every one opens,
/// the schema is created and migrated once, and they share it.
#[tokio::test]
async fn postgres_replicas_migrate_once_when_starting_together() {
    in_fresh_schema(|url, schema| async move {
        let opening: Vec<_> = (0..4)
            .map(|_| {
                let (url, schema) = (url.clone(), schema.clone());
                tokio::spawn(async move { PostgresStore::open_in_schema(&url, &schema).await })
            })
            .collect();
        let mut stores = Vec::new();
        for task in opening {
            match task.await.unwrap() {
                Ok(store) => stores.push(store),
                Err(e) => panic!("a replica failed to open beside the others: {e}"),
            }
        }

        let options = url
            .parse::<sqlx::postgres::PgConnectOptions>()
            .unwrap()
            .options([("search_path", schema.as_str())]);
        let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
        let applied: Vec<(i64, bool)> =
            sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(
            applied,
            vec![(1, true), (2, true), (3, true)],
            "each migration applied once"
        );
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = $1 ORDER BY table_name",
        )
        .bind(&schema)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(tables, ["_sqlx_migrations", "keys", "meta", "rings"]);
        conn.close().await.unwrap();

        stores[0].create_ring(&ring("shared")).await.unwrap();
        for store in &stores {
            let rings = store.load().await.unwrap();
            assert_eq!(rings.len(), 1, "every replica sees the same schema");
            assert_eq!(rings[0].name.as_str(), "shared");
        }
    })
    .await;
}

/// The schema-creation race made certain: another session has created the
/// schema but not committed, so the store's `CREATE SCHEMA IF NOT EXISTS`
/// waits and then fails with a unique violation once the other commits. The
/// store must take that as "the schema exists" and carry on.
#[tokio::test]
async fn postgres_schema_created_by_another_session_meanwhile() {
    in_fresh_schema(|url, schema| async move {
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("BEGIN").execute(&mut other).await.unwrap();
        let ddl = format!("CREATE SCHEMA \"{schema}\"");
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&mut other)
            .await
            .unwrap();

        let opening = {
            let (url, schema) = (url.clone(), schema.clone());
            tokio::spawn(async move { PostgresStore::open_in_schema(&url, &schema).await })
        };
        // Commit only once the store is blocked behind the uncommitted schema.
        let mut watch = sqlx::PgConnection::connect(&url).await.unwrap();
        let blocked = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"%");
        let mut waited = Duration::ZERO;
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE $1",
            )
            .bind(&blocked)
            .fetch_one(&mut watch)
            .await
            .unwrap();
            if waiting == 1 {
                break;
            }
            assert!(
                waited < Duration::from_secs(10),
                "the store never waited on the schema"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();

        let store = opening.await.unwrap().unwrap_or_else(|e| {
            panic!("a schema created concurrently must not fail the open: {e}")
        });
        store.create_ring(&ring("after-race")).await.unwrap();
        assert_eq!(store.load().await.unwrap().len(), 1);
    })
    .await;
}

/// A replica listening for changes hears the ring named when another
/// replica's write commits, and nothing for a write that lost its CAS.
#[tokio::test]
async fn postgres_committed_changes_are_announced() {
    in_fresh_schema(|url, schema| async move {
        let writer = open_postgres(&url, &schema).await;
        let watcher = open_postgres(&url, &schema).await;
        assert_eq!(watcher.channel(), format!("signet_changes_{schema}"));
        let mut listener = watcher.subscribe().await.unwrap();
        let mut next = async || {
            let note = tokio::time::timeout(Duration::from_secs(10), listener.recv())
                .await
                .expect("no notification within 10 s")
                .unwrap();
            assert_eq!(note.channel(), format!("signet_changes_{schema}"));
            note.payload().to_owned()
        };

        writer.create_ring(&ring("watched")).await.unwrap();
        assert_eq!(next().await, "watched", "create_ring announced");
        let update = RingUpdate {
            policy: None,
            manifest: None,
            ring: RingName::parse("watched", "n").unwrap(),
            expected_generation: 1,
            insert: vec![contract::key_record(300)],
            update: vec![],
        };
        writer.update_ring(&update).await.unwrap();
        assert_eq!(next().await, "watched", "update_ring announced");

        // The same update again: its generation is stale now.
        let lost = writer.update_ring(&update).await;
        assert!(matches!(lost, Err(StoreError::Conflict(_))), "{lost:?}");
        // Notifications arrive in commit order, so if the lost write had
        // announced anything it would come before this one.
        writer.create_ring(&ring("marker")).await.unwrap();
        assert_eq!(next().await, "marker", "a lost CAS announces nothing");
    })
    .await;
}

/// A connection failure names the server but never repeats the password.
#[tokio::test]
async fn postgres_errors_do_not_reveal_the_password() {
    // Port 1 on loopback: nothing listens there, the connection is refused.
    let url = "postgres://signet:pw-7f3a9c1e@127.0.0.1:1/signet";
    match PostgresStore::open(url).await {
        Err(StoreError::Unavailable(msg)) => {
            assert!(!msg.contains("pw-7f3a9c1e"), "password leaked: {msg}");
            assert!(msg.contains("127.0.0.1:1/signet"), "{msg}");
        }
        Err(e) => panic!("expected Unavailable, got {e:?}"),
        Ok(_) => panic!("connected to port 1"),
    }
    let invalid = PostgresStore::open_in_schema(url, "x\"; DROP SCHEMA public; --").await;
    assert!(
        matches!(invalid, Err(StoreError::Unavailable(ref msg)) if msg.contains("invalid schema")),
        "{invalid:?}"
    );
}

/// TLS to the database: against a server that accepts TCP only over TLS
/// (`hostssl`), a store opened with `sslmode=verify-full` and the server's
/// CA passes the contract suite on an encrypted connection; without TLS,
/// or with a certificate from another CA, opening fails saying where.
#[tokio::test]
async fn postgres_over_tls_verifies_the_server() {
    use crate::common::certs;

    let dir = postgres::cluster_parent();
    let pg = dir.path().join("pg");
    std::fs::create_dir_all(pg.join("tls")).unwrap();
    let ca = certs::ca("signet test database CA");
    let (cert, key) = certs::leaf(
        &ca,
        "127.0.0.1",
        vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())],
    );
    std::fs::write(pg.join("tls/server.crt"), cert).unwrap();
    std::fs::write(pg.join("tls/server.key"), key).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, certs::ca("some other CA").pem).unwrap();

    let cluster = postgres::Cluster::start(&pg);
    let base = cluster.url.clone();
    let target = base.trim_start_matches("postgres://postgres@");
    let verified = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    );
    let store = PostgresStore::open_in_schema(&verified, "tls")
        .await
        .unwrap();
    contract::run_all(&store).await;
    store.close().await;
    let mut conn = sqlx::PgConnection::connect(&verified).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(ssl, "the connection is encrypted");

    let plain = PostgresStore::open_in_schema(&format!("{base}?sslmode=disable"), "tls")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        plain.contains(&format!("postgres: cannot connect to {target}")),
        "{plain}"
    );
    assert!(
        plain.contains("no encryption"),
        "the server's reason: {plain}"
    );

    let wrong = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    );
    let wrong = PostgresStore::open_in_schema(&wrong, "tls")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        wrong.contains(&format!("postgres: cannot connect to {target}")),
        "{wrong}"
    );
    assert!(wrong.to_lowercase().contains("certificate"), "{wrong}");
    drop(cluster);
}

/// Replicas making the audit key at the same moment: every one ends up with
/// the first key stored, so all digest audit records alike.
#[tokio::test]
async fn postgres_replicas_agree_on_one_audit_key() {
    in_fresh_schema(|url, schema| async move {
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(open_postgres(&url, &schema).await);
        }
        let candidates: Vec<Vec<u8>> = (0..8).map(|i| format!("key-{i}").into_bytes()).collect();
        let got = futures::future::join_all(
            candidates
                .iter()
                .enumerate()
                .map(|(i, c)| stores[i % 4].init_audit_key(c)),
        )
        .await;
        let got: std::collections::HashSet<Vec<u8>> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got.len(), 1, "one key for all: {got:?}");
        let stored = stores[3].audit_key().await.unwrap().unwrap();
        assert!(got.contains(&stored));
        assert!(candidates.contains(&stored));
        for store in stores {
            store.close().await;
        }
    })
    .await;
}
