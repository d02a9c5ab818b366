//! What verifiers that do not read a bare JWKS ask for: the OpenID Connect
//! discovery document of a ring with an issuer, and each published key as
//! SPKI PEM.
//!
//! Both are public data derived from what the JWKS route serves, under the
//! same rules: a stale replica answers 503 (`no-store`), and responses
//! carry the JWKS's `Cache-Control: max-age` (never past the ring's next
//! lifecycle change) and a strong ETag with `304` support.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};

use super::{AppState, DEFAULT_RING, cacheable, error, etag_of, max_age, unavailable};
use crate::{Error, crypto::Spki as _};

/// The media type of the discovery document (OIDC Discovery section 4.2).
const DISCOVERY_CONTENT_TYPE: &str = "application/json";

/// The media type of a PEM file.
const PEM_CONTENT_TYPE: &str = "application/x-pem-file";

pub(super) async fn default_configuration(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Response {
    configuration(&s, DEFAULT_RING, &headers)
}

pub(super) async fn ring_configuration(
    State(s): State<AppState>,
    Path(ring): Path<String>,
    headers: HeaderMap,
) -> Response {
    configuration(&s, &ring, &headers)
}

/// The discovery document of a ring with an issuer: the members OIDC
/// Discovery 1.0 section 3 requires of a provider, less the endpoints
/// Signet does not have (it signs what its callers ask for; it has no
/// authorization or token endpoint). `jwks_uri` is
/// `{issuer}/.well-known/jwks.json`, which Signet serves at `/` for the
/// default ring and under `/v1/rings/{ring}` for every ring.
fn document(issuer: &crate::keyring::Issuer, alg: crate::crypto::Algorithm) -> Bytes {
    let doc = serde_json::json!({
        "issuer": issuer.as_str(),
        "jwks_uri": issuer.jwks_uri(),
        "id_token_signing_alg_values_supported": [alg.name()],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    });
    Bytes::from(doc.to_string())
}

fn configuration(s: &AppState, ring_name: &str, headers: &HeaderMap) -> Response {
    if let Err(e) = s.keys.check_fresh() {
        return unavailable(&e.to_string());
    }
    let ring = match s.keys.ring(ring_name, "ring") {
        Ok(ring) => ring,
        Err(e @ (Error::RingNotFound(_) | Error::InvalidArgument(_))) => {
            return error(StatusCode::NOT_FOUND, &e.to_string());
        }
        Err(e) => return unavailable(&e.to_string()),
    };
    let Some(issuer) = &ring.record().policy.issuer else {
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "ring {ring_name} has no issuer, so no discovery document; set one with \
                 `signet policy set --ring {ring_name} --issuer URL`"
            ),
        );
    };
    let body = document(issuer, ring.record().spec.alg());
    let etag = etag_of(&body);
    let max_age = max_age(&ring, s.keys.now());
    cacheable(headers, &etag, max_age, DISCOVERY_CONTENT_TYPE, body).1
}

/// Whether `kid` could be a key id: an RFC 7638 thumbprint is a SHA-256,
/// base64url without padding, so 43 characters of that alphabet.
fn plausible_kid(kid: &str) -> bool {
    kid.len() == 43
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `GET /v1/rings/{ring}/keys/{kid}.pem`: a key of the ring's JWKS as SPKI
/// PEM. A kid that is not in the JWKS now (pending, removed, revoked or
/// unknown) is 404, like its absence from the JWKS.
pub(super) async fn key_pem(
    State(s): State<AppState>,
    Path((ring_name, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(kid) = file.strip_suffix(".pem") else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no such document: keys are served at /v1/rings/{ring_name}/keys/KID.pem"),
        );
    };
    if !plausible_kid(kid) {
        return error(
            StatusCode::BAD_REQUEST,
            "kid: must be 43 characters of base64url (an RFC 7638 JWK thumbprint, as in the JWKS)",
        );
    }
    if let Err(e) = s.keys.check_fresh() {
        return unavailable(&e.to_string());
    }
    let ring = match s.keys.ring(&ring_name, "ring") {
        Ok(ring) => ring,
        Err(e @ (Error::RingNotFound(_) | Error::InvalidArgument(_))) => {
            return error(StatusCode::NOT_FOUND, &e.to_string());
        }
        Err(e) => return unavailable(&e.to_string()),
    };
    let now = s.keys.now();
    let set = ring.jwks(now);
    let Some(jwk) = set.keys.iter().find(|k| k.kid == kid) else {
        if set.keys.is_empty() && s.keys.is_sealed() {
            return unavailable(&format!(
                "sealed: no key of ring {ring_name} has been verified since the server started"
            ));
        }
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "kid {kid} is not in ring {ring_name}'s JWKS (only published, active and \
                 retiring keys are served)"
            ),
        );
    };
    let pem = match jwk.to_spki_pem() {
        Ok(pem) => pem,
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("kid {kid}: the public key could not be encoded"),
            );
        }
    };
    let body = Bytes::from(pem);
    let etag = etag_of(&body);
    cacheable(&headers, &etag, max_age(&ring, now), PEM_CONTENT_TYPE, body).1
}

#[cfg(test)]
mod tests {
    use super::plausible_kid;

    #[test]
    fn kids() {
        assert!(plausible_kid("_PE8LE6mU673wEeJ3XZrl4EgnCT-vs6wHshvjkshE8s"));
        assert!(!plausible_kid("_PE8LE6mU673wEeJ3XZrl4EgnCT-vs6wHshvjkshE8"));
        assert!(!plausible_kid(
            "_PE8LE6mU673wEeJ3XZrl4EgnCT-vs6wHshvjkshE8s="
        ));
        assert!(!plausible_kid(
            "../../../../etc/passwd....................."
        ));
        assert!(!plausible_kid(""));
    }
}
