//! `signet.v1.Signer`: Sign, GetJwks, Verify, WatchJwks and
//! ReportVerificationFailures.

use std::{pin::Pin, time::Duration};

use metrics::{counter, histogram};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{convert, status::invalid};
use crate::{
    crypto::verify::Failure,
    keyring::{KeyManager, SignParams},
    pb::{self, signer_server::Signer},
    telemetry,
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

    fn jwks_response(&self, ring: &str) -> Result<pb::GetJwksResponse, Status> {
        let (set, infos) = self.keys.jwks(ring, "key_ring")?;
        let jwks_json = serde_json::to_string(&set)
            .map_err(|_| Status::internal("JWKS serialization failed"))?;
        Ok(pb::GetJwksResponse {
            jwks_json,
            keys: infos.iter().map(convert::key_info).collect(),
        })
    }
}

fn failure_from_proto(f: pb::VerifyFailure) -> Option<Failure> {
    Failure::ALL
        .into_iter()
        .find(|x| pb::VerifyFailure::from(*x) == f)
}

/// How often a JWKS watcher re-checks the set for changes that come from
/// time alone (a publication or removal instant passing), besides writes.
const WATCH_POLL: Duration = Duration::from_millis(500);

type JwksStream = Pin<Box<dyn Stream<Item = Result<pb::GetJwksResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Signer for SignerService {
    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        // The claim rules the access check found for this caller, if any.
        let request_grant = request
            .extensions()
            .get::<std::sync::Arc<crate::authz::SignGrant>>()
            .cloned();
        let r = request.into_inner();
        let ttl = r.ttl.as_ref().map(convert::ttl).transpose()?;
        let start = std::time::Instant::now();
        let result = self
            .keys
            .sign(SignParams {
                ring: &r.key_ring,
                claims_json: &r.claims_json,
                ttl,
                header_json: &r.header_json,
                grant: request_grant.as_deref(),
            })
            .await;
        let (alg, outcome) = match &result {
            Ok(s) => (s.alg.name(), "ok"),
            Err(crate::Error::InvalidArgument(_)) => ("-", "invalid"),
            Err(_) => ("-", "error"),
        };
        // Only existing rings become labels (see telemetry).
        let ring = telemetry::ring_label(&self.keys, &r.key_ring);
        counter!("signet_signs_total", "ring" => ring, "alg" => alg, "outcome" => outcome)
            .increment(1);
        let signed = result?;
        histogram!("signet_sign_duration_seconds", "alg" => alg)
            .record(start.elapsed().as_secs_f64());
        Ok(Response::new(pb::SignResponse {
            token: signed.token,
            kid: signed.kid.to_string(),
            alg: signed.alg.name().to_owned(),
            expires_at: Some(convert::timestamp(signed.expires_at)),
        }))
    }

    async fn get_jwks(
        &self,
        request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(
            self.jwks_response(&request.into_inner().key_ring)?,
        ))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let r = request.into_inner();
        let resp = match self.keys.verify(&r.key_ring, &r.token)? {
            Ok(v) => pb::VerifyResponse {
                valid: true,
                claims_json: serde_json::to_vec(&v.claims).unwrap_or_default(),
                kid: v.kid,
                alg: v.alg,
                failure: pb::VerifyFailure::Unspecified.into(),
                message: String::new(),
            },
            Err(rej) => {
                telemetry::verification_failure(&r.key_ring, rej.failure, "own", 1);
                tracing::info!(ring = %r.key_ring, reason = %rej.failure, kid = rej.kid.as_deref().unwrap_or("-"), "token failed verification");
                pb::VerifyResponse {
                    valid: false,
                    claims_json: Vec::new(),
                    kid: rej.kid.unwrap_or_default(),
                    alg: rej.alg.unwrap_or_default(),
                    failure: pb::VerifyFailure::from(rej.failure).into(),
                    message: rej.message,
                }
            }
        };
        Ok(Response::new(resp))
    }

    type WatchJwksStream = JwksStream;

    async fn watch_jwks(
        &self,
        request: Request<pb::WatchJwksRequest>,
    ) -> Result<Response<Self::WatchJwksStream>, Status> {
        let ring = request.into_inner().key_ring;
        let first = self.jwks_response(&ring)?;
        let keys = self.keys.clone();
        let mut changes = keys.subscribe();
        let stream = async_stream::try_stream! {
            let mut last = first.jwks_json.clone();
            yield first;
            let mut poll = tokio::time::interval(WATCH_POLL);
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break; // the server is shutting down
                        }
                    }
                    _ = poll.tick() => {}
                }
                let service = SignerService { keys: keys.clone() };
                let next = service.jwks_response(&ring)?;
                if next.jwks_json != last {
                    last = next.jwks_json.clone();
                    yield next;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_verification_failures(
        &self,
        request: Request<pb::ReportVerificationFailuresRequest>,
    ) -> Result<Response<pb::ReportVerificationFailuresResponse>, Status> {
        let r = request.into_inner();
        // The ring must exist: metric labels stay bounded to real rings.
        self.keys.ring(&r.key_ring, "key_ring")?;
        // Check every entry before counting any: a bad report counts nothing.
        let counts = r
            .counts
            .iter()
            .map(|c| {
                pb::VerifyFailure::try_from(c.reason)
                    .ok()
                    .and_then(failure_from_proto)
                    .map(|reason| (reason, c.count))
                    .ok_or_else(|| {
                        invalid("counts.reason", "must be one of the VerifyFailure reasons")
                    })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        for (reason, count) in counts {
            telemetry::verification_failure(&r.key_ring, reason, "reported", count);
            if count > 0 {
                // The verifier name is the caller's text: a `&str` field is
                // written escaped, so it cannot break the log line.
                tracing::info!(ring = %r.key_ring, verifier = r.verifier.as_str(), reason = %reason, count, "verifier reported failures");
            }
        }
        Ok(Response::new(pb::ReportVerificationFailuresResponse {}))
    }
}
