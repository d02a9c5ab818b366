//! `signet.v1.KeyAdmin`: CreateKeyRing, Rotate, ListKeys.

use tonic::{Request, Response, Status};

use super::convert;
use crate::{
    Error,
    crypto::{Algorithm, KeySpec, claims::InputError},
    keyring::KeyManager,
    pb::{self, key_admin_server::KeyAdmin},
};

/// The KeyAdmin service over a [`KeyManager`].
pub struct KeyAdminService {
    keys: KeyManager,
}

impl KeyAdminService {
    /// Serves `keys`.
    pub fn new(keys: KeyManager) -> Self {
        Self { keys }
    }
}

#[tonic::async_trait]
impl KeyAdmin for KeyAdminService {
    async fn create_key_ring(
        &self,
        request: Request<pb::CreateKeyRingRequest>,
    ) -> Result<Response<pb::CreateKeyRingResponse>, Status> {
        let r = request.into_inner();
        let spec = r
            .algorithm
            .parse::<Algorithm>()
            .and_then(|alg| KeySpec::new(alg, r.rsa_bits))
            .map_err(|e| Error::InvalidArgument(InputError::from(e)))?;
        let ring = self.keys.create_ring(&r.name, spec).await?;
        Ok(Response::new(pb::CreateKeyRingResponse {
            ring: Some(convert::ring_info(&ring)),
        }))
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        let r = request.into_inner();
        let (new, old) = self.keys.rotate(&r.key_ring).await?;
        Ok(Response::new(pb::RotateResponse {
            new_key: Some(convert::key_info(&new)),
            previous_key: old.as_ref().map(convert::key_info),
        }))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let r = request.into_inner();
        let ring = self.keys.ring_info(&r.key_ring, "key_ring")?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: ring.keys.iter().map(convert::key_info).collect(),
        }))
    }
}
