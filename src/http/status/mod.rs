//! `GET /status`: a read-only page for the security team, on the admin
//! listener beside `/metrics` (never on the public JWKS listener, except
//! under `signet dev`, which keeps both there).
//!
//! One HTML document: every ring with its keys and their states, a timeline
//! chart per ring (inline SVG, past and projected, today marked), the next
//! change per ring, verification failures by reason, and the audit chain
//! head and last signed checkpoint. No script and no external asset; the
//! Content-Security-Policy allows nothing but the page's own style sheet.
//! Nothing secret is on it: no path, no KEK spec, no claims, no key
//! material (see [`view`]).
//!
//! - `view`: the data, gathered at one instant.
//! - `chart`: the SVG timeline.
//! - `page`: the HTML around it.

use std::sync::OnceLock;

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::{Engine, engine::general_purpose::STANDARD};

use crate::{audit::AuditLog, keyring::KeyManager, telemetry};

mod chart;
mod page;
mod view;

/// The path of the page.
pub const PATH: &str = "/status";

#[derive(Clone)]
struct StatusState {
    keys: KeyManager,
    audit: Option<AuditLog>,
}

/// `GET /status` over `keys`, with the audit chain of `audit` when given.
pub fn router(keys: KeyManager, audit: Option<AuditLog>) -> Router {
    Router::new()
        .route(PATH, get(status))
        .with_state(StatusState { keys, audit })
}

/// The Content-Security-Policy of the page: nothing may load, and the only
/// style that applies is [`page::CSS`], named by its SHA-256.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, page::CSS.as_bytes());
        format!(
            "default-src 'none'; style-src 'sha256-{}'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            STANDARD.encode(digest.as_ref())
        )
    })
}

async fn status(State(s): State<StatusState>) -> Response {
    let view = view::View::build(
        &s.keys,
        s.audit.as_ref(),
        telemetry::verification_failures(),
        s.keys.now(),
    );
    let mut response = page::render(&view).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        // The page shows the state of one instant: no cache keeps it.
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Ok(csp) = HeaderValue::from_str(content_security_policy()) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy's hash is the hash of the style sheet the page carries,
    /// so the browser applies it (the browser test sees no CSP complaint).
    #[test]
    fn csp_names_the_style_sheet() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none'; style-src 'sha256-"));
        let b64 = csp
            .split("'sha256-")
            .nth(1)
            .and_then(|r| r.split('\'').next())
            .unwrap();
        let digest = STANDARD.decode(b64).unwrap();
        assert_eq!(
            digest,
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, page::CSS.as_bytes()).as_ref()
        );
        assert!(!csp.contains("unsafe"));
    }
}
