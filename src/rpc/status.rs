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
            | Error::Sealed
            | Error::Kek(_)
            | Error::WrongKek(_) => Code::Unavailable,
            Error::DataLoss { .. } => Code::DataLoss,
            Error::Crypto(_) => Code::Internal,
        };
        if let Error::Store(inner) = &e {
            // The detail stays in the server log.
            tracing::warn!(error = %inner, "store error");
        }
        let mut status = Status::new(code, e.to_string());
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

/// An INVALID_ARGUMENT status for a request field that fails a rule the RPC
/// layer checks itself (protobuf-level shapes).
pub(crate) fn invalid(field: &str, rule: &str) -> Status {
    Status::invalid_argument(format!("{field}: {rule}"))
}
