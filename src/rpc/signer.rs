//! `signet.v1.Signer`: Sign and GetJwks.

use tonic::{Request, Response, Status};

use super::convert;
use crate::{
    keyring::{KeyManager, SignParams},
    pb::{self, signer_server::Signer},
};

/// The Signer service over a [`KeyManager`].
pub struct SignerService {
    keys: KeyManager,
}

impl SignerService {
    /// Serves `keys`.
    pub fn new(keys: KeyManager) -> Self {
        Self { keys }
    }
}

#[tonic::async_trait]
impl Signer for SignerService {
    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let r = request.into_inner();
        let ttl = r.ttl.as_ref().map(convert::ttl).transpose()?;
        let signed = self
            .keys
            .sign(SignParams {
                ring: &r.key_ring,
                claims_json: &r.claims_json,
                ttl,
                header_json: &r.header_json,
            })
            .await?;
        Ok(Response::new(pb::SignResponse {
            token: signed.token,
            kid: signed.kid.to_string(),
            alg: signed.alg.name().to_owned(),
            expires_at: Some(signed.expires_at.to_proto()),
        }))
    }

    async fn get_jwks(
        &self,
        request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let r = request.into_inner();
        let (set, infos) = self.keys.jwks(&r.key_ring, "key_ring")?;
        let jwks_json = serde_json::to_string(&set)
            .map_err(|_| Status::internal("JWKS serialization failed"))?;
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json,
            keys: infos.iter().map(convert::key_info).collect(),
        }))
    }
}
