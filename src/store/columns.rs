//! Decoding and encoding of the column values both SQL stores keep: the
//! same schema in SQLite and PostgreSQL, so one piece of code reads it.
//! Errors name the database, ring and kid so an operator can find the row.

use std::str::FromStr;

use serde::Serialize;

use super::{KeyRecord, RingRecord, SealedBlob, StoreError};
use crate::{
    crypto::{Algorithm, KeySpec, Kid},
    keyring::RingName,
};

/// The columns of a `rings` row.
pub(super) struct RingColumns {
    pub name: String,
    pub alg: String,
    pub rsa_bits: i64,
    pub policy_json: String,
    pub generation: i64,
    pub manifest: Option<Vec<u8>>,
}

/// The columns of a `keys` row.
pub(super) struct KeyColumns {
    pub kid: String,
    pub jwk_json: String,
    pub timeline_json: String,
    pub sealed: Option<Vec<u8>>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

/// A ring (without its keys) from its row in `db` ("sqlite", "postgres").
pub(super) fn ring_record(db: &str, c: RingColumns) -> Result<RingRecord, StoreError> {
    let bad = |what: &str| corrupt(db, &c.name, None, what);
    let alg = Algorithm::from_str(&c.alg).map_err(|_| bad("unknown algorithm"))?;
    let rsa_bits = u32::try_from(c.rsa_bits).map_err(|_| bad("bad RSA key size"))?;
    Ok(RingRecord {
        name: RingName::parse(&c.name, "name").map_err(|_| bad("invalid ring name"))?,
        spec: KeySpec::new(alg, rsa_bits).map_err(|_| bad("invalid key spec"))?,
        policy: serde_json::from_str(&c.policy_json).map_err(|_| bad("bad policy"))?,
        generation: u64::try_from(c.generation).map_err(|_| bad("negative generation"))?,
        keys: Vec::new(),
        manifest: c.manifest,
    })
}

/// A key of `ring` from its row in `db`.
pub(super) fn key_record(db: &str, ring: &str, c: KeyColumns) -> Result<KeyRecord, StoreError> {
    let kid = Kid::new(c.kid);
    let bad = |what: &str| corrupt(db, ring, Some(&kid), what);
    Ok(KeyRecord {
        jwk: serde_json::from_str(&c.jwk_json).map_err(|_| bad("bad jwk"))?,
        timeline: serde_json::from_str(&c.timeline_json).map_err(|_| bad("bad timeline"))?,
        sealed: c.sealed.map(SealedBlob),
        reason: c.reason,
        request_id: c.request_id,
        kid,
    })
}

/// Encodes a column value. Plain data structs always serialise; the error
/// path exists only so that a future field type cannot panic here.
pub(super) fn to_json<T: Serialize>(
    db: &str,
    value: &T,
    ring: &RingName,
    kid: Option<&Kid>,
    what: &str,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|_| match kid {
        Some(kid) => StoreError::Unavailable(format!(
            "{db}: cannot encode the {what} of key {kid} in ring {ring}"
        )),
        None => StoreError::Unavailable(format!("{db}: cannot encode the {what} of ring {ring}")),
    })
}

/// A stored row that does not decode: named so an operator can find it.
pub(super) fn corrupt(db: &str, ring: &str, kid: Option<&Kid>, what: &str) -> StoreError {
    match kid {
        Some(kid) => StoreError::Unavailable(format!(
            "{db}: corrupt record: ring {ring:?}, key {:?}: {what}",
            kid.as_str()
        )),
        None => StoreError::Unavailable(format!("{db}: corrupt record: ring {ring:?}: {what}")),
    }
}
