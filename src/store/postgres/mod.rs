//! The shared durable store: PostgreSQL, written through `sqlx`, for several
//! replicas at once.
//!
//! How the [contract](super) is kept:
//!
//! - **Atomic writes.** Every write method is one transaction; an error
//!   anywhere drops it uncommitted, which rolls back everything it did.
//!   PostgreSQL acknowledges a commit only once its WAL is flushed (with the
//!   server's default `synchronous_commit = on`).
//! - **Compare and swap.** The generation is bumped with
//!   `UPDATE … WHERE name = $1 AND generation = $2` before anything else is
//!   written; zero rows changed means another writer won. Plain READ
//!   COMMITTED is enough: the UPDATE takes the ring's row lock, so a second
//!   writer from the same generation waits for the first to finish, and
//!   PostgreSQL then re-checks the WHERE clause against the row the first
//!   one committed. The generation no longer matches, zero rows change, and
//!   the loser answers [`StoreError::Conflict`] having written nothing. (If
//!   the first writer rolls back instead, the second one's predicate still
//!   holds and it wins.) Every later statement of the write runs while the
//!   ring's row lock is held, so no other writer can touch the ring's keys.
//! - **Kids are never reused.** Keys are never deleted: a destroyed key keeps
//!   its row (a tombstone, `sealed` NULL) and the `(ring, kid)` primary key.
//! - **Destroyed material is gone, logically.** Setting `sealed` to NULL
//!   removes the blob from every later read. PostgreSQL's MVCC keeps the old
//!   row version until VACUUM reclaims it, and the WAL (and any WAL archive
//!   or base backup) keeps a copy for as long as it is retained; the blob is
//!   sealed under the KEK, so what finally destroys such copies is a
//!   [`rekey`](KeyStore::rekey) followed by destroying the old KEK.
//! - **The reactor is not blocked.** `sqlx` speaks the PostgreSQL protocol
//!   asynchronously; waits for a row lock are bounded by [`LOCK_TIMEOUT`].
//!
//! # Replicas
//!
//! Any number of processes may open the same database (and schema). The
//! schema is migrated by whichever one gets there first: see
//! [`PostgresStore::open`]. After every committed write the store sends a
//! `NOTIFY` naming the changed ring, so replicas can refresh early
//! ([`PostgresStore::subscribe`]).

mod schema;
mod sql;

use std::{collections::HashMap, fmt, str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Connection, Row,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions},
};

use self::{
    schema::{SchemaName, close_quietly, create_schema},
    sql::{
        DB, bump_generation, db_error, describe, insert_key, key_from_row, ring_from_row,
        set_manifest, to_json, update_key,
    },
};
use super::{KeyStore, RingRecord, RingUpdate, StoreError, columns};
use crate::keyring::RingName;

/// The schema, embedded at compile time from `migrations/postgres/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a statement waits for a lock held by another transaction (a
/// concurrent write to the same ring, a rekey) before the store answers
/// [`StoreError::Unavailable`]; the PostgreSQL `lock_timeout` setting of
/// every pooled connection. Writes hold their locks for milliseconds, so
/// only a stuck transaction makes a writer wait this long.
const LOCK_TIMEOUT: &str = "5s";

/// How long a call waits for a pooled connection, including reconnecting
/// to a server that went away, before the store answers
/// [`StoreError::Unavailable`]. sqlx's default (30 s) would hold every admin
/// write of a replica whose database is down for half a minute; the caller
/// is better told at once, and signing never waits on the store.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes to one ring serialise on its row lock; a few connections let
/// reads and writes to other rings proceed beside it.
const MAX_CONNECTIONS: u32 = 4;

/// The `meta` row holding the KEK check value.
const KEK_CHECK: &str = "kek_check";
/// The `meta` row holding the wrapped audit key.
const AUDIT_KEY: &str = "audit_key";
/// `meta` rows `audit_anchor:LOG`: the latest checkpoint of each audit file.
const ANCHOR_PREFIX: &str = "audit_anchor:";

/// The `NOTIFY` channel of a store in the default schema; a store in a named
/// schema uses `signet_changes_<schema>`.
const CHANNEL: &str = "signet_changes";

/// The longest accepted schema name: PostgreSQL truncates identifiers to 63
/// bytes, and the channel name `signet_changes_<schema>` must fit too.
const MAX_SCHEMA_LEN: usize = 63 - CHANNEL.len() - 1;

/// A [`KeyStore`] in a PostgreSQL database, shared by every replica that
/// opens the same database and schema.
///
/// Cheap to share behind an `Arc`; all methods take `&self`. The generation
/// check decides which of several concurrent writers wins, whichever
/// process they run in.
pub struct PostgresStore {
    pool: PgPool,
    /// What every connection is opened with, for [`Self::subscribe`]. Holds
    /// the password: never printed, hence the hand-written `Debug`.
    options: PgConnectOptions,
    /// `host:port/database`, for messages; never the password.
    target: String,
    /// The schema the store lives in, if not the server's default.
    schema: Option<SchemaName>,
    /// Where committed writes are announced.
    channel: String,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .field("schema", &self.schema.as_ref().map(SchemaName::as_str))
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://` URL; add
    /// `?sslmode=verify-full` for TLS with certificate checks) and brings its
    /// schema up to date, in the connection's default schema (normally
    /// `public`).
    ///
    /// Safe when several replicas start at the same moment: sqlx's
    /// PostgreSQL migrator holds a session advisory lock
    /// (`pg_advisory_lock`, keyed on the database name; see `lock` in
    /// sqlx-postgres's `migrate.rs`) from before it creates its
    /// `_sqlx_migrations` table until every migration is applied, and applies
    /// each migration in one transaction with its bookkeeping row. So one
    /// replica migrates, the others wait for it and then find nothing to do.
    ///
    /// Fails with [`StoreError::Unavailable`] if the URL is invalid, the
    /// server cannot be reached or refuses the login, or the schema was
    /// written by a newer Signet. The message names the host, port and
    /// database, never the password.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::connect(url, None).await
    }

    /// Like [`Self::open`], but keeps every table in `schema`, which is
    /// created if it does not exist (tolerating another process creating it
    /// at the same moment). Each pooled connection gets `search_path` set to
    /// the schema at login. Several stores in different schemas of one
    /// database are fully independent, which is how tests run in parallel.
    ///
    /// `schema` must be 1 to 48 characters of `a-z`, `0-9` and `_`, not
    /// starting with a digit or `pg_`; anything else is refused with
    /// [`StoreError::Unavailable`] before the database is contacted.
    pub async fn open_in_schema(url: &str, schema: &str) -> Result<Self, StoreError> {
        let schema = SchemaName::parse(schema)?;
        Self::connect(url, Some(schema)).await
    }

    /// The `NOTIFY` channel on which committed writes are announced:
    /// `signet_changes`, or `signet_changes_<schema>` for a store opened with
    /// [`Self::open_in_schema`].
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Listens for committed changes, from any process using the same
    /// database and schema. Each notification's payload is the name of a ring
    /// that [`KeyStore::create_ring`], [`KeyStore::update_ring`] or
    /// [`KeyStore::rekey`] changed; a write that fails (a lost CAS, say)
    /// announces nothing, because PostgreSQL delivers a `NOTIFY` only when
    /// its transaction commits.
    ///
    /// The listener has its own connection, outside the store's pool, and
    /// reconnects if that connection drops; notifications sent while it was
    /// down are lost (`try_recv` answers `Ok(None)` at the gap). A replica
    /// must therefore still reload on a bounded interval and use this only
    /// to refresh sooner.
    pub async fn subscribe(&self) -> Result<PgListener, StoreError> {
        // A private pool of one, as `PgListener::connect` builds from a URL,
        // but from the options this store was opened with (TLS included).
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(self.options.clone())
            .await
            .map_err(|e| self.unreachable(&e))?;
        let mut listener = PgListener::connect_with(&pool).await.map_err(db_error)?;
        listener.listen(&self.channel).await.map_err(db_error)?;
        Ok(listener)
    }

    /// Creates the schema if asked to, migrates it, and opens the pool.
    async fn connect(url: &str, schema: Option<SchemaName>) -> Result<Self, StoreError> {
        // sqlx's URL errors describe the faulty part, never echo the URL.
        let mut options = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::Unavailable(format!("postgres: invalid URL: {}", describe(&e)))
        })?;
        let target = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or(options.get_username())
        );
        let channel = match &schema {
            Some(schema) => {
                // The name is checked to be a plain lower-case identifier,
                // so it needs no quoting inside the `options` parameter.
                options = options.options([("search_path", schema.as_str())]);
                format!("{CHANNEL}_{}", schema.as_str())
            }
            None => CHANNEL.to_owned(),
        };
        let unreachable = |e: &sqlx::Error| {
            StoreError::Unavailable(format!(
                "postgres: cannot connect to {target}: {}",
                describe(e)
            ))
        };

        // One connection attempt first: a pool would retry a refused
        // connection until its timeout and then report only that it timed
        // out, where this reports at once why the server cannot be used.
        // It also creates the schema, which the migrator expects to exist.
        let mut first = PgConnection::connect_with(&options)
            .await
            .map_err(|e| unreachable(&e))?;
        let created = match &schema {
            Some(schema) => create_schema(&mut first, schema).await,
            None => Ok(()),
        };
        close_quietly(first).await;
        created?;

        // The migration runs on a pool of one connection of its own (the
        // migrator's future is `Send` only over a pool), closed afterwards
        // whatever happened: if migrating fails halfway, sqlx returns without
        // releasing its advisory lock, and a connection kept in the store's
        // pool would go on holding it, blocking every other replica's
        // migration; closing the connection ends the session and so releases
        // the lock.
        let setup = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|e| unreachable(&e))?;
        let migrated = MIGRATOR.run(&setup).await;
        setup.close().await;
        migrated.map_err(|e| {
            StoreError::Unavailable(format!(
                "postgres: cannot migrate the schema in {target}: {e}"
            ))
        })?;

        let options = options.options([("lock_timeout", LOCK_TIMEOUT)]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(Self {
            pool,
            options,
            target,
            schema,
            channel,
        })
    }

    /// The server could not be reached (for a new connection).
    fn unreachable(&self, e: &sqlx::Error) -> StoreError {
        StoreError::Unavailable(format!(
            "postgres: cannot connect to {}: {}",
            self.target,
            describe(e)
        ))
    }

    /// Announces, on commit of `tx`, that `ring` changed.
    async fn notify(&self, tx: &mut PgConnection, ring: &RingName) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(ring.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

impl PostgresStore {
    /// The value of the `meta` row `name`, if there is one.
    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT value FROM meta WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)
    }
}

#[async_trait]
impl KeyStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn load(&self) -> Result<Vec<RingRecord>, StoreError> {
        // One REPEATABLE READ transaction, so rings and keys come from the
        // same snapshot (under READ COMMITTED each statement gets its own,
        // and a ring created between the two would show keys without it).
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(db_error)?;
        // Byte order, as the other stores list rings, whatever the
        // database's collation.
        let ring_rows = sqlx::query(
            "SELECT name, alg, rsa_bits, policy_json, generation, manifest FROM rings \
             ORDER BY name COLLATE \"C\"",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let key_rows = sqlx::query(
            "SELECT ring, kid, jwk_json, timeline_json, sealed, reason, request_id FROM keys \
             ORDER BY ring, seq",
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
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // ON CONFLICT rather than a SELECT first: a concurrent creator of the
        // same name makes this wait for its commit and then insert nothing,
        // where a SELECT would see no row and the INSERT fail on the key.
        let created = sqlx::query(
            "INSERT INTO rings (name, alg, rsa_bits, policy_json, generation, manifest) \
             VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(ring.name.as_str())
        .bind(ring.spec.alg().name())
        .bind(i64::from(ring.spec.rsa_bits()))
        .bind(to_json(&ring.policy, &ring.name, None, "policy")?)
        .bind(ring.manifest.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        if created == 0 {
            return Err(StoreError::RingExists(ring.name.clone()));
        }
        for (seq, key) in (1..).zip(&ring.keys) {
            insert_key(&mut tx, &ring.name, seq, key).await?;
        }
        self.notify(&mut tx, &ring.name).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn update_ring(&self, update: &RingUpdate) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let generation = bump_generation(&mut tx, &update.ring, update.expected_generation).await?;
        let first_seq: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM keys WHERE ring = $1")
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
            sqlx::query("UPDATE rings SET policy_json = $1 WHERE name = $2")
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
        self.notify(&mut tx, &update.ring).await?;
        crate::fault!("store-commit");
        tx.commit().await.map_err(db_error)?;
        crate::fault!("store-committed");
        Ok(generation)
    }

    /// Waits for operations in flight, then closes every pooled connection.
    /// Later calls fail with [`StoreError::Unavailable`]. Listeners from
    /// [`PostgresStore::subscribe`] have their own connections and stay open
    /// until dropped.
    async fn close(&self) {
        self.pool.close().await;
    }

    async fn kek_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta(KEK_CHECK).await
    }

    async fn init_kek_check(&self, check: &[u8]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // A concurrent initialiser makes this wait for its commit, then
        // insert nothing: exactly one of them wins.
        let inserted = sqlx::query(
            "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
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
        sqlx::query("INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .bind(format!("{ANCHOR_PREFIX}{log}"))
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn init_audit_key(&self, wrapped: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // A concurrent initialiser makes this wait for its commit and then
        // insert nothing; the SELECT (same transaction, READ COMMITTED, a
        // new snapshot per statement) sees the winner's row.
        sqlx::query("INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(AUDIT_KEY)
            .bind(wrapped)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let stored = sqlx::query_scalar("SELECT value FROM meta WHERE name = $1")
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
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // SQLite's single write lock makes a rekey exclusive; here a table
        // lock does. SHARE ROW EXCLUSIVE conflicts with every INSERT and
        // UPDATE of `rings` (and with another rekey) but not with reads: no
        // ring can be created or changed between the check below that every
        // ring is listed and the commit, and two rekeys cannot deadlock on
        // row locks taken in different orders.
        sqlx::query("LOCK TABLE rings IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        // Likewise `meta`: no replica may store an audit key (wrapped under
        // the old KEK) between this check and the commit.
        sqlx::query("LOCK TABLE meta IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let held: Option<i32> = sqlx::query_scalar("SELECT 1 FROM meta WHERE name = $1")
            .bind(AUDIT_KEY)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        match (held, audit_key) {
            (Some(_), Some(wrapped)) => {
                sqlx::query("UPDATE meta SET value = $1 WHERE name = $2")
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
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM rings ORDER BY name COLLATE \"C\"")
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
        if let Some(missing) = names
            .iter()
            .find(|n| !rings.iter().any(|r| r.name.as_str() == n.as_str()))
        {
            let name = RingName::parse(missing, "ring")
                .map_err(|_| columns::corrupt(DB, missing, None, "invalid ring name"))?;
            return Err(StoreError::Conflict(name));
        }
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(KEK_CHECK)
        .bind(check)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        for ring in rings {
            self.notify(&mut tx, &ring.name).await?;
        }
        crate::fault!("store-rekey-commit");
        tx.commit().await.map_err(db_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server opens its store inside a spawned task, so the futures must
    /// be `Send` (the migrator's is not when run over a bare connection).
    #[test]
    fn opening_can_be_spawned() {
        fn is_send<T: Send>(_: &T) {}
        is_send(&PostgresStore::open(""));
        is_send(&PostgresStore::open_in_schema("", ""));
    }
}
