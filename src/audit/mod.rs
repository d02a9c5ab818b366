//! The audit log: one hash-chained JSON line per RPC or scheduler action,
//! written before the RPC answers (fail-closed).
//!
//! # Layout
//!
//! - [`AuditRecord`] (`record`): the line format, [`Outcome`], gRPC code
//!   names and the line hash.
//! - [`AuditKey`] (`key`): the HMAC-SHA256 key for digests of sensitive
//!   values (claims, `sub`).
//! - [`AuditLog`] (`log`, `writer`): the shared handle that appends records
//!   to the configured sinks with a strictly increasing `seq` and an
//!   unbroken hash chain, and its [`AuditConfig`].
//! - [`SinkConfig`] (`sink`): `file:PATH` and `stdout` sinks, their fsync
//!   policy, and the per-sink writer thread.
//! - [`verify_file`] (`verify`): recomputes a file's chain for
//!   `signet audit verify`.
//!
//! # The chain
//!
//! Every line carries `prev`, the hex SHA-256 of the previous line of the
//! same sink (its bytes including the terminating newline, so
//! `sed -n 'Np' audit.log | sha256sum` prints it); the first line of a log
//! has 64 zeros. A renamed (rotated) file is continued by the new file: its
//! first `prev` is the hash of the old file's last line. `seq` is one
//! counter for the whole log; a sink that missed lines (it failed while
//! another sink wrote) resumes with an `audit.resync` marker line, the only
//! place where `seq` may jump.
//!
//! # What a line never contains
//!
//! A private key, a token or its signature, or raw claims: the record type
//! has no field for them. Sensitive values appear only as HMAC digests under
//! the [`AuditKey`].

mod checkpoint;
#[cfg(test)]
mod group_commit_tests;
mod key;
mod log;
mod record;
mod sink;
/// Fsync hooks for unit tests elsewhere in the crate (a sink that fails
/// on demand).
#[cfg(test)]
pub(crate) use sink::test_hooks;
mod verify;
mod writer;

pub use checkpoint::{
    CHECKPOINT_RPC, CheckpointKey, CheckpointSigner, GAP_RPC, is_signed_kind, signed_bytes,
};
pub use key::AuditKey;
pub use log::{Announced, AuditConfig, AuditLog, SinkStatus};
pub use record::{AuditRecord, GENESIS_PREV, Outcome, RESYNC_RPC, code_name, line_hash};
pub use sink::{FsyncPolicy, SinkConfig, SinkSpec};
pub use verify::{ChainError, ResyncGap, Verifier, VerifyReport, verify_file, verify_reader};

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The record could not be written as the sink rule requires (see
    /// [`AuditLog`]) within the timeout, or the writer has stopped. The RPC
    /// must fail with UNAVAILABLE "audit unavailable" and return nothing.
    /// The sink's own error is logged by the writer, never returned, so no
    /// path reaches a Status message.
    #[error("audit unavailable")]
    Unavailable,
    /// The audit configuration is invalid; the message says what to fix.
    #[error("audit configuration: {0}")]
    Config(String),
    /// The writer threads could not be started.
    #[error("cannot start the audit writer: {0}")]
    Start(#[source] std::io::Error),
}
