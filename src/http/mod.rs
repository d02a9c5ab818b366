//! The verifier-facing HTTP surface: each ring's JWKS with caching headers
//! done right, its OIDC discovery document and keys as PEM, health,
//! readiness and metrics.
//!
//! Verifiers fetch keys here without credentials; nothing private is
//! reachable from this router. JWKS bodies are served from prepared bytes,
//! rebuilt only when a ring's published key set changes.
//!
//! - `serve`: our accept loop, with header and idle timeouts, a connection
//!   cap and a shutdown deadline ([`HttpLimits`]).
//! - `tls`: HTTPS on the listener (`[http_tls]`), reloaded on SIGHUP.
//! - `discovery`: `/.well-known/openid-configuration` of rings with an
//!   issuer, and `/v1/rings/{ring}/keys/{kid}.pem`.
//! - `status`: the read-only status page of the admin listener.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use metrics::counter;
use tokio::net::TcpListener;

use crate::{Error, keyring::KeyManager, telemetry};

mod discovery;
mod serve;
pub mod status;
mod tls;

pub use serve::{HttpLimits, serve_with};
pub use tls::{HttpTlsFiles, HttpsAcceptor};

/// The media type of a JWK Set (RFC 7517 section 8.5).
pub const JWK_SET_CONTENT_TYPE: &str = "application/jwk-set+json";

/// The ring served at `/.well-known/jwks.json`.
pub const DEFAULT_RING: &str = "default";

/// A ring's JWKS, ready to send.
struct Prepared {
    generation: u64,
    kids: Vec<String>,
    body: Bytes,
    etag: HeaderValue,
}

#[derive(Clone)]
struct AppState {
    keys: KeyManager,
    /// Prepared bodies per ring. A std mutex: held only to clone or replace
    /// an entry, never across an await.
    prepared: Arc<Mutex<HashMap<String, Arc<Prepared>>>>,
}

/// The HTTP routes, `/metrics` included.
pub fn router(keys: KeyManager) -> Router {
    router_with(keys, true)
}

/// Only `/metrics`, for a listener of its own (`listen.metrics`).
pub fn metrics_router(keys: KeyManager) -> Router {
    let _ = telemetry::metrics_handle();
    let state = AppState {
        keys,
        prepared: Arc::new(Mutex::new(HashMap::new())),
    };
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The admin listener's routes (`listen.metrics`): `/metrics` and the
/// status page ([`status`]), which shows the chain of `audit` when given.
pub fn admin_router(keys: KeyManager, audit: Option<crate::audit::AuditLog>) -> Router {
    metrics_router(keys.clone()).merge(status::router(keys, audit))
}

/// The verifier routes, with `/metrics` only if `with_metrics`.
pub fn router_with(keys: KeyManager, with_metrics: bool) -> Router {
    // Installs the recorder on first use so /metrics always has data.
    let _ = telemetry::metrics_handle();
    let state = AppState {
        keys,
        prepared: Arc::new(Mutex::new(HashMap::new())),
    };
    let router = Router::new()
        .route("/.well-known/jwks.json", get(default_jwks))
        .route("/v1/rings/{ring}/jwks.json", get(ring_jwks))
        // `{issuer}/.well-known/jwks.json` is what discovery documents name
        // as jwks_uri, so a ring's issuer may be its /v1/rings/{ring} prefix.
        .route("/v1/rings/{ring}/.well-known/jwks.json", get(ring_jwks))
        .route(
            "/.well-known/openid-configuration",
            get(discovery::default_configuration),
        )
        .route(
            "/v1/rings/{ring}/.well-known/openid-configuration",
            get(discovery::ring_configuration),
        )
        .route("/v1/rings/{ring}/keys/{file}", get(discovery::key_pem))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    let router = if with_metrics {
        router.route("/metrics", get(metrics))
    } else {
        router
    };
    router.with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    keys: KeyManager,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(keys), shutdown).await
}

/// Serves `router` on `listener` in plain HTTP with the default
/// [`HttpLimits`] until `shutdown` completes.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, HttpLimits::default(), None, shutdown).await
}

async fn default_jwks(State(s): State<AppState>, headers: HeaderMap) -> Response {
    jwks(&s, DEFAULT_RING, &headers)
}

async fn ring_jwks(
    State(s): State<AppState>,
    Path(ring): Path<String>,
    headers: HeaderMap,
) -> Response {
    jwks(&s, &ring, &headers)
}

/// How long a verifier may cache what it fetched about `ring` at `now`: the
/// ring's `jwks_max_age`, but never past the next lifecycle change, so no
/// verifier holds a set that lacks a key about to sign; a little random
/// jitter spreads a fleet's refreshes.
fn max_age(ring: &crate::keyring::Ring, now: crate::clock::UnixTime) -> u64 {
    let until_change = ring.next_change(now).map_or(u64::MAX, |t| {
        u64::try_from(t.as_secs() - now.as_secs()).unwrap_or(0)
    });
    let max_age = ring
        .record()
        .policy
        .jwks_max_age
        .as_secs()
        .min(until_change);
    let jitter_cap = (max_age / 10).min(30);
    let jitter = if jitter_cap == 0 {
        0
    } else {
        u64::from(
            crate::crypto::random_bytes::<2>()
                .map(u16::from_le_bytes)
                .unwrap_or(0),
        ) % (jitter_cap + 1)
    };
    max_age - jitter
}

/// A strong ETag: the base64url SHA-256 of `body`, quoted.
fn etag_of(body: &[u8]) -> HeaderValue {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
    HeaderValue::from_str(&format!("\"{}\"", B64.encode(digest.as_ref())))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// `body` as `content_type` with `Cache-Control: public, max-age` and its
/// ETag, or `304 Not Modified` when `If-None-Match` names that ETag (or
/// `*`).
fn cacheable(
    headers: &HeaderMap,
    etag: &HeaderValue,
    max_age: u64,
    content_type: &'static str,
    body: Bytes,
) -> (StatusCode, Response) {
    let cache_control = HeaderValue::from_str(&format!("public, max-age={max_age}"))
        .unwrap_or_else(|_| HeaderValue::from_static("no-cache"));
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.as_bytes() == etag.as_bytes()
        });
    let mut out = HeaderMap::new();
    out.insert(header::ETAG, etag.clone());
    out.insert(header::CACHE_CONTROL, cache_control);
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            (StatusCode::NOT_MODIFIED, out).into_response(),
        );
    }
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    (StatusCode::OK, (StatusCode::OK, out, body).into_response())
}

/// The ring's prepared JWKS and the max-age to serve it with; `None` while
/// the ring publishes no key at all.
fn prepare(s: &AppState, ring_name: &str) -> Result<Option<(Arc<Prepared>, u64)>, Error> {
    let ring = s.keys.ring(ring_name, "ring")?;
    let now = s.keys.now();
    let kids: Vec<String> = ring
        .record()
        .keys
        .iter()
        .filter(|k| ring.is_published(k, now))
        .map(|k| k.kid.to_string())
        .collect();
    if kids.is_empty() {
        return Ok(None);
    }
    let generation = ring.record().generation;
    let max_age = max_age(&ring, now);

    let mut cache = s.prepared.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = cache.get(ring_name)
        && p.generation == generation
        && p.kids == kids
    {
        return Ok(Some((p.clone(), max_age)));
    }
    let body = Bytes::from(serde_json::to_vec(&ring.jwks(now)).unwrap_or_default());
    let etag = etag_of(&body);
    let p = Arc::new(Prepared {
        generation,
        kids,
        body,
        etag,
    });
    cache.insert(ring_name.to_owned(), p.clone());
    Ok(Some((p, max_age)))
}

fn jwks(s: &AppState, ring: &str, headers: &HeaderMap) -> Response {
    // A replica that lost the store for longer than its bound may publish a
    // key revoked elsewhere: 503, not to be stored, so verifiers keep the
    // set they had (or fetch from a replica that is current).
    if let Err(e) = s.keys.check_fresh() {
        counter!("signet_jwks_requests_total", "status" => "503").increment(1);
        return unavailable(&e.to_string());
    }
    let (p, max_age) = match prepare(s, ring) {
        Ok(Some(x)) => x,
        // An empty set would be cached by verifiers for max-age, and every
        // token verified against it would fail: answer 503, not to be
        // stored, so they keep their last good set and retry. A server that
        // started sealed has verified no key yet, so it publishes none.
        Ok(None) => {
            counter!("signet_jwks_requests_total", "status" => "503").increment(1);
            let message = if s.keys.is_sealed() {
                format!(
                    "sealed: no key of ring {ring} has been verified since the server started; \
                     its JWKS is served once the server is unsealed"
                )
            } else {
                format!("ring {ring} has no verified key to publish (the server log says why)")
            };
            return unavailable(&message);
        }
        Err(e @ (Error::RingNotFound(_) | Error::InvalidArgument(_))) => {
            counter!("signet_jwks_requests_total", "status" => "404").increment(1);
            return error(StatusCode::NOT_FOUND, &e.to_string());
        }
        Err(e) => {
            counter!("signet_jwks_requests_total", "status" => "503").increment(1);
            return unavailable(&e.to_string());
        }
    };
    let (status, response) = cacheable(
        headers,
        &p.etag,
        max_age,
        JWK_SET_CONTENT_TYPE,
        p.body.clone(),
    );
    counter!("signet_jwks_requests_total", "status" => status.as_str().to_owned()).increment(1);
    response
}

/// How long readiness waits for the store before calling it unreachable:
/// load balancers time their checks out after a few seconds, and a down
/// database must read as "degraded", not as a hung replica.
const READY_STORE_TIMEOUT: Duration = Duration::from_secs(1);

/// Readiness: 503 while sealed (nothing to sign with) or stale (the store
/// unread for longer than `store.max_staleness`); 200 `ready` with the
/// store answering; 200 `degraded: ...` without it within the bound,
/// because the replica still signs with the keys it holds and serves their
/// JWKS, and taking every replica out of a load balancer during a short
/// database outage would turn it into a signing outage.
async fn readyz(State(s): State<AppState>) -> Response {
    if s.keys.is_sealed() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "sealed: run `signet unseal`",
        );
    }
    if let Err(e) = s.keys.check_fresh() {
        return unavailable(&format!("stale: {e}"));
    }
    // The cause (host, driver error) is for the server log, not for an
    // unauthenticated endpoint.
    if let Ok(Ok(())) = tokio::time::timeout(READY_STORE_TIMEOUT, s.keys.store_ready()).await {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let body = "degraded: key store unreachable (the server log says why); signing with the \
                keys held and serving their JWKS; rotation and admin writes answer \
                UNAVAILABLE until it returns\n";
    (StatusCode::OK, body).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry::render(&s.keys),
    )
        .into_response()
}

/// 503 with `Cache-Control: no-store`, so no cache keeps the refusal.
fn unavailable(message: &str) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
