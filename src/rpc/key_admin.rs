//! `signet.v1.KeyAdmin`: CreateKeyRing, Rotate, RevokeKey, GetKeyRing,
//! UpdatePolicy, ListKeyRings, ListKeys.

use tonic::{Request, Response, Status};

use super::{convert, status::invalid};
use crate::{
    Error,
    crypto::{Algorithm, KeySpec, claims::InputError},
    keyring::{KeyManager, RequestId},
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
        let issuer = convert::issuer_from(&r.issuer)?;
        let ring = self
            .keys
            .create_ring_with_issuer(&r.name, spec, issuer)
            .await?;
        Ok(Response::new(pb::CreateKeyRingResponse {
            ring: Some(convert::ring_info(&ring)),
        }))
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        let r = request.into_inner();
        if r.immediate && r.reason.trim().is_empty() {
            return Err(invalid(
                "reason",
                "is required for an immediate (emergency) rotation",
            ));
        }
        let request_id = RequestId::parse_optional(&r.request_id, "request_id")
            .map_err(|e| Status::from(Error::from(e)))?;
        if r.fresh && !r.immediate {
            return Err(invalid("fresh", "applies to an immediate rotation only"));
        }
        let (new, old) = self
            .keys
            .rotate_with(
                &r.key_ring,
                r.immediate,
                r.fresh,
                &r.reason,
                request_id.as_ref(),
            )
            .await?;
        // A promoted successor was published before it was made to sign.
        let promoted = r.immediate && new.timeline.publish_at < new.timeline.activate_at;
        Ok(Response::new(pb::RotateResponse {
            new_key: Some(convert::key_info(&new)),
            previous_key: old.as_ref().map(convert::key_info),
            promoted,
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let r = request.into_inner();
        if r.reason.trim().is_empty() {
            return Err(invalid("reason", "is required for a revocation"));
        }
        if r.kid.is_empty() {
            return Err(invalid("kid", "is required"));
        }
        let key = self.keys.revoke(&r.key_ring, &r.kid, &r.reason).await?;
        Ok(Response::new(pb::RevokeKeyResponse {
            key: Some(convert::key_info(&key)),
        }))
    }

    async fn get_key_ring(
        &self,
        request: Request<pb::GetKeyRingRequest>,
    ) -> Result<Response<pb::GetKeyRingResponse>, Status> {
        let r = request.into_inner();
        let ring = self.keys.ring_info(&r.key_ring, "key_ring")?;
        Ok(Response::new(pb::GetKeyRingResponse {
            ring: Some(convert::ring_info(&ring)),
        }))
    }

    async fn update_policy(
        &self,
        request: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::UpdatePolicyResponse>, Status> {
        let r = request.into_inner();
        let mut policy = r
            .policy
            .as_ref()
            .ok_or_else(|| invalid("policy", "is required"))
            .and_then(convert::policy_from)?;
        // Unset keeps the ring's issuer, so a client that knows nothing of
        // issuers cannot drop one by changing a duration.
        policy.issuer = match r.issuer.as_deref() {
            Some(text) => convert::issuer_from(text)?,
            None => self.keys.ring_info(&r.key_ring, "key_ring")?.policy.issuer,
        };
        let warnings = self.keys.update_policy(&r.key_ring, policy.clone()).await?;
        Ok(Response::new(pb::UpdatePolicyResponse {
            policy: Some(convert::policy(&policy)),
            warnings: warnings.iter().map(ToString::to_string).collect(),
            issuer: convert::issuer(&policy),
        }))
    }

    async fn list_key_rings(
        &self,
        _request: Request<pb::ListKeyRingsRequest>,
    ) -> Result<Response<pb::ListKeyRingsResponse>, Status> {
        Ok(Response::new(pb::ListKeyRingsResponse {
            rings: self
                .keys
                .ring_infos()
                .iter()
                .map(convert::ring_info)
                .collect(),
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
