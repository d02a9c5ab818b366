//! The verifier library's fetch path against a JWKS endpoint that goes
//! dead: it accepts connections and never answers. A stale cache keeps
//! verifying at once with the last good set; concurrent verifications
//! cause one fetch, not one each; failures back off exponentially (bounded)
//! instead of turning every verification into a refetch; and a `max-age`
//! under the floor is raised to it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use signet::{
    clock::{ManualClock, UnixTime},
    crypto::{Algorithm, KeySpec},
    keyring::{KeyManager, SignParams},
    verifier::Verifier,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::common::wait_for;

const T0: i64 = 1_767_225_600;

/// A JWKS endpoint under the test's control: while `serving`, it answers
/// each request with `body` and `Cache-Control: max-age={max_age}` and
/// closes the connection (so every fetch is a new connection); otherwise it
/// accepts and never answers. `connections` counts every accept.
struct Endpoint {
    url: String,
    serving: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
}

impl Endpoint {
    async fn start(body: String, max_age: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let serving = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (serving.clone(), connections.clone());
        tokio::spawn(async move {
            // Hung connections stay open here until the test ends.
            let mut hung = Vec::new();
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                if !s.load(Ordering::SeqCst) {
                    hung.push(sock);
                    continue;
                }
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/jwk-set+json\r\n\
                         Cache-Control: public, max-age={max_age}\r\nConnection: close\r\n\
                         Content-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(body.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Self {
            url,
            serving,
            connections,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn hang(&self) {
        self.serving.store(false, Ordering::SeqCst);
    }
}

/// A key manager on `clock` with one EdDSA ring, a token of it, and its
/// JWKS as JSON.
async fn token_and_jwks(clock: Arc<ManualClock>) -> (String, String) {
    let keys = KeyManager::ephemeral(clock).await.unwrap();
    keys.create_ring("default", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    let token = keys
        .sign(SignParams {
            ring: "default",
            claims_json: br#"{"sub":"u"}"#,
            ttl: Some(Duration::from_secs(3600)),
            header_json: b"",
            grant: None,
        })
        .await
        .unwrap()
        .token;
    let jwks =
        serde_json::to_string(&keys.ring("default", "ring").unwrap().jwks(keys.now())).unwrap();
    (token, jwks)
}

/// A stale cache and a dead endpoint: 50 concurrent verifications all
/// succeed at once with the last good set, and between them open one
/// connection (the one background refresh), not 50. While it hangs,
/// another 50 open none.
#[tokio::test]
async fn stale_cache_dead_endpoint_single_flight() {
    let clock = Arc::new(ManualClock::new(UnixTime::from_secs(T0)));
    let (token, jwks) = token_and_jwks(clock.clone()).await;
    let endpoint = Endpoint::start(jwks, 60).await;
    let v = Arc::new(
        Verifier::new(&endpoint.url)
            .unwrap()
            .with_clock(clock.clone())
            // Long enough that the hung fetch is still in flight while the
            // test runs: only the single-flight keeps the others out.
            .with_fetch_timeout(Duration::from_secs(30)),
    );
    v.verify(&token).await.unwrap();
    assert_eq!(endpoint.connections(), 1);

    endpoint.hang();
    clock.set(UnixTime::from_secs(T0 + 61));
    let started = Instant::now();
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (v, token) = (v.clone(), token.clone());
            tokio::spawn(async move { v.verify(&token).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().claims["sub"], "u");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "50 verifications with a stale cache and a hung endpoint took {took:?}"
    );
    let c = endpoint.connections.clone();
    wait_for("the background refresh connects", move || {
        c.load(Ordering::SeqCst) == 2
    })
    .await;
    for _ in 0..50 {
        v.verify(&token).await.unwrap();
    }
    assert_eq!(
        endpoint.connections(),
        2,
        "one refresh in flight, whatever the number of verifications"
    );
    assert_eq!(v.fetches(), 2);
}

/// Failures back off: after the nth failed fetch in a row, no fetch for
/// 2^n s (capped at 5 min), however many verifications come; the stale
/// set keeps verifying throughout.
#[tokio::test]
async fn failed_refreshes_back_off_exponentially() {
    let clock = Arc::new(ManualClock::new(UnixTime::from_secs(T0)));
    let (token, jwks) = token_and_jwks(clock.clone()).await;
    let endpoint = Endpoint::start(jwks, 60).await;
    let v = Arc::new(
        Verifier::new(&endpoint.url)
            .unwrap()
            .with_clock(clock.clone())
            .with_fetch_timeout(Duration::from_millis(200)),
    );
    v.verify(&token).await.unwrap();
    endpoint.hang();

    let mut now = T0 + 61;
    let mut connections = 1;
    // Backoff after failure n: 2, 4, 8, ..., 256, then 300 (the cap).
    for (failures, backoff) in [2i64, 4, 8, 16, 32, 64, 128, 256, 300, 300]
        .into_iter()
        .enumerate()
    {
        clock.set(UnixTime::from_secs(now));
        // The first verification at or after the retry time starts one
        // refresh; it times out and counts as a failure.
        v.verify(&token).await.unwrap();
        connections += 1;
        let vv = v.clone();
        let want = u32::try_from(failures + 1).unwrap();
        wait_for("the refresh fails", move || {
            vv.consecutive_failures() == want
        })
        .await;
        assert_eq!(endpoint.connections(), connections);
        // Just before the retry time: a storm of verifications, no fetch.
        clock.set(UnixTime::from_secs(now + backoff - 1));
        for _ in 0..100 {
            v.verify(&token).await.unwrap();
        }
        assert_eq!(
            endpoint.connections(),
            connections,
            "no fetch within the {backoff} s backoff after failure {}",
            failures + 1
        );
        now += backoff;
    }
    assert!(v.take_counts().is_empty(), "every verification succeeded");
}

/// With no set yet and a hung endpoint, concurrent verifications wait for
/// the one fetch (not one each), fail with an unknown kid when it times
/// out, and then fail at once during the backoff without connecting.
#[tokio::test]
async fn no_cache_dead_endpoint_waits_for_one_fetch() {
    let clock = Arc::new(ManualClock::new(UnixTime::from_secs(T0)));
    let (token, jwks) = token_and_jwks(clock.clone()).await;
    let endpoint = Endpoint::start(jwks, 60).await;
    endpoint.hang();
    let v = Arc::new(
        Verifier::new(&endpoint.url)
            .unwrap()
            .with_clock(clock.clone())
            .with_fetch_timeout(Duration::from_millis(300)),
    );
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (v, token) = (v.clone(), token.clone());
            tokio::spawn(async move { v.verify(&token).await })
        })
        .collect();
    for call in calls {
        let r = call.await.unwrap().unwrap_err();
        assert_eq!(r.failure, signet::crypto::verify::Failure::UnknownKid);
    }
    assert_eq!(endpoint.connections(), 1, "one fetch for 20 callers");
    assert_eq!(v.consecutive_failures(), 1);
    let started = Instant::now();
    for _ in 0..20 {
        assert!(v.verify(&token).await.is_err());
    }
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "no waiting in backoff"
    );
    assert_eq!(endpoint.connections(), 1, "no fetch during the backoff");
}

/// `max-age=0` is raised to the 30 s floor: one fetch serves every
/// verification for 30 s, and the next one after that refreshes.
#[tokio::test]
async fn max_age_is_floored() {
    let clock = Arc::new(ManualClock::new(UnixTime::from_secs(T0)));
    let (token, jwks) = token_and_jwks(clock.clone()).await;
    let endpoint = Endpoint::start(jwks, 0).await;
    let v = Verifier::new(&endpoint.url)
        .unwrap()
        .with_clock(clock.clone());
    for _ in 0..20 {
        v.verify(&token).await.unwrap();
    }
    clock.set(UnixTime::from_secs(T0 + 29));
    v.verify(&token).await.unwrap();
    assert_eq!(endpoint.connections(), 1, "max-age=0 raised to 30 s");
    clock.set(UnixTime::from_secs(T0 + 30));
    v.verify(&token).await.unwrap();
    let c = endpoint.connections.clone();
    wait_for("a refresh after 30 s", move || {
        c.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(v.fetches(), 2);
}
