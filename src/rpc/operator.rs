//! `signet.v1.Operator`: Status, Seal, Unseal.

use tonic::{Request, Response, Status};

use super::status::invalid;
use crate::{
    keyring::{self, KeyManager},
    pb::{self, operator_server::Operator},
};

/// The Operator service over a [`KeyManager`].
pub struct OperatorService {
    keys: KeyManager,
    audit: Option<super::AuditSlots>,
}

impl OperatorService {
    /// Serves `keys`, reporting on `audit`.
    pub fn new(keys: KeyManager, audit: Option<super::AuditSlots>) -> Self {
        Self { keys, audit }
    }

    fn status(&self, s: &keyring::Status) -> pb::StatusResponse {
        let mut out = status(s);
        if let Some(a) = &self.audit {
            let (seq, hash) = a.log.head();
            out.audit_head_seq = seq;
            out.audit_head_hash = hash;
            if let Some(key) = a.log.signing_key() {
                out.audit_public_key_pem = key.to_pem();
                out.audit_public_key_jwk = key.to_jwk().to_string();
            }
            if let Some((seq, hash)) = a.log.anchors().borrow().clone() {
                out.audit_checkpoint_seq = seq;
                out.audit_checkpoint_hash = hash;
            }
        }
        out
    }
}

fn status(s: &keyring::Status) -> pb::StatusResponse {
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    pb::StatusResponse {
        sealed: s.sealed,
        kek_provider_kind: s.kek_kind.to_owned(),
        kek_provider: s.kek_provider.clone(),
        store_kind: s.store_kind.to_owned(),
        rings: n(s.rings),
        keys: n(s.keys),
        loaded_keys: n(s.loaded_keys),
        broken_keys: n(s.broken_keys),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.status(&self.keys.status())))
    }

    async fn seal(
        &self,
        request: Request<pb::SealRequest>,
    ) -> Result<Response<pb::SealResponse>, Status> {
        let reason = request.into_inner().reason;
        if reason.trim().is_empty() {
            return Err(invalid(
                "reason",
                "is required to seal (say why; it is logged and audited)",
            ));
        }
        // A `&str` field, which the text log writes Debug-escaped (and the
        // JSON log as a JSON string): a newline in the caller's reason
        // cannot start a forged log line. (`%reason` would write it raw.)
        tracing::warn!(reason = reason.as_str(), "seal requested");
        let s = self.keys.seal().await;
        // The audit keys go with the others: digests and checkpoint
        // signatures wait for the next Unseal.
        if let Some(a) = &self.audit {
            a.key.store(None);
            a.log.set_signer(None);
        }
        Ok(Response::new(pb::SealResponse {
            status: Some(self.status(&s)),
        }))
    }

    async fn unseal(
        &self,
        _request: Request<pb::UnsealRequest>,
    ) -> Result<Response<pb::UnsealResponse>, Status> {
        let s = self.keys.unseal().await?;
        if let Some(a) = &self.audit {
            a.load_key(&self.keys).await?;
        }
        Ok(Response::new(pb::UnsealResponse {
            status: Some(self.status(&s)),
        }))
    }

    async fn audit_hash(
        &self,
        request: Request<pb::AuditHashRequest>,
    ) -> Result<Response<pb::AuditHashResponse>, Status> {
        let key = self
            .audit
            .as_ref()
            .and_then(|a| a.key.load_full())
            .ok_or_else(|| {
                Status::unavailable(
                    "no audit key: the service started sealed or without an audit log",
                )
            })?;
        Ok(Response::new(pb::AuditHashResponse {
            hmac: key.hmac_hex(request.into_inner().value.as_bytes()),
        }))
    }
}
