//! `signet.v1.Operator`: Status, Seal, Unseal.

use tonic::{Request, Response, Status};

use crate::{
    keyring::{self, KeyManager},
    pb::{self, operator_server::Operator},
};

/// The Operator service over a [`KeyManager`].
pub struct OperatorService {
    keys: KeyManager,
}

impl OperatorService {
    /// Serves `keys`.
    pub fn new(keys: KeyManager) -> Self {
        Self { keys }
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
    }
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(status(&self.keys.status())))
    }

    async fn seal(
        &self,
        request: Request<pb::SealRequest>,
    ) -> Result<Response<pb::SealResponse>, Status> {
        let reason = request.into_inner().reason;
        tracing::warn!(reason = %reason, "seal requested");
        let s = self.keys.seal().await;
        Ok(Response::new(pb::SealResponse {
            status: Some(status(&s)),
        }))
    }

    async fn unseal(
        &self,
        _request: Request<pb::UnsealRequest>,
    ) -> Result<Response<pb::UnsealResponse>, Status> {
        let s = self.keys.unseal().await?;
        Ok(Response::new(pb::UnsealResponse {
            status: Some(status(&s)),
        }))
    }
}
