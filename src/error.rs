//! The service-level error: what the key ring operations report. The gRPC
//! layer (`rpc::status`) is the one place these become `tonic::Status`.

use crate::{
    crypto::{CryptoError, Kid, claims::InputError},
    keyring::RingName,
    seal::KekError,
    store::StoreError,
};

/// Why a Signet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Caller input broke a rule; the message names the field and the rule.
    #[error(transparent)]
    InvalidArgument(#[from] InputError),
    /// A Sign request no claim rule of its caller accepts.
    #[error(transparent)]
    ClaimRule(crate::authz::Violation),
    /// No ring of that name.
    #[error("key ring {0:?} not found")]
    RingNotFound(String),
    /// The ring has no key with that kid.
    #[error("key {kid} not found in ring {ring}")]
    KidNotFound {
        /// The ring.
        ring: RingName,
        /// The kid asked for.
        kid: String,
    },
    /// The key's material is already destroyed (revoked or removed).
    #[error("key {kid} of ring {ring} is already {state}; nothing to revoke")]
    AlreadyGone {
        /// The ring.
        ring: RingName,
        /// The key.
        kid: Kid,
        /// `revoked` or `removed`.
        state: &'static str,
    },
    /// A policy breaks one of the rules that keep tokens verifiable.
    #[error(transparent)]
    Policy(#[from] crate::keyring::PolicyError),
    /// A ring of that name exists already.
    #[error("key ring {0} already exists")]
    RingExists(RingName),
    /// The ring has no key in the Active state right now.
    #[error("key ring {0} has no active key at this time; rotate it to create one")]
    NoActiveKey(RingName),
    /// The active key's private material is not loaded in this process.
    #[error("the private key {kid} of ring {ring} is not loaded")]
    KeyUnavailable {
        /// The ring.
        ring: RingName,
        /// The key.
        kid: Kid,
    },
    /// Another writer changed the ring first; nothing was written.
    #[error("key ring {0} was changed concurrently; nothing was written, retry the request")]
    Conflict(RingName),
    /// The key store failed. The detail is logged by the store layer; the
    /// caller learns what to do. (A connection lost during a commit leaves
    /// the outcome unknown, so the message does not promise nothing changed.)
    #[error(
        "key store unavailable: retry when it answers; ListKeys shows what took effect \
         (the server log says why the store does not answer)"
    )]
    Store(#[source] StoreError),
    /// A cryptographic operation failed (opaque by design).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Signet is sealed: no private key is in memory.
    #[error("sealed: Signet holds no keys in memory; unseal it first (`signet unseal`)")]
    Sealed,
    /// The KEK provider could not be opened or used; says which and why.
    /// (The provider's error is part of this message, not a `source`, so a
    /// chain printed with `{:#}` says it once.) The detail may name a path
    /// or a PKCS#11 module: it goes to operators and logs, never into a
    /// `Status` (see `rpc::status`).
    #[error("KEK unavailable: {0}")]
    Kek(KekError),
    /// The KEK opened, but it is not the KEK this store was sealed with.
    /// Carries the provider's description (which may name a path); callers
    /// over gRPC get a message without it.
    #[error("KEK {0} is not the key-encryption key of this store (its check value does not open)")]
    WrongKek(String),
    /// A sealed record failed its integrity check.
    #[error("the sealed record of key {kid} in ring {ring} failed its integrity check")]
    DataLoss {
        /// The ring.
        ring: RingName,
        /// The key.
        kid: Kid,
    },
    /// The ring's stored state does not match its sealed manifest, or
    /// rolled back (see `keyring::manifest`): the ring neither signs nor
    /// changes until an operator restores the store.
    #[error(
        "key ring {ring} is refused: {reason}; it neither signs nor changes until an operator \
         restores the store (see docs/threat-model.md)"
    )]
    RingRefused {
        /// The ring.
        ring: RingName,
        /// Why (a [`Refusal`](crate::keyring::Refusal)).
        reason: String,
    },
    /// The audit log could not record the intent of an action, so the
    /// action was not taken.
    #[error("audit unavailable: the action's intent could not be recorded, so nothing was done")]
    AuditUnavailable,
    /// A replica of a shared store has not read it for longer than
    /// `store.max_staleness` (the bound): keys revoked elsewhere may still
    /// be held here, so it neither signs nor publishes until a refresh
    /// succeeds.
    #[error(
        "key store unreachable for {}: refusing to sign with keys that may have been revoked",
        humantime::format_duration(*.0)
    )]
    Stale(std::time::Duration),
    /// The signing pool is gone (the server is shutting down).
    #[error("the service is shutting down")]
    ShuttingDown,
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(ring) => Error::Conflict(ring),
            StoreError::RingExists(ring) => Error::RingExists(ring),
            StoreError::RingNotFound(ring) => Error::RingNotFound(ring.to_string()),
            other => Error::Store(other),
        }
    }
}
