//! The statements a write is made of, and rows back into records. Every
//! error becomes a [`StoreError`] here, without SQL text, bound values or
//! the connection URL.

use serde::Serialize;
use sqlx::{
    Row,
    postgres::{PgConnection, PgRow},
};

use super::ACQUIRE_TIMEOUT;
use crate::{
    crypto::Kid,
    keyring::RingName,
    store::{
        KeyRecord, RingRecord, StoreError,
        columns::{self, KeyColumns, RingColumns},
    },
};

/// Moves `ring` from `expected` to the next generation, or explains why not.
/// Runs first in a write, so a lost race writes nothing; on success the
/// transaction holds the ring's row lock until it ends.
pub(super) async fn bump_generation(
    tx: &mut PgConnection,
    ring: &RingName,
    expected: u64,
) -> Result<u64, StoreError> {
    // A generation beyond i64 was never stored, so it cannot match.
    if let Ok(stored) = i64::try_from(expected) {
        let bumped = sqlx::query(
            "UPDATE rings SET generation = generation + 1 WHERE name = $1 AND generation = $2",
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
    let exists = sqlx::query("SELECT 1 FROM rings WHERE name = $1")
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
pub(super) async fn insert_key(
    tx: &mut PgConnection,
    ring: &RingName,
    seq: i64,
    key: &KeyRecord,
) -> Result<(), StoreError> {
    let kid = Some(&key.kid);
    // Tombstones keep their rows, so the primary key also finds destroyed
    // keys. Only a kid conflict is absorbed; a clash on `seq` is an error.
    let inserted = sqlx::query(
        "INSERT INTO keys (ring, kid, seq, jwk_json, timeline_json, sealed, reason, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (ring, kid) DO NOTHING",
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
    .map_err(db_error)?
    .rows_affected();
    if inserted == 0 {
        return Err(StoreError::KidReused {
            ring: ring.clone(),
            kid: key.kid.clone(),
        });
    }
    Ok(())
}

/// Replaces the sealed manifest of `ring` (inside the write that changes it).
pub(super) async fn set_manifest(
    tx: &mut PgConnection,
    ring: &RingName,
    manifest: &[u8],
) -> Result<(), StoreError> {
    sqlx::query("UPDATE rings SET manifest = $1 WHERE name = $2")
        .bind(manifest)
        .bind(ring.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Replaces the timeline, sealed blob and reason of an existing key; `None`
/// deletes the blob and leaves the tombstone.
pub(super) async fn update_key(
    tx: &mut PgConnection,
    ring: &RingName,
    key: &KeyRecord,
) -> Result<(), StoreError> {
    let changed = sqlx::query(
        "UPDATE keys SET timeline_json = $1, sealed = $2, reason = $3, \
         request_id = COALESCE($4, request_id) \
         WHERE ring = $5 AND kid = $6",
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

/// Rebuilds a ring (without its keys) from a `rings` row.
pub(super) fn ring_from_row(row: &PgRow) -> Result<RingRecord, StoreError> {
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
pub(super) fn key_from_row(ring: &str, row: &PgRow) -> Result<KeyRecord, StoreError> {
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
pub(super) fn to_json<T: Serialize>(
    value: &T,
    ring: &RingName,
    kid: Option<&Kid>,
    what: &str,
) -> Result<String, StoreError> {
    columns::to_json(DB, value, ring, kid, what)
}

/// The database name in error messages.
pub(super) const DB: &str = "postgres";

/// Any `sqlx` failure: the store is unusable for this call.
pub(super) fn db_error(e: sqlx::Error) -> StoreError {
    match e {
        // sqlx says "pool timed out while waiting for an open connection",
        // which does not say that the database is the problem.
        sqlx::Error::PoolTimedOut => StoreError::Unavailable(format!(
            "postgres: database unreachable (no connection within {} s)",
            ACQUIRE_TIMEOUT.as_secs()
        )),
        e => StoreError::Unavailable(format!("postgres: {}", describe(&e))),
    }
}

/// The server's own message and SQLSTATE (e.g. "canceling statement due to
/// lock timeout (SQLSTATE 55P03)") without sqlx's prefix; never the SQL
/// text, bound values, the server's DETAIL (which can quote key values) or
/// the connection URL.
pub(super) fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}
