//! Sealed ring manifests against someone who can write the database: a
//! revoked key's earlier row restored, a policy or timeline edited, a store
//! rolled back. Each is tried on a running service and across a restart,
//! with SQLite and PostgreSQL, and must never bring a key back.

use std::{path::Path, sync::Arc};

use signet::{
    clock::{Clock, ManualClock, SystemClock},
    crypto::{Algorithm, KeySpec},
    keyring::{Generations, KeyManager, SignParams},
    seal::{EphemeralKek, KekProvider, KekSpec},
    store::{KeyStore, PostgresStore, SqliteStore},
};
use sqlx::Connection;
use tonic::Code;

use crate::common::{self, postgres, process::Proc};

fn params(ring: &str) -> SignParams<'_> {
    SignParams {
        ring,
        claims_json: b"{}",
        ttl: None,
        header_json: b"",
        grant: None,
    }
}

/// The kids a manager publishes for `ring`.
fn published(keys: &KeyManager, ring: &str) -> Vec<String> {
    match keys.jwks(ring, "ring") {
        Ok((set, _)) => set.keys.into_iter().map(|k| k.kid).collect(),
        Err(_) => vec![],
    }
}

/// Sign must be refused as DATA_LOSS naming `ring`, with `why` in the text.
async fn assert_refused(keys: &KeyManager, ring: &str, why: &str) {
    let err = keys.sign(params(ring)).await.unwrap_err();
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(
        status
            .message()
            .starts_with(&format!("key ring {ring} is refused")),
        "{}",
        status.message()
    );
    assert!(status.message().contains(why), "{}", status.message());
}

/// One key's row as stored: what a backup holds.
#[derive(Clone, Debug)]
struct Row {
    timeline: String,
    sealed: Option<Vec<u8>>,
}

async fn sqlite(data: &Path) -> sqlx::SqliteConnection {
    let url = format!("sqlite://{}", data.join("signet.db").display());
    sqlx::SqliteConnection::connect(&url).await.unwrap()
}

async fn read_row(conn: &mut sqlx::SqliteConnection, kid: &str) -> Row {
    let (timeline, sealed): (String, Option<Vec<u8>>) =
        sqlx::query_as("SELECT timeline_json, sealed FROM keys WHERE kid = ?")
            .bind(kid)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    Row { timeline, sealed }
}

async fn write_row(conn: &mut sqlx::SqliteConnection, kid: &str, row: &Row) {
    let n = sqlx::query("UPDATE keys SET timeline_json = ?, sealed = ? WHERE kid = ?")
        .bind(&row.timeline)
        .bind(row.sealed.as_deref())
        .bind(kid)
        .execute(&mut *conn)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1);
}

fn kid_of(token: &str) -> String {
    common::part(token.trim(), 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The attack issue 12 opens with, against a real server on SQLite: the
/// leaked key is revoked, then its earlier row (blob and timeline, from a
/// backup) is written back. Running, the server never serves it; after a
/// restart the ring refuses to sign instead of obeying the row; once the
/// row is put back as Signet wrote it, the ring serves again.
#[test]
fn a_restored_revoked_row_never_comes_back_sqlite() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = Proc::dev(&data, &[], &[]).unwrap();
    let leaked = kid_of(&dev.ok(&["sign", "--claims", "{}"]));
    let backup = rt.block_on(async { read_row(&mut sqlite(&data).await, &leaked).await });
    assert!(backup.sealed.is_some());

    dev.ok(&["revoke", &leaked, "--reason", "leaked"]);
    let tombstone = rt.block_on(async {
        let mut conn = sqlite(&data).await;
        let tombstone = read_row(&mut conn, &leaked).await;
        write_row(&mut conn, &leaked, &backup).await;
        tombstone
    });
    assert!(
        tombstone.sealed.is_none(),
        "revocation destroyed the material"
    );
    assert!(
        !dev.ok(&["jwks"]).contains(&leaked),
        "running: not published"
    );
    let successor = kid_of(&dev.ok(&["sign", "--claims", "{}"]));
    assert_ne!(successor, leaked, "running: never signs");
    assert!(dev.terminate().success());

    let dev = Proc::dev(&data, &[], &[]).unwrap();
    let out = dev.run(&["sign", "--claims", "{}"]);
    assert!(!out.status.success(), "a refused ring does not sign");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key ring default is refused"), "{err}");
    assert!(
        !dev.ok(&["jwks"]).contains(&leaked),
        "restarted: not published"
    );
    let metrics = rt
        .block_on(common::http_get(dev.metrics_addr(), "/metrics"))
        .2;
    assert!(
        metrics.contains("signet_ring_refusals_total{reason=\"differs\"} 1"),
        "{metrics}"
    );
    assert!(dev.terminate().success());

    // The operator restores the row as Signet wrote it: served again.
    rt.block_on(async { write_row(&mut sqlite(&data).await, &leaked, &tombstone).await });
    let dev = Proc::dev(&data, &[], &[]).unwrap();
    assert_eq!(kid_of(&dev.ok(&["sign", "--claims", "{}"])), successor);
    assert!(!dev.ok(&["jwks"]).contains(&leaked));
}

async fn sqlite_manager(data: &Path, kek: &str) -> KeyManager {
    sqlite_manager_at(data, kek, Arc::new(SystemClock)).await
}

async fn sqlite_manager_at(data: &Path, kek: &str, clock: Arc<dyn Clock>) -> KeyManager {
    let store = SqliteStore::open(&data.join("signet.db")).await.unwrap();
    let spec: KekSpec = kek.parse().unwrap();
    let keys = KeyManager::open(Arc::new(store), clock, Arc::new(spec))
        .await
        .unwrap();
    keys.track_generations(&data.join(Generations::FILE))
        .unwrap();
    keys.unseal().await.unwrap();
    keys
}

/// A database writer raises a ring's max_token_ttl to a year, or moves a
/// key's removal out: the ring refuses to sign (DATA_LOSS naming it)
/// instead of obeying the row.
#[tokio::test]
async fn an_edited_policy_or_timeline_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir_all(&data).unwrap();
    let kek = common::process::kek_file(&dir.path().join("kek"));
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let keys = sqlite_manager_at(&data, &kek, clock.clone()).await;
    let spec = KeySpec::new(Algorithm::Es256, 0).unwrap();
    for ring in ["policy", "timeline", "other"] {
        keys.create_ring(ring, spec).await.unwrap();
    }
    let (_, old) = keys.rotate("timeline", true, "drill", None).await.unwrap();
    let old = old.unwrap().kid;
    keys.close().await;
    drop(keys);

    let mut conn = sqlite(&data).await;
    let policy: String = sqlx::query_scalar("SELECT policy_json FROM rings WHERE name = 'policy'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let mut policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
    policy["max_token_ttl"] = policy["rotation_period"].clone();
    sqlx::query("UPDATE rings SET policy_json = ? WHERE name = 'policy'")
        .bind(policy.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    let mut row = read_row(&mut conn, old.as_str()).await;
    let mut timeline: serde_json::Value = serde_json::from_str(&row.timeline).unwrap();
    timeline["remove_at"] = serde_json::json!(4_102_444_800i64); // 2100
    row.timeline = timeline.to_string();
    write_row(&mut conn, old.as_str(), &row).await;
    conn.close().await.unwrap();

    let keys = sqlite_manager_at(&data, &kek, clock.clone()).await;
    assert_refused(&keys, "policy", "the policy").await;
    assert_refused(&keys, "timeline", &format!("the timeline of key {old}")).await;
    assert!(published(&keys, "timeline").is_empty());
    keys.sign(params("other")).await.unwrap();
    // Nor does a refused ring change, by hand or on schedule: a hundred
    // days on, every ring is due, and only the trusted one rotates.
    let err = keys.rotate("policy", true, "x", None).await.unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), Code::DataLoss);
    let before = keys.ring_info("policy", "r").unwrap();
    clock.advance(std::time::Duration::from_secs(100 * 86_400));
    let report = keys.tick().await;
    let rotated: Vec<&str> = report.generated.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        rotated,
        ["other"],
        "the scheduler leaves refused rings alone"
    );
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(keys.ring_info("policy", "r").unwrap().keys, before.keys);
}

/// The store copied back from before a rotation, while the server was
/// stopped: the generation this data directory saw is higher, so the ring
/// is refused as rolled back. Removing the ring's mark (what an operator
/// does after restoring a backup on purpose) lets the older state serve.
#[tokio::test]
async fn a_store_rolled_back_while_stopped_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir_all(&data).unwrap();
    let kek = common::process::kek_file(&dir.path().join("kek"));
    let keys = sqlite_manager(&data, &kek).await;
    keys.create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    keys.close().await;
    drop(keys);
    let db = data.join("signet.db");
    assert!(!data.join("signet.db-wal").exists(), "closed: one file");
    let backup = std::fs::read(&db).unwrap();

    let keys = sqlite_manager(&data, &kek).await;
    let (new, _) = keys.rotate("r", true, "drill", None).await.unwrap();
    keys.close().await;
    drop(keys);
    std::fs::write(&db, &backup).unwrap();

    let keys = sqlite_manager(&data, &kek).await;
    assert_refused(&keys, "r", "rolled back: generation 1").await;
    assert!(!published(&keys, "r").contains(&new.kid.to_string()));
    keys.close().await;
    drop(keys);

    let mut marks = Generations::open(&data.join(Generations::FILE)).unwrap();
    assert!(marks.forget("r"));
    marks.save().unwrap();
    let keys = sqlite_manager(&data, &kek).await;
    keys.sign(params("r")).await.unwrap();
}

/// Two replicas on PostgreSQL, the service running: the revoked key's
/// earlier row is written back, first quietly, then with the ring's
/// generation bumped so every replica re-reads it. Neither publishes or
/// signs with it; both refuse the ring once they read it; a replica
/// started afterwards refuses it too. A rollback of the ring's rows to an
/// older generation is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_revoked_row_never_comes_back_postgres() {
    let schema = postgres::fresh_schema("manifest");
    let kek: Arc<dyn KekProvider> = Arc::new(EphemeralKek::new().unwrap());
    let replica = || async {
        let store: Arc<dyn KeyStore> = Arc::new(
            PostgresStore::open_in_schema(&postgres::url(), &schema)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL needed (SIGNET_TEST_POSTGRES_URL): {e}")),
        );
        let keys = KeyManager::open(store, Arc::new(SystemClock), kek.clone())
            .await
            .unwrap();
        keys.unseal().await.unwrap();
        keys
    };
    let (a, b) = (replica().await, replica().await);
    a.create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    b.refresh().await.unwrap();
    let leaked = b.sign(params("r")).await.unwrap().kid.to_string();

    let options = postgres::url()
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let mut db = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let backup: (String, Option<Vec<u8>>) =
        sqlx::query_as("SELECT timeline_json, sealed FROM keys WHERE kid = $1")
            .bind(&leaked)
            .fetch_one(&mut db)
            .await
            .unwrap();
    a.revoke("r", &leaked, "leaked").await.unwrap();
    let tombstone: (String, Option<Vec<u8>>) =
        sqlx::query_as("SELECT timeline_json, sealed FROM keys WHERE kid = $1")
            .bind(&leaked)
            .fetch_one(&mut db)
            .await
            .unwrap();
    b.refresh().await.unwrap();
    assert!(!published(&b, "r").contains(&leaked));
    let successor = b.sign(params("r")).await.unwrap().kid.to_string();

    let restore = "UPDATE keys SET timeline_json = $1, sealed = $2 WHERE kid = $3";
    sqlx::query(restore)
        .bind(&backup.0)
        .bind(&backup.1)
        .bind(&leaked)
        .execute(&mut db)
        .await
        .unwrap();
    for keys in [&a, &b] {
        keys.refresh().await.unwrap();
        assert!(!published(keys, "r").contains(&leaked));
        assert_eq!(
            keys.sign(params("r")).await.unwrap().kid.to_string(),
            successor
        );
    }
    sqlx::query("UPDATE rings SET generation = generation + 1 WHERE name = 'r'")
        .execute(&mut db)
        .await
        .unwrap();
    for keys in [&a, &b] {
        keys.refresh().await.unwrap();
        assert_refused(keys, "r", "differ").await;
        assert!(!published(keys, "r").contains(&leaked));
        assert!(
            published(keys, "r").contains(&successor),
            "the last trusted keys stay published for verifiers"
        );
    }
    let c = replica().await;
    assert_refused(&c, "r", "differ").await;
    assert!(!published(&c, "r").contains(&leaked));

    // The operator puts the row back as Signet wrote it: served again.
    sqlx::query(restore)
        .bind(&tombstone.0)
        .bind(&tombstone.1)
        .bind(&leaked)
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE rings SET generation = generation - 1 WHERE name = 'r'")
        .execute(&mut db)
        .await
        .unwrap();
    for keys in [&a, &b] {
        keys.refresh().await.unwrap();
        assert_eq!(
            keys.sign(params("r")).await.unwrap().kid.to_string(),
            successor
        );
    }

    // A consistent rollback of the ring (rows and manifest as they were a
    // rotation ago): every tag verifies; only the generation gives it away.
    let ring_before: (Vec<u8>, i64) =
        sqlx::query_as("SELECT manifest, generation FROM rings WHERE name = 'r'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let keys_before: Vec<(String, String, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT kid, timeline_json, sealed FROM keys WHERE ring = 'r'")
            .fetch_all(&mut db)
            .await
            .unwrap();
    a.rotate("r", true, "drill", None).await.unwrap();
    b.refresh().await.unwrap();
    for (kid, timeline, sealed) in &keys_before {
        sqlx::query(restore)
            .bind(timeline)
            .bind(sealed)
            .bind(kid)
            .execute(&mut db)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE rings SET manifest = $1, generation = $2 WHERE name = 'r'")
        .bind(&ring_before.0)
        .bind(ring_before.1)
        .execute(&mut db)
        .await
        .unwrap();
    b.refresh().await.unwrap();
    assert_refused(
        &b,
        "r",
        &format!("rolled back: generation {}", ring_before.1),
    )
    .await;
    drop_schema(&schema, db).await;
}

async fn drop_schema(schema: &str, mut db: sqlx::PgConnection) {
    // The schema name is ours (t_manifest_<pid>_<n>), never input.
    let ddl = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&mut db)
        .await;
}
