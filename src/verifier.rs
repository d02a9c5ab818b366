//! A verifier for Rust token consumers (resource servers, gateways).
//!
//! Given a JWKS URL it fetches and caches the key set, honouring
//! `Cache-Control: max-age` and `ETag` (conditional refetch), refreshes at
//! most once per cooldown (default 30 s) when a token names an unknown kid,
//! keeps the last good set when a fetch fails, verifies with the algorithm
//! pinned to the key (never taken from the token), classifies failures with
//! the same reasons as `Signer.Verify`, and can report its failure counts
//! back with `ReportVerificationFailures`.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = signet::verifier::Verifier::new("http://127.0.0.1:8080/.well-known/jwks.json")?;
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

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri, body::Bytes, header};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};

use crate::{
    clock::{Clock, SystemClock, UnixTime},
    crypto::verify::{self, Failure, Lookup, Rejected, Verified},
    keyring::JwkSet,
    pb,
};

/// Why the key set could not be fetched.
#[derive(Debug, Clone, thiserror::Error)]
#[error("JWKS fetch from {url} failed: {reason}")]
pub struct FetchError {
    url: String,
    reason: String,
}

/// The largest JWKS body accepted: a few hundred keys. A larger answer is
/// refused rather than buffered.
const MAX_JWKS_BYTES: usize = 1 << 20;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

struct Cached {
    set: JwkSet,
    etag: Option<String>,
    fresh_until: UnixTime,
}

/// A caching JWKS verifier. Cheap to share behind an `Arc`.
pub struct Verifier {
    url: Uri,
    client: HttpsClient,
    /// Why https fetches cannot succeed yet, if the trust store is missing.
    trust_note: Option<String>,
    clock: Arc<dyn Clock>,
    cooldown: Duration,
    leeway: Duration,
    /// The cache; an async mutex so one refresh runs at a time and others
    /// wait for its result instead of fetching again.
    cache: tokio::sync::Mutex<Option<Cached>>,
    last_unknown_refresh: Mutex<Option<UnixTime>>,
    /// Whether an unknown kid may trigger a refetch (within the cooldown).
    unknown_kid_refetch: bool,
    counts: Mutex<HashMap<Failure, u64>>,
    fetches: Mutex<u64>,
}

impl Verifier {
    /// A verifier for the JWKS at `url`: `https://…`, checked against the
    /// system's trust store, or `http://` to a loopback address. A 30 s
    /// unknown-kid cooldown and 60 s leeway on `exp`/`nbf`.
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
            url: uri,
            client: Client::builder(TokioExecutor::new()).build(connector),
            trust_note,
            clock: Arc::new(SystemClock),
            cooldown: Duration::from_secs(30),
            leeway: Duration::from_secs(60),
            cache: tokio::sync::Mutex::new(None),
            last_unknown_refresh: Mutex::new(None),
            unknown_kid_refetch: true,
            counts: Mutex::new(HashMap::new()),
            fetches: Mutex::new(0),
        })
    }

    /// Trusts only the CA certificates in `pem` (one or more PEM blocks) for
    /// the JWKS server, instead of the system's trust store: for a JWKS
    /// behind a private PKI.
    pub fn with_root_ca_pem(mut self, pem: &[u8]) -> Result<Self, FetchError> {
        let fail = |reason: String| FetchError {
            url: self.url.to_string(),
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
        self.client = Client::builder(TokioExecutor::new()).build(connector);
        self.trust_note = None;
        Ok(self)
    }

    /// Uses `clock` for cache expiry and token times (tests, simulations).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
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

    /// How many fetches (including conditional ones) were made.
    pub fn fetches(&self) -> u64 {
        *self.fetches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches the key set now (conditionally, with the ETag). On failure
    /// the last good set stays in use.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let mut cache = self.cache.lock().await;
        self.fetch_into(&mut cache).await
    }

    async fn fetch_into(&self, cache: &mut Option<Cached>) -> Result<(), FetchError> {
        let fail = |reason: String| FetchError {
            url: self.url.to_string(),
            reason,
        };
        *self.fetches.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let mut req = Request::get(self.url.clone());
        if let Some(etag) = cache.as_ref().and_then(|c| c.etag.as_deref()) {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        let req = req.body(Empty::new()).map_err(|e| fail(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| fail("timed out after 10s".into()))?
            .map_err(|e| match &self.trust_note {
                Some(note) => fail(format!("{}; {note}", with_causes(&e))),
                None => fail(with_causes(&e)),
            })?;
        let now = self.clock.now();
        let max_age = resp
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age)
            .unwrap_or(0);
        let fresh_until = now.saturating_add(Duration::from_secs(max_age));
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match resp.status() {
            StatusCode::NOT_MODIFIED => {
                if let Some(c) = cache.as_mut() {
                    c.fresh_until = fresh_until;
                }
                Ok(())
            }
            StatusCode::OK => {
                let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                    .collect()
                    .await
                    .map_err(|e| fail(format!("reading the body: {e}")))?
                    .to_bytes();
                let set: JwkSet = serde_json::from_slice(&body)
                    .map_err(|e| fail(format!("not a JWK Set: {e}")))?;
                *cache = Some(Cached {
                    set,
                    etag,
                    fresh_until,
                });
                Ok(())
            }
            s => Err(fail(format!("HTTP {s}"))),
        }
    }

    /// Verifies `token`. Failures are counted for [`Verifier::report`].
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
        let mut cache = self.cache.lock().await;
        let now = self.clock.now();
        if cache.as_ref().is_none_or(|c| now >= c.fresh_until)
            && let Err(e) = self.fetch_into(&mut cache).await
        {
            tracing::warn!(error = %e, "JWKS refresh failed; keeping the last good key set");
        }
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(0);
        let attempt = |cache: &Option<Cached>| {
            let empty = JwkSet { keys: Vec::new() };
            let set = cache.as_ref().map_or(&empty, |c| &c.set);
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
        match attempt(&cache) {
            Err(r) if r.failure == Failure::UnknownKid && self.may_refresh_for_unknown(now) => {
                if let Err(e) = self.fetch_into(&mut cache).await {
                    tracing::warn!(error = %e, "JWKS refresh for an unknown kid failed");
                }
                attempt(&cache)
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

    /// Sends the failure counts since the last report to Signet.
    pub async fn report(
        &self,
        client: &mut pb::signer_client::SignerClient<tonic::transport::Channel>,
        ring: &str,
        verifier_name: &str,
    ) -> Result<(), tonic::Status> {
        let counts = self.take_counts();
        if counts.is_empty() {
            return Ok(());
        }
        client
            .report_verification_failures(pb::ReportVerificationFailuresRequest {
                key_ring: ring.to_owned(),
                counts: counts
                    .into_iter()
                    .map(|(f, n)| pb::FailureCount {
                        reason: pb::VerifyFailure::from(f).into(),
                        count: n,
                    })
                    .collect(),
                verifier: verifier_name.to_owned(),
            })
            .await
            .map(|_| ())
    }
}

/// An error and its causes, `outer: inner: ...`: hyper's client error says
/// only "client error (Connect)"; the certificate or socket error that
/// explains it is further down.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
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

/// `max-age=N` from a Cache-Control value; `no-cache`/`no-store` mean 0.
fn parse_max_age(v: &str) -> Option<u64> {
    let mut max_age = None;
    for d in v.split(',').map(str::trim) {
        if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
            return Some(0);
        }
        if let Some(n) = d.strip_prefix("max-age=") {
            max_age = n.trim_matches('"').parse().ok();
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::{Verifier, parse_max_age};

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
