//! The embedded durable store: one SQLite file, written through `sqlx`.
//!
//! How the [contract](super) is kept:
//!
//! - **Atomic writes.** Every write method is one `BEGIN IMMEDIATE`
//!   transaction; an error anywhere drops it uncommitted, which rolls back
//!   everything it did. `synchronous = FULL` makes a commit durable before it
//!   is acknowledged, so a crash or power loss keeps either the old records
//!   or the new ones.
//! - **Compare and swap.** The generation is bumped with
//!   `UPDATE … WHERE generation = ?` before anything else is written; zero
//!   rows changed means another writer won.
//! - **Kids are never reused.** Keys are never deleted: a destroyed key keeps
//!   its row (a tombstone, `sealed` NULL) and the `(ring, kid)` primary key.
//! - **Destroyed material is gone.** `secure_delete` overwrites the freed
//!   bytes of a replaced or nulled blob in the database file. The WAL still
//!   holds the old page until it is checkpointed and, in a quiet store, that
//!   can take weeks; so an update that destroys a blob, and a rekey (which
//!   replaces blobs sealed under the old KEK), checkpoint and truncate the
//!   WAL right after their commit.
//! - **The reactor is not blocked.** `sqlx` runs each SQLite connection on
//!   its own worker thread, including waits for the write lock.
//!
//! SQLite allows one writer at a time. `BEGIN IMMEDIATE` takes the write lock
//! up front, and other writers wait for it (up to [`BUSY_TIMEOUT`]) instead
//! of failing halfway through with `SQLITE_BUSY`. Readers are never blocked
//! (WAL mode) and see a consistent snapshot.

use std::{collections::HashMap, path::Path, time::Duration};

use async_trait::async_trait;
use serde::Serialize;
use sqlx::{
    Row,
    migrate::Migrator,
    sqlite::{
        SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
        SqliteRow, SqliteSynchronous,
    },
};

use super::{
    KeyRecord, KeyStore, RingRecord, RingUpdate, StoreError,
    columns::{self, KeyColumns, RingColumns},
};
use crate::{crypto::Kid, keyring::RingName};

/// The schema, embedded at compile time from `migrations/sqlite/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a write waits for another connection's write lock before the
/// store answers [`StoreError::Unavailable`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes serialise on SQLite's single write lock anyway; a few connections
/// let reads proceed beside a write.
const MAX_CONNECTIONS: u32 = 4;

/// The `meta` row holding the KEK check value.
const KEK_CHECK: &str = "kek_check";
/// The `meta` row holding the wrapped audit key.
const AUDIT_KEY: &str = "audit_key";
/// `meta` rows `audit_anchor:LOG`: the latest checkpoint of each audit file.
const ANCHOR_PREFIX: &str = "audit_anchor:";

/// A [`KeyStore`] in a single SQLite database file.
///
/// Cheap to share behind an `Arc`; all methods take `&self`. More than one
/// store (or process) may open the same file: writes serialise on SQLite's
/// lock and the generation check decides which update wins.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (mode 0600 on Unix) if it
    /// does not exist, and brings its schema up to date.
    ///
    /// Fails with [`StoreError::Unavailable`] if the file cannot be opened or
    /// created, or if its schema was written by a newer Signet.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL's usual NORMAL can lose the last commits on power loss;
            // an acknowledged rotation must survive, so sync every commit.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "sqlite: cannot open {}: {}",
                    path.display(),
                    describe(&e)
                ))
            })?;
        MIGRATOR.run(&pool).await.map_err(|e| {
            StoreError::Unavailable(format!(
                "sqlite: cannot migrate the schema of {}: {e}",
                path.display()
            ))
        })?;
        Ok(Self { pool })
    }

    /// Copies the WAL into the database file and truncates it, so frames
    /// holding destroyed or replaced blobs leave the disk now.
    ///
    /// Best effort, after the write has committed: a reader still on an
    /// older snapshot past [`BUSY_TIMEOUT`] makes it fall short, and the
    /// frames then go at a later checkpoint. Logged, not an error: the
    /// write itself succeeded.
    async fn scrub_wal(&self) {
        let busy = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get::<i64, _>(0));
        match busy {
            Ok(0) => {}
            Ok(_) => tracing::warn!(
                "sqlite: WAL checkpoint blocked by a reader; destroyed key blobs stay in the \
                 WAL until the next checkpoint"
            ),
            Err(e) => tracing::warn!(
                error = %describe(&e),
                "sqlite: WAL checkpoint failed; destroyed key blobs stay in the WAL until the \
                 next checkpoint"
            ),
        }
    }

    /// Starts a write transaction holding SQLite's write lock from the start,
    /// so it cannot fail with `SQLITE_BUSY` after it has begun writing.
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)
    }
}

impl SqliteStore {
    /// The value of the `meta` row `name`, if there is one.
    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT value FROM meta WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn load(&self) -> Result<Vec<RingRecord>, StoreError> {
        // One read transaction, so rings and keys come from the same snapshot.
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let ring_rows = sqlx::query(
            "SELECT name, alg, rsa_bits, policy_json, generation, manifest FROM rings ORDER BY name",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let key_rows = sqlx::query(
            "SELECT ring, kid, jwk_json, timeline_json, sealed, reason, request_id FROM keys ORDER BY ring, seq",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;

        let mut rings = ring_rows
            .iter()
            .map(ring_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let index: HashMap<String, usize> = rings
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str().to_owned(), i))
            .collect();
        for row in &key_rows {
            let ring: String = row.try_get("ring").map_err(db_error)?;
            let Some(&i) = index.get(&ring) else {
                return Err(columns::corrupt(
                    DB,
                    &ring,
                    None,
                    "key of a ring that does not exist",
                ));
            };
            rings[i].keys.push(key_from_row(&ring, row)?);
        }
        Ok(rings)
    }

    async fn create_ring(&self, ring: &RingRecord) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let exists = sqlx::query("SELECT 1 FROM rings WHERE name = ?")
            .bind(ring.name.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        if exists.is_some() {
            return Err(StoreError::RingExists(ring.name.clone()));
        }
        sqlx::query(
            "INSERT INTO rings (name, alg, rsa_bits, policy_json, generation, manifest) \
             VALUES (?, ?, ?, ?, 1, ?)",
        )
        .bind(ring.name.as_str())
        .bind(ring.spec.alg().name())
        .bind(i64::from(ring.spec.rsa_bits()))
        .bind(to_json(&ring.policy, &ring.name, None, "policy")?)
        .bind(ring.manifest.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        for (seq, key) in (1..).zip(&ring.keys) {
            insert_key(&mut tx, &ring.name, seq, key).await?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn update_ring(&self, update: &RingUpdate) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let generation = bump_generation(&mut tx, &update.ring, update.expected_generation).await?;
        let first_seq: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM keys WHERE ring = ?")
                .bind(update.ring.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        // Inserts first, as in `MemoryStore`: an update may then change a key
        // inserted by the same call.
        for (seq, key) in (first_seq..).zip(&update.insert) {
            insert_key(&mut tx, &update.ring, seq, key).await?;
        }
        crate::fault!("store-insert");
        for key in &update.update {
            update_key(&mut tx, &update.ring, key).await?;
        }
        if let Some(policy) = &update.policy {
            sqlx::query("UPDATE rings SET policy_json = ? WHERE name = ?")
                .bind(to_json(policy, &update.ring, None, "policy")?)
                .bind(update.ring.as_str())
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        crate::fault!("store-manifest");
        if let Some(manifest) = &update.manifest {
            set_manifest(&mut tx, &update.ring, manifest).await?;
        }
        crate::fault!("store-commit");
        tx.commit().await.map_err(db_error)?;
        crate::fault!("store-committed");
        if update.update.iter().any(|k| k.sealed.is_none()) {
            self.scrub_wal().await;
        }
        Ok(generation)
    }

    /// Waits for operations in flight, then closes every connection. Later
    /// calls fail with [`StoreError::Unavailable`]. Dropping the store
    /// without closing it loses nothing that was committed.
    async fn close(&self) {
        self.pool.close().await;
    }

    async fn kek_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta(KEK_CHECK).await
    }

    async fn init_kek_check(&self, check: &[u8]) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(KEK_CHECK)
        .bind(check)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::KekCheckExists);
        }
        tx.commit().await.map_err(db_error)
    }

    async fn audit_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta(AUDIT_KEY).await
    }

    async fn audit_anchor(&self, log: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta(&format!("{ANCHOR_PREFIX}{log}")).await
    }

    async fn set_audit_anchor(&self, log: &str, value: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .bind(format!("{ANCHOR_PREFIX}{log}"))
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn init_audit_key(&self, wrapped: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING")
            .bind(AUDIT_KEY)
            .bind(wrapped)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let stored = sqlx::query_scalar("SELECT value FROM meta WHERE name = ?")
            .bind(AUDIT_KEY)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(stored)
    }

    async fn rekey(
        &self,
        check: &[u8],
        audit_key: Option<&[u8]>,
        rings: &[RingRecord],
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let held: Option<i64> = sqlx::query_scalar("SELECT 1 FROM meta WHERE name = ?")
            .bind(AUDIT_KEY)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        match (held, audit_key) {
            (Some(_), Some(wrapped)) => {
                sqlx::query("UPDATE meta SET value = ? WHERE name = ?")
                    .bind(wrapped)
                    .bind(AUDIT_KEY)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
            }
            (None, None) => {}
            _ => return Err(StoreError::AuditKeyChanged),
        }
        for ring in rings {
            bump_generation(&mut tx, &ring.name, ring.generation).await?;
            for key in &ring.keys {
                update_key(&mut tx, &ring.name, key).await?;
            }
            if let Some(manifest) = &ring.manifest {
                set_manifest(&mut tx, &ring.name, manifest).await?;
            }
        }
        // Every ring must be listed, or blobs would stay under the old KEK.
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM rings ORDER BY name")
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        if let Some(missing) = names
            .iter()
            .find(|n| !rings.iter().any(|r| r.name.as_str() == n.as_str()))
        {
            let name = RingName::parse(missing, "ring").map_err(|_| {
                StoreError::Unavailable(format!("sqlite: corrupt record: ring {missing:?}"))
            })?;
            return Err(StoreError::Conflict(name));
        }
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES (?, ?) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(KEK_CHECK)
        .bind(check)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        crate::fault!("store-rekey-commit");
        tx.commit().await.map_err(db_error)?;
        crate::fault!("store-rekey-committed");
        // The blobs sealed under the old KEK must not outlive the rekey.
        self.scrub_wal().await;
        Ok(())
    }
}

/// Creates `path` readable by its owner only, unless it exists. SQLite would
/// create it world-readable (0644 less the umask), and its `-wal` and `-shm`
/// files copy the database file's permissions.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "sqlite: cannot create {}: {e}",
            path.display()
        ))),
    }
}

/// Moves `ring` from `expected` to the next generation, or explains why not.
/// Runs first in a write, so a lost race writes nothing.
async fn bump_generation(
    tx: &mut SqliteConnection,
    ring: &RingName,
    expected: u64,
) -> Result<u64, StoreError> {
    // A generation beyond i64 was never stored, so it cannot match.
    if let Ok(stored) = i64::try_from(expected) {
        let bumped = sqlx::query(
            "UPDATE rings SET generation = generation + 1 WHERE name = ? AND generation = ?",
        )
        .bind(ring.as_str())
        .bind(stored)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        if bumped == 1 {
            return Ok(expected + 1);
        }
    }
    let exists = sqlx::query("SELECT 1 FROM rings WHERE name = ?")
        .bind(ring.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
    Err(match exists {
        Some(_) => StoreError::Conflict(ring.clone()),
        None => StoreError::RingNotFound(ring.clone()),
    })
}

/// Inserts `key` at position `seq`, refusing a kid the ring has or had.
async fn insert_key(
    tx: &mut SqliteConnection,
    ring: &RingName,
    seq: i64,
    key: &KeyRecord,
) -> Result<(), StoreError> {
    // Tombstones keep their rows, so this also finds destroyed keys.
    let taken = sqlx::query("SELECT 1 FROM keys WHERE ring = ? AND kid = ?")
        .bind(ring.as_str())
        .bind(key.kid.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
    if taken.is_some() {
        return Err(StoreError::KidReused {
            ring: ring.clone(),
            kid: key.kid.clone(),
        });
    }
    let kid = Some(&key.kid);
    sqlx::query(
        "INSERT INTO keys (ring, kid, seq, jwk_json, timeline_json, sealed, reason, request_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(ring.as_str())
    .bind(key.kid.as_str())
    .bind(seq)
    .bind(to_json(&key.jwk, ring, kid, "jwk")?)
    .bind(to_json(&key.timeline, ring, kid, "timeline")?)
    .bind(key.sealed.as_ref().map(|b| b.0.as_slice()))
    .bind(key.reason.as_deref())
    .bind(key.request_id.as_deref())
    .execute(&mut *tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Replaces the timeline and sealed blob of an existing key; `None` deletes
/// the blob and leaves the tombstone.
async fn update_key(
    tx: &mut SqliteConnection,
    ring: &RingName,
    key: &KeyRecord,
) -> Result<(), StoreError> {
    let changed = sqlx::query(
        "UPDATE keys SET timeline_json = ?, sealed = ?, reason = ?, \
         request_id = COALESCE(?, request_id) \
         WHERE ring = ? AND kid = ?",
    )
    .bind(to_json(&key.timeline, ring, Some(&key.kid), "timeline")?)
    .bind(key.sealed.as_ref().map(|b| b.0.as_slice()))
    .bind(key.reason.as_deref())
    .bind(key.request_id.as_deref())
    .bind(ring.as_str())
    .bind(key.kid.as_str())
    .execute(&mut *tx)
    .await
    .map_err(db_error)?
    .rows_affected();
    if changed == 0 {
        return Err(StoreError::KidNotFound {
            ring: ring.clone(),
            kid: key.kid.clone(),
        });
    }
    Ok(())
}

/// Replaces the sealed manifest of `ring` (inside the write that changes it).
async fn set_manifest(
    tx: &mut SqliteConnection,
    ring: &RingName,
    manifest: &[u8],
) -> Result<(), StoreError> {
    sqlx::query("UPDATE rings SET manifest = ? WHERE name = ?")
        .bind(manifest)
        .bind(ring.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Rebuilds a ring (without its keys) from a `rings` row.
fn ring_from_row(row: &SqliteRow) -> Result<RingRecord, StoreError> {
    let cols = RingColumns {
        name: row.try_get("name").map_err(db_error)?,
        alg: row.try_get("alg").map_err(db_error)?,
        rsa_bits: row.try_get("rsa_bits").map_err(db_error)?,
        policy_json: row.try_get("policy_json").map_err(db_error)?,
        generation: row.try_get("generation").map_err(db_error)?,
        manifest: row.try_get("manifest").map_err(db_error)?,
    };
    columns::ring_record(DB, cols)
}

/// Rebuilds a key from a `keys` row of `ring`.
fn key_from_row(ring: &str, row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let cols = KeyColumns {
        kid: row.try_get("kid").map_err(db_error)?,
        jwk_json: row.try_get("jwk_json").map_err(db_error)?,
        timeline_json: row.try_get("timeline_json").map_err(db_error)?,
        sealed: row.try_get("sealed").map_err(db_error)?,
        reason: row.try_get("reason").map_err(db_error)?,
        request_id: row.try_get("request_id").map_err(db_error)?,
    };
    columns::key_record(DB, ring, cols)
}

/// Encodes a column value (see [`columns::to_json`]).
fn to_json<T: Serialize>(
    value: &T,
    ring: &RingName,
    kid: Option<&Kid>,
    what: &str,
) -> Result<String, StoreError> {
    columns::to_json(DB, value, ring, kid, what)
}

/// The database name in error messages.
const DB: &str = "sqlite";

/// Any `sqlx` failure: the store is unusable for this call.
fn db_error(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {}", describe(&e)))
}

/// SQLite's own message (e.g. "database is locked") without sqlx's prefix;
/// never the SQL text or bound values.
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}
