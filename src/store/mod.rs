//! Durable records of key rings and keys.
//!
//! # Contract
//!
//! Every [`KeyStore`] implementation must:
//!
//! - **Apply each write atomically.** A [`RingUpdate`] (new keys plus
//!   timeline changes) lands whole or not at all; a crash at any point leaves
//!   the old records or the new ones, never a mixture.
//! - **Compare and swap on the ring generation.** An update names the
//!   generation it was computed from; if the stored generation differs the
//!   store changes nothing and answers [`StoreError::Conflict`]. Success
//!   stores `expected_generation + 1`. This is how concurrent writers (two
//!   admin calls, two replicas' schedulers) agree that exactly one wins.
//! - **Never reuse a kid.** A kid once inserted in a ring stays reserved
//!   forever, even after its material is destroyed: inserting it again
//!   answers [`StoreError::KidReused`].
//! - **Hold only public or sealed data.** Records carry public keys,
//!   timelines and an opaque sealed blob (see `seal`); private material is
//!   never handed to a store in the clear.
//! - **Destroy for real.** An update that sets a key's `sealed` to `None`
//!   deletes the blob (the kid stays, as a tombstone).
//! - **Guard the KEK check value.** It is written once
//!   ([`KeyStore::init_kek_check`]) and replaced only by
//!   [`KeyStore::rekey`], in the same transaction as every sealed blob.
//! - **Not block the async reactor.** Methods are `async`; blocking I/O runs
//!   on a blocking pool inside the implementation.
//!
//! The [`contract`] module holds the tests every implementation must pass.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    crypto::{Jwk, KeySpec, Kid},
    keyring::{Policy, RingName, Timeline},
};

mod columns;
#[doc(hidden)]
pub mod contract;
mod kv;
mod memory;
mod postgres;
mod sqlite;

pub use kv::{KvBackend, KvStore, MemoryKv};
pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// One key as stored: public key, timeline, never private material in clear.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key id (thumbprint of `jwk`).
    pub kid: Kid,
    /// The public key as published.
    pub jwk: Jwk,
    /// When the key is published, signs, retires and is removed.
    pub timeline: Timeline,
    /// The private key, sealed under the KEK (format in `seal`); `None`
    /// once the material is destroyed and only the kid's tombstone remains.
    pub sealed: Option<SealedBlob>,
    /// Why the last admin action on this key (rotation, revocation) was
    /// taken, as the operator gave it.
    #[serde(default)]
    pub reason: Option<String>,
    /// The idempotency key of the Rotate request that created this key, if
    /// the caller gave one: a retry of that request (on any replica) answers
    /// with this key instead of rotating again. Set when the key is
    /// inserted; updates leave it as it is.
    #[serde(default)]
    pub request_id: Option<String>,
}

/// An opaque sealed private key: only `seal` can open it, and only with the
/// right KEK and the record it was sealed for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBlob(pub Vec<u8>);

impl std::fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ciphertext is not secret, but it is noise in logs.
        write!(f, "SealedBlob({} bytes)", self.0.len())
    }
}

/// One key ring as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingRecord {
    /// The ring's name.
    pub name: RingName,
    /// Algorithm and size of every key in the ring.
    pub spec: KeySpec,
    /// Token lifetimes and grace period.
    pub policy: Policy,
    /// Incremented by every successful update; the compare-and-swap token.
    pub generation: u64,
    /// Every key the ring ever had, oldest first.
    pub keys: Vec<KeyRecord>,
    /// The ring's sealed manifest (see `keyring::manifest`): opaque to the
    /// store, which keeps it with the ring and writes it in the same
    /// transaction as the change it describes. `None` for a ring written
    /// before manifests existed.
    pub manifest: Option<Vec<u8>>,
}

/// A change to one ring, applied atomically if the ring is still at
/// `expected_generation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingUpdate {
    /// The ring to change.
    pub ring: RingName,
    /// The generation the change was computed from.
    pub expected_generation: u64,
    /// Keys to add (each with a kid never seen in this ring).
    pub insert: Vec<KeyRecord>,
    /// Existing keys with a new timeline, sealed blob (`None` destroys the
    /// material) and reason; a request id replaces the stored one only when
    /// given (a promoted successor takes the id of the Rotate that promoted
    /// it), `None` leaves it. Matched by kid; the public key never changes.
    pub update: Vec<KeyRecord>,
    /// A new policy for the ring, if it changes.
    pub policy: Option<Policy>,
    /// The ring's new sealed manifest, describing the ring as it is after
    /// this update (at `expected_generation + 1`); replaces the stored one
    /// in the same transaction. `None` leaves the stored one.
    pub manifest: Option<Vec<u8>>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The ring changed since the update was computed; nothing was written.
    #[error("ring {0} was changed concurrently")]
    Conflict(RingName),
    /// A ring of that name exists already.
    #[error("ring {0} already exists")]
    RingExists(RingName),
    /// No ring of that name.
    #[error("ring {0} not found")]
    RingNotFound(RingName),
    /// An inserted kid exists, or existed, in the ring.
    #[error("kid {kid} was already used in ring {ring}")]
    KidReused {
        /// The ring.
        ring: RingName,
        /// The kid that was inserted twice.
        kid: Kid,
    },
    /// A timeline update named a kid the ring does not have.
    #[error("kid {kid} not found in ring {ring}")]
    KidNotFound {
        /// The ring.
        ring: RingName,
        /// The missing kid.
        kid: Kid,
    },
    /// A KEK check value is stored already.
    #[error("the store is already initialised with a key-encryption key")]
    KekCheckExists,
    /// A rekey did not re-wrap the audit key the store holds (or re-wrapped
    /// one it does not hold); nothing was written.
    #[error("the store's audit key changed during the rekey; run it again")]
    AuditKeyChanged,
    /// The store could not be reached or failed; the detail is logged, not
    /// returned to callers.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Durable storage of rings and keys. See the [module docs](self) for the
/// contract every implementation keeps.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// A short name for status output, e.g. `memory`, `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;

    /// Every ring with all its keys.
    async fn load(&self) -> Result<Vec<RingRecord>, StoreError>;

    /// Creates a ring with its first keys at generation 1. Fails with
    /// [`StoreError::RingExists`] if the name is taken.
    async fn create_ring(&self, ring: &RingRecord) -> Result<(), StoreError>;

    /// Applies `update` atomically if the ring is still at its expected
    /// generation. Returns the new generation.
    async fn update_ring(&self, update: &RingUpdate) -> Result<u64, StoreError>;

    /// Finishes work in flight and releases the store (for SQLite: closes
    /// every connection, which checkpoints the WAL into the database file).
    /// Called once at shutdown; nothing committed is lost without it.
    async fn close(&self) {}

    /// The KEK check value, if the store has been initialised.
    async fn kek_check(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores the KEK check value of a new store. Fails with
    /// [`StoreError::KekCheckExists`] if one is already stored, so two
    /// processes with different KEKs cannot both initialise it.
    async fn init_kek_check(&self, check: &[u8]) -> Result<(), StoreError>;

    /// The audit HMAC key, wrapped by the KEK, if one is stored. One per
    /// store, so every replica digests audit records under the same key.
    async fn audit_key(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores `wrapped` as the audit key unless one is stored already, and
    /// returns the one stored: of replicas starting together, the first
    /// write wins and all of them use it.
    async fn init_audit_key(&self, wrapped: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// The audit checkpoint anchored for the audit file `log` (see
    /// [`KeyStore::set_audit_anchor`]), if any.
    async fn audit_anchor(&self, log: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Records `value` (the latest signed checkpoint of the audit file
    /// `log`: `"SEQ HASH"`) in place of the one before, so that a restart,
    /// or an auditor, can tell the file was cut short. Durable when it
    /// returns. Not sealed: it holds a seq and a public line hash.
    async fn set_audit_anchor(&self, log: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Replaces the KEK check value, the audit key and the sealed blobs (and
    /// timelines) of the listed keys in one transaction: re-wrapping under a
    /// new KEK. `audit_key` is the re-wrapped audit key, given exactly when
    /// the store holds one ([`StoreError::AuditKeyChanged`] otherwise).
    /// `rings` must list every ring of the store exactly once, at its
    /// current generation, so no blob can stay under the old KEK; otherwise
    /// nothing is written and the answer is [`StoreError::Conflict`] naming
    /// a ring that changed or is missing. Keys are matched by kid
    /// ([`StoreError::KidNotFound`] if unknown); ring specs, policies and
    /// the set of keys never change. Every ring gets generation + 1, and the
    /// `manifest` given with it (describing that generation) when `Some`.
    async fn rekey(
        &self,
        check: &[u8],
        audit_key: Option<&[u8]>,
        rings: &[RingRecord],
    ) -> Result<(), StoreError>;
}
