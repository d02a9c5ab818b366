//! The verifier-facing HTTP surface: the JWKS of each ring, and liveness.
//!
//! Verifiers fetch keys here without credentials; nothing private is
//! reachable from this router.

use std::future::Future;

use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

use crate::{Error, keyring::KeyManager};

/// The media type of a JWK Set (RFC 7517 section 8.5).
pub const JWK_SET_CONTENT_TYPE: &str = "application/jwk-set+json";

/// The ring served at `/.well-known/jwks.json`.
pub const DEFAULT_RING: &str = "default";

/// The HTTP routes.
pub fn router(keys: KeyManager) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(default_jwks))
        .route("/v1/rings/{ring}/jwks.json", get(ring_jwks))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(keys)
}

/// Serves [`router`] on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    keys: KeyManager,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(keys))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn default_jwks(State(keys): State<KeyManager>) -> Response {
    jwks(&keys, DEFAULT_RING)
}

async fn ring_jwks(State(keys): State<KeyManager>, Path(ring): Path<String>) -> Response {
    jwks(&keys, &ring)
}

fn jwks(keys: &KeyManager, ring: &str) -> Response {
    match keys.jwks(ring, "ring") {
        Ok((set, _)) => match serde_json::to_vec(&set) {
            Ok(body) => (
                [
                    (header::CONTENT_TYPE, JWK_SET_CONTENT_TYPE),
                    // Rotation takes effect at once in this release, so a
                    // cached set could lack the key that signs: revalidate.
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
                .into_response(),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "JWKS serialization failed",
            ),
        },
        Err(e @ (Error::RingNotFound(_) | Error::InvalidArgument(_))) => {
            error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
