//! The verifier's fetch path: one fetch at a time, outside every lock; the
//! last good set served while refreshes fail; bounded exponential backoff;
//! a floor under `max-age`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri, body::Bytes, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};

use super::FetchError;
use crate::{
    JwkSet,
    clock::{Clock, UnixTime},
};

/// The largest JWKS body accepted: a few hundred keys. A larger answer is
/// refused rather than buffered.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// After the `n`th failed fetch in a row, no fetch for 2^n seconds (2 s,
/// 4 s, 8 s, ...), at most this long.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub(super) type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

struct Cached {
    set: Arc<JwkSet>,
    etag: Option<String>,
    fresh_until: UnixTime,
}

/// What every clone of the fetch path shares. The std mutex is held for a
/// few assignments, never across an await: a fetch runs outside it, so a
/// slow or dead JWKS endpoint never blocks a verification that has a set.
#[derive(Default)]
pub(super) struct Shared {
    state: Mutex<State>,
    /// Held by the one fetch in flight (single-flight): others either use
    /// the set they have or wait for that fetch's result.
    pub(super) fetching: Arc<tokio::sync::Mutex<()>>,
    pub(super) fetches: AtomicU64,
}

#[derive(Default)]
pub(super) struct State {
    /// The last good key set.
    cached: Option<Cached>,
    /// Fetch attempts finished, successful or not: a caller that waited
    /// for the fetch in flight sees it move and does not fetch again.
    pub(super) attempts: u64,
    /// Failed fetches since the last success.
    pub(super) failures: u32,
    /// No automatic fetch before this (backoff after failures).
    retry_at: Option<UnixTime>,
}

/// Everything a fetch needs, cheap to clone into a background refresh.
#[derive(Clone)]
pub(super) struct Fetcher {
    pub(super) url: Uri,
    pub(super) client: HttpsClient,
    /// Why https fetches cannot succeed yet, if the trust store is missing.
    pub(super) trust_note: Option<String>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) timeout: Duration,
    pub(super) min_max_age: Duration,
    pub(super) shared: Arc<Shared>,
}

impl Fetcher {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Poisoned only by a panic between plain assignments: the state is
        // still consistent.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last good set (empty if none).
    pub(super) fn set(&self) -> Arc<JwkSet> {
        self.state()
            .cached
            .as_ref()
            .map_or_else(|| Arc::new(JwkSet { keys: Vec::new() }), |c| c.set.clone())
    }

    /// The set to verify with now, if there is one. A stale set is
    /// returned too, after starting one background refresh unless one is
    /// in flight or failures put the next one off.
    pub(super) fn current(&self, now: UnixTime) -> Option<Arc<JwkSet>> {
        let (set, due) = {
            let state = self.state();
            let cached = state.cached.as_ref()?;
            let due = now >= cached.fresh_until && state.retry_at.is_none_or(|t| now >= t);
            (cached.set.clone(), due)
        };
        if due && let Ok(guard) = self.shared.fetching.clone().try_lock_owned() {
            let fetcher = self.clone();
            tokio::spawn(async move {
                if let Err(e) = fetcher.fetch(guard).await {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the last good key set");
                }
            });
        }
        Some(set)
    }

    /// Fetches unless failures put it off, or joins the fetch in flight:
    /// a caller that waited for another's fetch does not fetch again.
    pub(super) async fn fetch_or_join(&self, now: UnixTime) {
        let seen = self.state().attempts;
        let guard = self.shared.fetching.clone().lock_owned().await;
        let backoff = {
            let state = self.state();
            if state.attempts != seen {
                return;
            }
            state.retry_at.is_some_and(|t| now < t)
        };
        if backoff {
            return;
        }
        if let Err(e) = self.fetch(guard).await {
            tracing::warn!(error = %e, "JWKS fetch failed");
        }
    }

    /// What the last finished fetch came to.
    pub(super) fn last_result(&self) -> Result<(), FetchError> {
        match self.state().failures {
            0 => Ok(()),
            n => Err(FetchError {
                url: self.url.to_string(),
                reason: format!("{n} fetch(es) in a row failed (the log says why)"),
            }),
        }
    }

    /// One fetch, holding the single-flight `guard` (never the state
    /// lock). Success replaces the set (or, on 304, extends it) and clears
    /// the backoff; failure keeps the set and backs off.
    pub(super) async fn fetch(
        &self,
        guard: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<(), FetchError> {
        self.shared.fetches.fetch_add(1, Ordering::Relaxed);
        let etag = self.state().cached.as_ref().and_then(|c| c.etag.clone());
        let result = self.request(etag).await;
        let now = self.clock.now();
        let mut state = self.state();
        state.attempts += 1;
        match result {
            Ok(Fetched { set, etag, max_age }) => {
                let fresh_until = now.saturating_add(max_age.max(self.min_max_age));
                match (set, state.cached.as_mut()) {
                    (Some(set), _) => {
                        state.cached = Some(Cached {
                            set: Arc::new(set),
                            etag,
                            fresh_until,
                        });
                    }
                    (None, Some(c)) => c.fresh_until = fresh_until,
                    // 304 without a set: cannot happen (no ETag was sent).
                    (None, None) => {}
                }
                state.failures = 0;
                state.retry_at = None;
                drop(state);
                drop(guard);
                Ok(())
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                let exp = state.failures.saturating_sub(1).min(16);
                let backoff = Duration::from_secs(2u64 << exp).min(MAX_BACKOFF);
                state.retry_at = Some(now.saturating_add(backoff));
                drop(state);
                drop(guard);
                Err(e)
            }
        }
    }

    async fn request(&self, etag: Option<String>) -> Result<Fetched, FetchError> {
        let fail = |reason: String| FetchError {
            url: self.url.to_string(),
            reason,
        };
        let mut req = Request::get(self.url.clone());
        if let Some(etag) = &etag {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        let req = req.body(Empty::new()).map_err(|e| fail(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| match &self.trust_note {
                    Some(note) => fail(format!("{}; {note}", with_causes(&e))),
                    None => fail(with_causes(&e)),
                })?;
            let max_age = resp
                .headers()
                .get(header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_max_age)
                .unwrap_or(0);
            let etag = resp
                .headers()
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let max_age = Duration::from_secs(max_age);
            match resp.status() {
                StatusCode::NOT_MODIFIED => Ok(Fetched {
                    set: None,
                    etag,
                    max_age,
                }),
                StatusCode::OK => {
                    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                        .collect()
                        .await
                        .map_err(|e| fail(format!("reading the body: {e}")))?
                        .to_bytes();
                    let set: JwkSet = serde_json::from_slice(&body)
                        .map_err(|e| fail(format!("not a JWK Set: {e}")))?;
                    Ok(Fetched {
                        set: Some(set),
                        etag,
                        max_age,
                    })
                }
                s => Err(fail(format!("HTTP {s}"))),
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| fail(format!("timed out after {:?}", self.timeout)))?
    }
}

/// A successful answer: a new set (200) or none (304), with its caching
/// headers.
struct Fetched {
    set: Option<JwkSet>,
    etag: Option<String>,
    max_age: Duration,
}

/// An error and its causes, `outer: inner: ...`: hyper's client error says
/// only "client error (Connect)"; the certificate or socket error that
/// explains it is further down.
pub(super) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// `max-age=N` from a Cache-Control value; `no-cache`/`no-store` mean 0.
pub(super) fn parse_max_age(v: &str) -> Option<u64> {
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
