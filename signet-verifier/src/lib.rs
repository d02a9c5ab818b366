//! Verify JWTs against a JWKS URL, as a Rust resource server or gateway
//! does with the tokens [Signet](https://github.com/signet-dev/signet)
//! signs (or any issuer publishing a JWK Set).
//!
//! [`Verifier`] fetches and caches the key set, honouring
//! `Cache-Control: max-age` (at least 30 s, whatever the server says) and
//! `ETag` (conditional refetch), refreshes at most once per cooldown
//! (default 30 s) when a token names an unknown kid, verifies with the
//! algorithm pinned to the key (never taken from the token), and classifies
//! failures with a fixed set of reasons ([`Failure`], the same as Signet's
//! `Signer.Verify`). With the `report` feature it can send its failure
//! counts back to Signet (`ReportVerificationFailures`).
//!
//! The fetch path is built for a JWKS endpoint that is slow or down:
//!
//! - one fetch at a time (single-flight), run outside every lock: callers
//!   that need its result wait for that fetch, never start their own;
//! - a stale set keeps verifying while its refresh runs in the background,
//!   and stays in use (the last good set) while refreshes fail;
//! - after `n` failures in a row, no automatic fetch for 2^n s (at most
//!   5 min); each fetch gives up after 10 s.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = signet_verifier::Verifier::new("http://127.0.0.1:8080/.well-known/jwks.json")?;
//! match verifier.verify("eyJ...").await {
//!     Ok(v) => println!("sub = {}", v.claims["sub"]),
//!     Err(rejected) => println!("refused: {} ({})", rejected.failure, rejected.message),
//! }
//! # Ok(()) }
//! ```
//!
//! The URL is `https://` (the system's trust store, or a CA given with
//! [`Verifier::with_root_ca_pem`]), or `http://` to a loopback address only
//! (a sidecar on the same host): a JWKS fetched in the clear over a network
//! lets anyone on the path add a key and mint tokens this verifier accepts.
//!
//! [`verify::verify`] is the check itself, with no fetching: given a token,
//! a key lookup and the time, it verifies or says why not. Signet's own
//! `Verify` RPC runs the same function.
//!
//! # Features
//!
//! - `report`: `Verifier::report`, over gRPC (`tonic`, and the generated
//!   client from `signet-proto`). Off by default: without it this crate has
//!   no gRPC in its dependency tree.

#![forbid(unsafe_code)]

pub mod clock;
mod fetch;
mod jwk;
#[cfg(feature = "report")]
mod report;
pub mod verify;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use fetch::{Fetcher, Shared};
use hyper::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};

use crate::clock::{Clock, SystemClock, UnixTime};
pub use crate::{
    jwk::{Jwk, JwkSet, Kid},
    verify::{Failure, Lookup, Rejected, Verified},
};

/// Why the key set could not be fetched.
#[derive(Debug, Clone, thiserror::Error)]
#[error("JWKS fetch from {url} failed: {reason}")]
pub struct FetchError {
    url: String,
    reason: String,
}

/// A caching JWKS verifier. Cheap to share behind an `Arc`.
pub struct Verifier {
    fetcher: Fetcher,
    cooldown: Duration,
    leeway: Duration,
    last_unknown_refresh: Mutex<Option<UnixTime>>,
    /// Whether an unknown kid may trigger a refetch (within the cooldown).
    unknown_kid_refetch: bool,
    counts: Mutex<HashMap<Failure, u64>>,
}

impl Verifier {
    /// A verifier for the JWKS at `url`: `https://…`, checked against the
    /// system's trust store, or `http://` to a loopback address. A 30 s
    /// unknown-kid cooldown, 60 s leeway on `exp`/`nbf`, a 10 s fetch
    /// timeout, and a set cached at least 30 s whatever its `max-age`.
    pub fn new(url: &str) -> Result<Self, FetchError> {
        let fail = |reason: String| FetchError {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback(&uri) => {}
            Some("http") => {
                return Err(fail(
                    "http:// is accepted for loopback addresses only; use https:// \
                     (keys fetched in the clear could be swapped on the way)"
                        .into(),
                ));
            }
            _ => {
                return Err(fail(
                    "the URL must start with https:// (or http:// to loopback)".into(),
                ));
            }
        }
        // Without a usable system trust store (a minimal container), https
        // fetches fail until a CA is given; say so in their errors rather
        // than refusing a verifier that with_root_ca_pem would make work.
        let (connector, trust_note) =
            match HttpsConnectorBuilder::new().with_provider_and_native_roots(crypto_provider()) {
                Ok(b) => (b.https_or_http().enable_http1().build(), None),
                Err(e) => (
                    https_connector(RootCertStore::empty()).map_err(|e| fail(e.to_string()))?,
                    Some(format!(
                        "the system trust store did not load ({e}); give the JWKS server's CA \
                         with with_root_ca_pem"
                    )),
                ),
            };
        Ok(Self {
            fetcher: Fetcher {
                url: uri,
                client: Client::builder(TokioExecutor::new()).build(connector),
                trust_note,
                clock: Arc::new(SystemClock),
                timeout: Duration::from_secs(10),
                min_max_age: Duration::from_secs(30),
                shared: Arc::new(Shared::default()),
            },
            cooldown: Duration::from_secs(30),
            leeway: Duration::from_secs(60),
            last_unknown_refresh: Mutex::new(None),
            unknown_kid_refetch: true,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Trusts only the CA certificates in `pem` (one or more PEM blocks) for
    /// the JWKS server, instead of the system's trust store: for a JWKS
    /// behind a private PKI.
    pub fn with_root_ca_pem(mut self, pem: &[u8]) -> Result<Self, FetchError> {
        let fail = |reason: String| FetchError {
            url: self.fetcher.url.to_string(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| fail(format!("root CA: not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| fail(format!("root CA: not a usable certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(fail("root CA: no certificate in the PEM".into()));
        }
        let connector = https_connector(roots).map_err(|e| fail(e.to_string()))?;
        self.fetcher.client = Client::builder(TokioExecutor::new()).build(connector);
        self.fetcher.trust_note = None;
        Ok(self)
    }

    /// Uses `clock` for cache expiry, backoff and token times (tests,
    /// simulations).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.fetcher.clock = clock;
        self
    }

    /// Sets the minimum time between unknown-kid refreshes.
    pub fn with_cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Sets the clock skew allowed on `exp` and `nbf`.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Sets how long one fetch may take, connection included (default
    /// 10 s).
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetcher.timeout = timeout;
        self
    }

    /// Sets the shortest time a fetched set is used before it is refreshed,
    /// whatever its `max-age` (default 30 s): a server answering `max-age=0`
    /// would otherwise be asked again at every verification.
    pub fn with_max_age_floor(mut self, floor: Duration) -> Self {
        self.fetcher.min_max_age = floor;
        self
    }

    /// How many fetches (including conditional ones) were started.
    pub fn fetches(&self) -> u64 {
        self.fetcher.shared.fetches.load(Ordering::Relaxed)
    }

    /// How many fetches in a row have failed (0 after a success).
    pub fn consecutive_failures(&self) -> u32 {
        self.fetcher.state().failures
    }

    /// Fetches the key set now (conditionally, with the ETag), or waits for
    /// the fetch already in flight and returns its result. On failure the
    /// last good set stays in use.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let seen = self.fetcher.state().attempts;
        let guard = self.fetcher.shared.fetching.clone().lock_owned().await;
        if self.fetcher.state().attempts != seen {
            drop(guard);
            return self.fetcher.last_result();
        }
        self.fetcher.fetch(guard).await
    }

    /// Verifies `token`. Failures are counted for [`Verifier::take_counts`]
    /// (and `Verifier::report`, with the `report` feature).
    pub async fn verify(&self, token: &str) -> Result<Verified, Rejected> {
        let result = self.verify_inner(token).await;
        if let Err(r) = &result {
            *self
                .counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(r.failure)
                .or_default() += 1;
        }
        result
    }

    async fn verify_inner(&self, token: &str) -> Result<Verified, Rejected> {
        let now = self.fetcher.clock.now();
        let set = match self.fetcher.current(now) {
            // Fresh, or stale with a refresh started in the background:
            // either way this verification uses the set at hand.
            Some(set) => set,
            // Nothing fetched yet: wait for the (one) fetch.
            None => {
                self.fetcher.fetch_or_join(now).await;
                self.fetcher.set()
            }
        };
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(0);
        let attempt = |set: &JwkSet| {
            verify::verify(
                token,
                |kid| match set.keys.iter().find(|k| k.kid == kid) {
                    Some(jwk) => Lookup::Key(jwk),
                    None => Lookup::Unknown,
                },
                now.as_secs(),
                leeway,
            )
        };
        match attempt(&set) {
            Err(r) if r.failure == Failure::UnknownKid && self.may_refresh_for_unknown(now) => {
                self.fetcher.fetch_or_join(now).await;
                attempt(&self.fetcher.set())
            }
            other => other,
        }
    }

    /// Never refetch on an unknown kid; refresh only when the cached set's
    /// `max-age` runs out, as many gateways do. What Signet's rotation rules
    /// are made for: such a verifier must never meet an unknown kid.
    pub fn without_unknown_kid_refetch(mut self) -> Self {
        self.unknown_kid_refetch = false;
        self
    }

    /// At most one unknown-kid refresh per cooldown.
    fn may_refresh_for_unknown(&self, now: UnixTime) -> bool {
        if !self.unknown_kid_refetch {
            return false;
        }
        let mut last = self
            .last_unknown_refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let allowed = last.is_none_or(|t| {
            now.as_secs() - t.as_secs() >= i64::try_from(self.cooldown.as_secs()).unwrap_or(0)
        });
        if allowed {
            *last = Some(now);
        }
        allowed
    }

    /// Failure counts since the last call, and resets them.
    pub fn take_counts(&self) -> Vec<(Failure, u64)> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = counts.drain().collect();
        out.sort_by_key(|(f, _)| f.name());
        out
    }
}

/// Whether `uri`'s host is a loopback address or `localhost`.
fn is_loopback(uri: &Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// A connector for https (trusting `roots`) and http.
fn https_connector(roots: RootCertStore) -> Result<HttpsConnector<HttpConnector>, rustls::Error> {
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build())
}

/// rustls with aws-lc, like the rest of the crate (no process default).
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[cfg(test)]
mod tests {
    use super::{Verifier, fetch::parse_max_age};

    #[test]
    fn urls() {
        for ok in [
            "https://idp.example.com/.well-known/jwks.json",
            "http://127.0.0.1:8080/.well-known/jwks.json",
            "http://[::1]:8080/jwks.json",
            "http://localhost/jwks.json",
        ] {
            assert!(Verifier::new(ok).is_ok(), "{ok}");
        }
        let err = Verifier::new("http://idp.example.com/jwks.json")
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "JWKS fetch from http://idp.example.com/jwks.json failed: http:// is accepted for \
             loopback addresses only; use https:// (keys fetched in the clear could be swapped \
             on the way)"
        );
        assert!(Verifier::new("ftp://x/jwks").is_err());
        assert!(Verifier::new("not a url").is_err());
        let v = Verifier::new("https://idp.example.com/jwks.json").unwrap();
        assert!(v.with_root_ca_pem(b"no pem here").is_err());
    }

    #[test]
    fn cache_control() {
        assert_eq!(parse_max_age("public, max-age=3600"), Some(3600));
        assert_eq!(parse_max_age("no-cache"), Some(0));
        assert_eq!(parse_max_age("public"), None);
    }
}
