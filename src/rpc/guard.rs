//! The one place every RPC passes through before its handler: the caller's
//! identity is authorized for the RPC's action on its ring, and an audit
//! record is written for every outcome (allowed, denied, invalid, failed)
//! before any response leaves, fail-closed.
//!
//! The ring of a request is read from the protobuf message itself (field 1
//! of every ring-scoped request), so the decision never depends on anything
//! a handler does.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Frame;
use metrics::counter;
use prost::Message;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use tokio::sync::watch;

use crate::{
    audit::{AuditKey, AuditLog, AuditRecord, Outcome, code_name},
    authz::{SharedAuthz, SignGrant},
    pb,
    tls::PeerInfo,
};

/// Response header naming the claim rule that refused a Sign (field and
/// rule, never the value): the audit record's reason.
pub const CLAIM_RULE_HEADER: &str = "signet-claim-rule";

/// What an allowed request carries on: for Sign, the claim rules that
/// apply to its caller (`None`: no constraint).
pub type Grant = Option<Arc<SignGrant>>;

/// Decides whether a caller may perform an action on a ring.
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok(grant)` to allow; `Err(explanation)` to deny.
    fn authorize(&self, peer: &PeerInfo, action: &str, ring: &str) -> Result<Grant, String>;

    /// Whether every identified caller may do everything; with no audit
    /// log either, the guard then has nothing to decide or record.
    fn allows_everything(&self) -> bool {
        false
    }

    /// Changes when the rules do, so that open streams are re-checked.
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// Allows everything: `signet dev`, where the only caller is local.
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _: &PeerInfo, _: &str, _: &str) -> Result<Grant, String> {
        Ok(None)
    }

    fn allows_everything(&self) -> bool {
        true
    }
}

impl Authorizer for crate::authz::SharedAuthz {
    fn authorize(&self, peer: &PeerInfo, action: &str, ring: &str) -> Result<Grant, String> {
        let action: crate::authz::Action = action
            .parse()
            .map_err(|_| format!("unknown action {action}"))?;
        // One policy for both questions, even if a reload lands between.
        let policy = self.current();
        let decision = policy.check(&peer.names[..], action, ring);
        if !decision.allowed {
            return Err(decision.explanation);
        }
        Ok(if action == crate::authz::Action::Sign {
            policy.sign_grant(&peer.names[..], ring).map(Arc::new)
        } else {
            None
        })
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(SharedAuthz::changes(self))
    }
}

/// The action an RPC needs, and where its ring is.
#[derive(Clone, Copy)]
struct Route {
    action: &'static str,
    /// Whether field 1 of the request is the ring name; otherwise the
    /// action is service-wide (ring `*`).
    ring_field: bool,
    streaming: bool,
    /// Whether it changes state: an intent record is written first, and
    /// the action does not run if it cannot be.
    mutating: bool,
}

fn route(path: &str) -> Option<Route> {
    let r = |action, ring_field| {
        Some(Route {
            action,
            ring_field,
            streaming: false,
            mutating: false,
        })
    };
    let m = |action, ring_field| {
        Some(Route {
            action,
            ring_field,
            streaming: false,
            mutating: true,
        })
    };
    match path {
        "/signet.v1.Signer/Sign" => r("sign", true),
        "/signet.v1.Signer/GetJwks" => r("read", true),
        "/signet.v1.Signer/Verify" | "/signet.v1.Signer/ReportVerificationFailures" => {
            r("verify", true)
        }
        "/signet.v1.Signer/WatchJwks" => Some(Route {
            action: "read",
            ring_field: true,
            streaming: true,
            mutating: false,
        }),
        "/signet.v1.KeyAdmin/Rotate" => m("rotate", true),
        "/signet.v1.KeyAdmin/RevokeKey" => m("revoke", true),
        "/signet.v1.KeyAdmin/UpdatePolicy" => m("policy", true),
        "/signet.v1.KeyAdmin/ListKeys" | "/signet.v1.KeyAdmin/GetKeyRing" => r("read", true),
        "/signet.v1.KeyAdmin/CreateKeyRing" => m("admin", true),
        "/signet.v1.KeyAdmin/ListKeyRings" => r("read", false),
        "/signet.v1.Operator/Status" => r("read", false),
        "/signet.v1.Operator/Seal" => m("seal", false),
        "/signet.v1.Operator/Unseal" => m("unseal", false),
        "/signet.v1.Operator/AuditHash" => r("admin", false),
        p if p.starts_with("/signet.") => r("admin", false),
        // Health checks and reflection carry no secrets and name no ring.
        _ => None,
    }
}

/// Field 1 of a ring-scoped request.
#[derive(Clone, PartialEq, Message)]
struct RingField {
    #[prost(string, tag = "1")]
    ring: String,
}

/// The authorization and audit layer.
#[derive(Clone)]
pub struct Guard {
    authz: Arc<dyn Authorizer>,
    audit: Option<AuditLog>,
    /// Loaded at Unseal, dropped at Seal.
    audit_key: Option<Arc<arc_swap::ArcSwapOption<AuditKey>>>,
}

impl Guard {
    /// A guard deciding with `authz` and recording to `audit` (with claims
    /// digested under `audit_key`). Without an audit log nothing is
    /// recorded (tests of other layers only).
    pub fn new(
        authz: Arc<dyn Authorizer>,
        audit: Option<AuditLog>,
        audit_key: Option<Arc<arc_swap::ArcSwapOption<AuditKey>>>,
    ) -> Self {
        Self {
            authz,
            audit,
            audit_key,
        }
    }
}

impl<S> Layer<S> for Guard {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> GuardService<S> {
        GuardService {
            inner,
            guard: self.clone(),
        }
    }
}

/// [`Guard`] around a service.
#[derive(Clone)]
pub struct GuardService<S> {
    inner: S,
    guard: Guard,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The gRPC message in a request body: skip the 5-byte frame header.
fn message(frame: &[u8]) -> &[u8] {
    frame.get(5..).unwrap_or_default()
}

fn status_response(status: Status, request_id: &str) -> http::Response<Body> {
    let mut resp: http::Response<Body> = status.into_http();
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn grpc_code(headers: &http::HeaderMap, trailers: Option<&http::HeaderMap>) -> i32 {
    let from = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
    };
    from(headers)
        .or_else(|| trailers.and_then(from))
        .unwrap_or(0)
}

impl<S> Service<http::Request<Body>> for GuardService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The ready service handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let Some(route) = route(&path) else {
                return inner.call(req).await;
            };
            // Nothing to decide and nothing to record (tests, the in-process
            // benchmark): only insist on an identified connection.
            if guard.audit.is_none()
                && guard.authz.allows_everything()
                && req.extensions().get::<PeerInfo>().is_some()
            {
                return inner.call(req).await;
            }
            // This request will be recorded: a round about to be written
            // may wait a moment for its record (group commit).
            let mut announced = guard.audit.as_ref().map(AuditLog::announce);
            let request_id = B64.encode(crate::crypto::random_bytes::<12>().unwrap_or_default());
            let peer = req.extensions().get::<PeerInfo>().cloned();
            let (identity, peer_addr) = match &peer {
                Some(p) => (
                    p.identity.clone(),
                    p.addr.map(|a| a.to_string()).unwrap_or_default(),
                ),
                None => (String::new(), String::new()),
            };
            let (parts, body) = req.into_parts();
            let limit = super::MAX_REQUEST_BYTES + 5;
            let bytes = match Limited::new(body, limit).collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => {
                    // Recorded too: who sent what (no ring: the message was
                    // not read).
                    let status = Status::out_of_range(format!("request larger than {limit} bytes"));
                    let mut rec = AuditRecord::new(
                        path.trim_start_matches('/'),
                        Outcome::Invalid,
                        code_name(status.code() as i32),
                    );
                    rec.request_id = request_id.clone();
                    rec.peer = identity.clone();
                    rec.peer_addr = peer_addr.clone();
                    rec.reason = Some(format!("request larger than {limit} bytes"));
                    if let Err(s) = record(&guard, rec, &mut announced).await {
                        return Ok(status_response(s, &request_id));
                    }
                    return Ok(status_response(status, &request_id));
                }
            };
            let msg = message(&bytes);
            let ring = if route.ring_field {
                RingField::decode(msg).map(|r| r.ring).unwrap_or_default()
            } else {
                "*".to_owned()
            };
            let mut rec = AuditRecord::new(path.trim_start_matches('/'), Outcome::Ok, "OK");
            rec.request_id = request_id.clone();
            rec.peer = identity.clone();
            rec.peer_addr = peer_addr;
            rec.ring = ring.clone();
            let audit_key = guard.audit_key.as_ref().and_then(|k| k.load_full());
            detail_request(&path, msg, &mut rec, audit_key.as_deref());

            // Deny by default: a caller with no identity gets nothing.
            let decision = match &peer {
                None => Err("no authenticated identity".to_owned()),
                Some(p) => guard.authz.authorize(p, route.action, &ring),
            };
            let grant = match decision {
                Ok(grant) => grant,
                Err(why) => {
                    let status = if peer.is_none() {
                        Status::unauthenticated("no client certificate")
                    } else {
                        Status::permission_denied(format!(
                            "{identity:?} may not {} on ring {ring:?}",
                            route.action
                        ))
                    };
                    tracing::info!(identity = ?identity, action = route.action, ring = ?ring, why = ?why, "denied");
                    rec.outcome = Outcome::Denied;
                    rec.code = code_name(status.code() as i32).to_owned();
                    rec.reason.get_or_insert(why);
                    if let Err(s) = record(&guard, rec, &mut announced).await {
                        return Ok(status_response(s, &request_id));
                    }
                    return Ok(status_response(status, &request_id));
                }
            };

            // Intent before action: a change the log cannot announce does
            // not happen.
            if route.mutating && guard.audit.is_some() {
                let intent = AuditRecord {
                    outcome: Outcome::Intent,
                    code: "INTENT".to_owned(),
                    ..rec.clone()
                };
                if let Err(s) = record(&guard, intent, &mut announced).await {
                    return Ok(status_response(s, &request_id));
                }
            }
            let mut parts = parts;
            if let Some(grant) = grant {
                parts.extensions.insert(grant);
            }
            let req = http::Request::from_parts(
                parts,
                Body::new(http_body_util::Full::new(bytes.clone())),
            );
            let resp = inner.call(req).await?;
            if route.streaming {
                // The stream's opening is recorded; while it is open, each
                // policy reload checks its caller again.
                if let Err(s) = record(&guard, rec.clone(), &mut announced).await {
                    return Ok(status_response(s, &request_id));
                }
                let mut resp = match (guard.authz.changes(), peer) {
                    (Some(changes), Some(peer)) => {
                        let watched = Watched {
                            guard: guard.clone(),
                            peer,
                            action: route.action,
                            ring,
                            opened: rec,
                        };
                        resp.map(|body| watched.wrap(body, changes))
                    }
                    _ => resp,
                };
                if let Ok(v) = http::HeaderValue::from_str(&request_id) {
                    resp.headers_mut().insert("x-request-id", v);
                }
                return Ok(resp);
            }
            // Unary: hold the response until its record is written.
            let (mut parts, body) = resp.into_parts();
            let collected = match body.collect().await {
                Ok(c) => c,
                Err(_) => {
                    let status = Status::internal("response failed");
                    rec.outcome = Outcome::Error;
                    rec.code = code_name(status.code() as i32).to_owned();
                    rec.reason = Some("the response could not be read".to_owned());
                    if let Err(s) = record(&guard, rec, &mut announced).await {
                        return Ok(status_response(s, &request_id));
                    }
                    return Ok(status_response(status, &request_id));
                }
            };
            let trailers = collected.trailers().cloned();
            let data = collected.to_bytes();
            let code = grpc_code(&parts.headers, trailers.as_ref());
            rec.code = code_name(code).to_owned();
            rec.outcome = Outcome::from_code(code);
            if let Some(rule) = parts
                .headers
                .get(CLAIM_RULE_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                rec.reason = Some(format!("claim rule: {rule}"));
            }
            if code == 0 {
                detail_response(&path, message(&data), &mut rec, audit_key.as_deref());
            }
            if let Err(s) = record(&guard, rec, &mut announced).await {
                // Fail closed: the caller gets no token and no result.
                return Ok(status_response(s, &request_id));
            }
            if let Ok(v) = http::HeaderValue::from_str(&request_id) {
                parts.headers.insert("x-request-id", v);
            }
            if data.is_empty() && trailers.is_none() {
                // A trailers-only answer (an error: its status is in the
                // headers) stays one: a body known to be empty lets the
                // HEADERS frame end the stream. Replayed as a stream, the
                // end came in a frame after it; a client done at the
                // headers reset the stream meanwhile, and a connection
                // past h2's limit on such resets was torn down with
                // ENHANCE_YOUR_CALM (every call on it failing).
                return Ok(http::Response::from_parts(parts, Body::empty()));
            }
            let mut frames: Vec<Result<Frame<Bytes>, Status>> = vec![Ok(Frame::data(data))];
            if let Some(t) = trailers {
                frames.push(Ok(Frame::trailers(t)));
            }
            let body = Body::new(StreamBody::new(tokio_stream::iter(frames)));
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// An open stream whose caller is checked again at each policy reload.
struct Watched {
    guard: Guard,
    peer: PeerInfo,
    action: &'static str,
    ring: String,
    /// The record of the stream's opening, reused for its end.
    opened: AuditRecord,
}

impl Watched {
    /// Passes `body` through until a reload withdraws the grant; then ends
    /// the stream with PERMISSION_DENIED and records why.
    fn wrap(self, mut body: Body, mut changes: watch::Receiver<u64>) -> Body {
        changes.mark_unchanged();
        let stream = async_stream::stream! {
            loop {
                tokio::select! {
                    frame = body.frame() => match frame {
                        Some(frame) => yield frame,
                        None => break,
                    },
                    changed = changes.changed() => {
                        if changed.is_err() {
                            // No more reloads can come: pass the rest through.
                            while let Some(frame) = body.frame().await {
                                yield frame;
                            }
                            break;
                        }
                        let Err(why) = self.guard.authz.authorize(&self.peer, self.action, &self.ring) else {
                            continue;
                        };
                        tracing::info!(identity = ?self.peer.identity, ring = ?self.ring, why = ?why, "stream closed: grant withdrawn by a policy reload");
                        let mut rec = self.opened.clone();
                        rec.outcome = Outcome::Denied;
                        rec.code = code_name(tonic::Code::PermissionDenied as i32).to_owned();
                        rec.reason = Some(format!("policy reload: {why}"));
                        let _ = record(&self.guard, rec, &mut None).await;
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("7"));
                        trailers.insert(
                            "grpc-message",
                            http::HeaderValue::from_static("the policy was reloaded and no longer grants this stream"),
                        );
                        yield Ok(Frame::trailers(trailers));
                        break;
                    }
                }
            }
        };
        Body::new(StreamBody::new(stream))
    }
}

/// Writes `rec`; a failure becomes UNAVAILABLE "audit unavailable".
/// The request's announcement (if still held) ends as its record goes out.
async fn record(
    guard: &Guard,
    rec: AuditRecord,
    announced: &mut Option<crate::audit::Announced>,
) -> Result<(), Status> {
    announced.take();
    let Some(log) = &guard.audit else {
        return Ok(());
    };
    match log.append(rec).await {
        Ok(_) => Ok(()),
        Err(e) => {
            counter!("signet_audit_failures_total").increment(1);
            tracing::error!(error = %e, "audit record not written; refusing the request");
            Err(Status::unavailable("audit unavailable"))
        }
    }
}

/// Request fields worth recording: digests of claims and `sub`, admin
/// reasons, the kid acted on. Never raw claims.
/// The one claim a record needs from a claims set, read without building
/// a JSON tree of the rest (this runs on every audited Sign). A non-string
/// value reads as absent, as before.
#[derive(serde::Deserialize)]
struct OneClaim<'a> {
    #[serde(default, borrow, deserialize_with = "string_or_none")]
    sub: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "string_or_none")]
    jti: Option<std::borrow::Cow<'a, str>>,
}

fn string_or_none<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::borrow::Cow<'de, str>>, D::Error> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Any<'a> {
        #[serde(borrow)]
        Text(std::borrow::Cow<'a, str>),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Any::deserialize(d)? {
        Any::Text(s) => Some(s),
        Any::Other(_) => None,
    })
}

fn detail_request(path: &str, msg: &[u8], rec: &mut AuditRecord, key: Option<&AuditKey>) {
    match path {
        "/signet.v1.Signer/Sign" => {
            if let (Ok(r), Some(key)) = (pb::SignRequest::decode(msg), key) {
                rec.claims_hmac = Some(key.hmac_hex(&r.claims_json));
                let sub = serde_json::from_slice::<OneClaim<'_>>(&r.claims_json)
                    .ok()
                    .and_then(|c| c.sub);
                rec.sub_hmac = sub.map(|s| key.hmac_hex(s.as_bytes()));
            }
        }
        "/signet.v1.KeyAdmin/Rotate" => {
            if let Ok(r) = pb::RotateRequest::decode(msg) {
                rec.reason = Some(format!(
                    "{}{}",
                    match (r.immediate, r.fresh) {
                        (true, true) => "immediate, fresh key: ",
                        (true, false) => "immediate: ",
                        _ => "",
                    },
                    r.reason
                ));
            }
        }
        "/signet.v1.KeyAdmin/RevokeKey" => {
            if let Ok(r) = pb::RevokeKeyRequest::decode(msg) {
                rec.kid = r.kid;
                rec.reason = Some(r.reason);
            }
        }
        "/signet.v1.Operator/Seal" => {
            if let Ok(r) = pb::SealRequest::decode(msg) {
                rec.reason = Some(r.reason);
            }
        }
        _ => {}
    }
}

/// Response fields worth recording: the kid that signed, and the token's
/// `exp` and `jti` (never the token or its signature).
fn detail_response(path: &str, msg: &[u8], rec: &mut AuditRecord, _key: Option<&AuditKey>) {
    match path {
        "/signet.v1.Signer/Sign" => {
            if let Ok(r) = pb::SignResponse::decode(msg) {
                rec.kid = r.kid;
                rec.exp = r.expires_at.map(|t| t.seconds);
                let payload = r.token.split('.').nth(1).and_then(|p| B64.decode(p).ok());
                rec.jti = payload.and_then(|p| {
                    serde_json::from_slice::<OneClaim<'_>>(&p)
                        .ok()?
                        .jti
                        .map(std::borrow::Cow::into_owned)
                });
            }
        }
        "/signet.v1.KeyAdmin/Rotate" => {
            if let Ok(r) = pb::RotateResponse::decode(msg) {
                rec.kid = r.new_key.map(|k| k.kid).unwrap_or_default();
                if r.promoted {
                    rec.reason = Some(format!(
                        "{}; promoted the published successor",
                        rec.reason.as_deref().unwrap_or_default()
                    ));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use hyper::body::Body as _;
    use prost::Message as _;

    use super::*;
    use crate::{
        audit::{AuditConfig, SinkConfig},
        clock::SystemClock,
        crypto::{Algorithm, KeySpec},
        keyring::KeyManager,
        pb::signer_server::SignerServer,
        rpc::SignerService,
    };

    /// A Sign call as a client sends it: one length-prefixed message.
    fn sign_call(claims: &[u8]) -> http::Request<Body> {
        let msg = pb::SignRequest {
            key_ring: "r".into(),
            claims_json: claims.to_vec(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&msg);
        let mut req = http::Request::post("http://local/signet.v1.Signer/Sign")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Body::new(http_body_util::Full::new(Bytes::from(frame))))
            .unwrap();
        req.extensions_mut().insert(PeerInfo {
            identity: "local".into(),
            names: vec!["local".into()],
            addr: None,
        });
        req
    }

    /// An error the service answers with its status in the headers leaves
    /// the guard the same way: a body known to be empty, so the HEADERS
    /// frame ends the stream. Replayed as a stream (an empty DATA frame
    /// after the headers), clients done at the headers reset it, and past
    /// h2's limit on such resets the connection went down with
    /// ENHANCE_YOUR_CALM, failing every call on it (`signet bench` with
    /// denied claims saw RESOURCE_EXHAUSTED and CANCELLED among the
    /// PERMISSION_DENIED).
    #[tokio::test]
    async fn an_error_answer_ends_with_its_headers_and_a_token_keeps_its_trailers() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyManager::ephemeral(Arc::new(SystemClock)).await.unwrap();
        keys.create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
            .await
            .unwrap();
        let log = AuditLog::open(AuditConfig::new(vec![SinkConfig::file(
            dir.path().join("audit.log"),
        )]))
        .await
        .unwrap();
        let guard = Guard::new(Arc::new(AllowAll), Some(log), None);
        let mut svc = guard.layer(SignerServer::new(SignerService::new(keys)));

        let resp = svc.call(sign_call(b"not json")).await.unwrap();
        let code = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.as_bytes().to_vec());
        assert_eq!(code.as_deref(), Some(&b"3"[..]), "{:?}", resp.headers());
        assert!(resp.headers().contains_key("x-request-id"));
        assert!(
            resp.body().is_end_stream(),
            "a trailers-only answer must end with its headers"
        );

        // A token still comes as its message and then the trailers.
        let resp = svc.call(sign_call(br#"{"sub":"a"}"#)).await.unwrap();
        assert!(resp.headers().get("grpc-status").is_none());
        let body = resp.into_body().collect().await.unwrap();
        let trailers = body.trailers().cloned().expect("trailers");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert!(body.to_bytes().len() > 5, "the token's message");
    }
}
