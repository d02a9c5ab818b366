//! The one place service errors become gRPC statuses (DESIGN.md section 5).
//!
//! Messages name the field, ring or kid and what to do next; they never carry
//! paths, SQL, backtraces or key material.

use tonic::{Code, Status};

use crate::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::ClaimRule(_) => Code::PermissionDenied,
            Error::RingNotFound(_) | Error::KidNotFound { .. } => Code::NotFound,
            Error::AlreadyGone { .. } | Error::Policy(_) => Code::FailedPrecondition,
            Error::RingExists(_) => Code::AlreadyExists,
            Error::NoActiveKey(_) => Code::FailedPrecondition,
            Error::Conflict(_) => Code::Aborted,
            Error::KeyUnavailable { .. }
            | Error::Store(_)
            | Error::ShuttingDown
            | Error::AuditUnavailable
            | Error::Sealed
            | Error::Stale(_)
            | Error::Kek(_)
            | Error::WrongKek(_) => Code::Unavailable,
            Error::DataLoss { .. } | Error::RingRefused { .. } => Code::DataLoss,
            Error::Crypto(_) => Code::Internal,
        };
        let mut status = Status::new(code, message(&e));
        if let Error::ClaimRule(v) = &e
            && let Ok(value) = format!("{} (rule {})", v.field, v.rule).parse()
        {
            // For the audit record: the field and the rule, not the value.
            status
                .metadata_mut()
                .insert(crate::rpc::guard::CLAIM_RULE_HEADER, value);
        }
        status
    }
}

/// What the caller reads. Errors whose detail may hold a path, a KEK spec
/// (`file:/...`, `pkcs11:module=...`), SQL or a driver message say which
/// part failed and what to do; the detail goes to the server log only.
fn message(e: &Error) -> String {
    match e {
        Error::Store(inner) => {
            tracing::warn!(error = %inner, "store error");
            if disk_full(inner) {
                return "key store unavailable: its disk is full, so nothing was written; free \
                        space on the store's disk, then retry"
                    .to_owned();
            }
            e.to_string()
        }
        Error::Kek(inner) => {
            tracing::error!(error = %inner, "KEK unavailable");
            "KEK unavailable: the key-encryption key could not be opened or used; fix the KEK \
             provider in the server's configuration, then retry (the server log says why)"
                .to_owned()
        }
        Error::WrongKek(kek) => {
            tracing::error!(kek = %kek, "the configured KEK is not this store's KEK");
            "the configured KEK is not the key-encryption key of this store (its check value \
             does not open); nothing was changed and Signet stays sealed: configure the KEK the \
             store was sealed with (the server log names the one tried)"
                .to_owned()
        }
        _ => e.to_string(),
    }
}

/// Whether the store failed for want of disk space (SQLite's SQLITE_FULL,
/// PostgreSQL's "No space left on device"): the transaction was rolled
/// back, and the caller can be told what to fix.
fn disk_full(e: &crate::store::StoreError) -> bool {
    matches!(e, crate::store::StoreError::Unavailable(detail)
        if detail.contains("disk is full") || detail.contains("No space left on device"))
}

/// An INVALID_ARGUMENT status for a request field that fails a rule the RPC
/// layer checks itself (protobuf-level shapes).
pub(crate) fn invalid(field: &str, rule: &str) -> Status {
    Status::invalid_argument(format!("{field}: {rule}"))
}
