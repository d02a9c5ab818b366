//! The verifier-facing surface: HTTP JWKS caching headers, Verify reasons,
//! WatchJwks, metrics, and the `signet::verifier` library.

use crate::common;

use std::{sync::Arc, time::Duration};

use axum::{body::Body, http::Request};
use http_body_util::BodyExt;
use signet::{
    clock::{ManualClock, UnixTime},
    crypto::{Algorithm, KeySpec},
    keyring::{KeyManager, SignParams},
    pb::{self, signer_client::SignerClient},
    verifier::Verifier,
};
use tokio::net::TcpListener;
use tower::ServiceExt;

const DAY: i64 = 86_400;
const T0: i64 = 1_767_225_600;

async fn manager(clock: Arc<ManualClock>, alg: Algorithm) -> KeyManager {
    let keys = KeyManager::ephemeral(clock).await.unwrap();
    keys.create_ring("default", KeySpec::new(alg, 0).unwrap())
        .await
        .unwrap();
    keys
}

struct Http {
    status: u16,
    etag: String,
    cache_control: String,
    content_type: String,
    body: Vec<u8>,
}

async fn get(keys: &KeyManager, method: &str, path: &str, if_none_match: Option<&str>) -> Http {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(tag) = if_none_match {
        req = req.header("if-none-match", tag);
    }
    let resp = signet::http::router(keys.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, etag, cache_control, content_type) = (
        resp.status().as_u16(),
        h("etag"),
        h("cache-control"),
        h("content-type"),
    );
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Http {
        status,
        etag,
        cache_control,
        content_type,
        body,
    }
}

fn max_age(h: &Http) -> i64 {
    h.cache_control
        .strip_prefix("public, max-age=")
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn jwks_headers_etag_304_head_and_max_age() {
    let clock = Arc::new(ManualClock::new(UnixTime::from_secs(T0)));
    let keys = manager(clock.clone(), Algorithm::EdDsa).await;
    let at = |d: i64, s: i64| UnixTime::from_secs(T0 + d * DAY + s);

    let r = get(&keys, "GET", "/.well-known/jwks.json", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/jwk-set+json");
    assert!(
        r.etag.starts_with('"') && r.etag.ends_with('"') && r.etag.len() > 20,
        "strong ETag {}",
        r.etag
    );
    let a = max_age(&r);
    assert!(
        (3570..=3600).contains(&a),
        "jwks_max_age 1h with a little jitter: {a}"
    );

    let again = get(&keys, "GET", "/.well-known/jwks.json", Some(&r.etag)).await;
    assert_eq!((again.status, again.body.len()), (304, 0));
    assert_eq!(again.etag, r.etag);
    assert!(again.cache_control.starts_with("public, max-age="));
    let other = get(&keys, "GET", "/.well-known/jwks.json", Some("\"other\"")).await;
    assert_eq!(other.status, 200);

    let head = get(&keys, "HEAD", "/.well-known/jwks.json", None).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(
        (head.etag.as_str(), head.content_type.as_str()),
        (r.etag.as_str(), "application/jwk-set+json")
    );

    // max-age never reaches past the next lifecycle change: the successor
    // is generated at day 84.
    clock.set(at(84, -600));
    let near = get(&keys, "GET", "/.well-known/jwks.json", None).await;
    assert!(max_age(&near) <= 600, "{}", near.cache_control);
    assert_eq!(near.etag, r.etag, "the set did not change");
    clock.set(at(84, -5));
    assert!(max_age(&get(&keys, "GET", "/.well-known/jwks.json", None).await) <= 5);

    // The ETag changes exactly when the set changes.
    clock.set(at(84, 0));
    keys.tick().await;
    let published = get(&keys, "GET", "/.well-known/jwks.json", None).await;
    assert_ne!(published.etag, r.etag, "a new key was published");
    clock.set(at(90, 0));
    assert_eq!(
        get(&keys, "GET", "/.well-known/jwks.json", None).await.etag,
        published.etag,
        "activation changes no key"
    );
    clock.set(at(97, 0));
    let removed = get(&keys, "GET", "/.well-known/jwks.json", None).await;
    assert_ne!(removed.etag, published.etag, "the old key left");
    assert_eq!(
        get(&keys, "GET", "/.well-known/jwks.json", Some(&removed.etag))
            .await
            .status,
        304
    );

    let missing = get(&keys, "GET", "/v1/rings/nope/jwks.json", None).await;
    assert_eq!(missing.status, 404);
    let err: serde_json::Value = serde_json::from_slice(&missing.body).unwrap();
    assert_eq!(err["error"], "key ring \"nope\" not found");
}

/// A verifier that caches the JWKS exactly as Cache-Control allows never
/// lacks the key that signs, across a simulated year of rotations.
#[tokio::test]
async fn a_caching_client_never_misses_a_signing_key_for_a_year() {
    let clock = Arc::new(ManualClock::new(UnixTime::from_secs(T0)));
    let keys = manager(clock.clone(), Algorithm::EdDsa).await;
    let mut cached: Option<(Vec<String>, i64)> = None; // (kids, fresh until)
    let mut fetches = 0;
    let step = 20 * 60;
    let mut t = 0;
    while t < 365 * DAY {
        clock.set(UnixTime::from_secs(T0 + t));
        if t % 60 == 0 {
            keys.tick().await;
        }
        let now = T0 + t;
        if cached.as_ref().is_none_or(|(_, until)| now >= *until) {
            let r = get(&keys, "GET", "/.well-known/jwks.json", None).await;
            let set: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let kids = set["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect();
            cached = Some((kids, now + max_age(&r)));
            fetches += 1;
        }
        let signed = keys
            .sign(SignParams {
                ring: "default",
                claims_json: b"{}",
                ttl: None,
                header_json: b"",
                grant: None,
            })
            .await
            .unwrap();
        let (kids, _) = cached.as_ref().unwrap();
        assert!(
            kids.contains(&signed.kid.to_string()),
            "day {}: cached JWKS lacks the signing key",
            t / DAY
        );
        t += step;
    }
    assert!(
        keys.ring_info("default", "r").unwrap().keys.len() >= 5,
        "a year of rotations happened"
    );
    assert!(
        fetches > 365 * 24 / 2,
        "the client honoured max-age ({fetches} fetches)"
    );
}

/// Each Verify failure reason for a crafted token.
#[tokio::test]
async fn verify_reports_each_failure_reason() {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
    let clock = Arc::new(ManualClock::new(UnixTime::from_secs(T0)));
    let keys = manager(clock.clone(), Algorithm::Es256).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(signet::rpc::serve(
        listener,
        keys.clone(),
        std::future::pending(),
    ));
    let signer = SignerClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let sign = |claims: &'static str| {
        let keys = keys.clone();
        async move {
            keys.sign(SignParams {
                ring: "default",
                claims_json: claims.as_bytes(),
                ttl: None,
                header_json: b"",
                grant: None,
            })
            .await
            .unwrap()
            .token
        }
    };
    let verify = |token: String| {
        let mut signer = signer.clone();
        async move {
            signer
                .verify(pb::VerifyRequest {
                    key_ring: "default".into(),
                    token,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let good = sign(r#"{"sub":"a"}"#).await;
    let ok = verify(good.clone()).await;
    assert!(ok.valid, "{}", ok.message);
    let claims: serde_json::Value = serde_json::from_slice(&ok.claims_json).unwrap();
    assert_eq!(claims["sub"], "a");

    let parts: Vec<&str> = good.split('.').collect();
    let header = |json: &str| B64.encode(json);
    let kid = common::part(&good, 0)["kid"].as_str().unwrap().to_owned();
    let mut sig = B64.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let cases: Vec<(String, pb::VerifyFailure)> = vec![
        ("not a token".into(), pb::VerifyFailure::Malformed),
        (
            format!("{}.{}.{}", header(r#"{"alg":"ES256"}"#), parts[1], parts[2]),
            pb::VerifyFailure::MissingKid,
        ),
        (
            format!(
                "{}.{}.{}",
                header(r#"{"alg":"ES256","kid":"nope"}"#),
                parts[1],
                parts[2]
            ),
            pb::VerifyFailure::UnknownKid,
        ),
        (
            format!(
                "{}.{}.{}",
                header(&format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#)),
                parts[1],
                parts[2]
            ),
            pb::VerifyFailure::AlgMismatch,
        ),
        (
            format!("{}.{}.{}", parts[0], parts[1], B64.encode(&sig)),
            pb::VerifyFailure::BadSignature,
        ),
    ];
    for (token, want) in cases {
        let r = verify(token).await;
        assert!(!r.valid);
        assert_eq!(r.failure(), want, "{}", r.message);
        assert!(!r.message.is_empty());
    }

    // Not yet valid: nbf ten minutes ahead (beyond the 60 s skew).
    let nbf_token = keys
        .sign(SignParams {
            ring: "default",
            claims_json: format!(r#"{{"nbf":{}}}"#, T0 + 600).as_bytes(),
            ttl: None,
            header_json: b"",
            grant: None,
        })
        .await
        .unwrap()
        .token;
    assert_eq!(
        verify(nbf_token).await.failure(),
        pb::VerifyFailure::NotYetValid
    );

    // Expired: 15 minutes of ttl plus the 60 s skew.
    clock.set(UnixTime::from_secs(T0 + 15 * 60 + 61));
    assert_eq!(
        verify(good.clone()).await.failure(),
        pb::VerifyFailure::Expired
    );

    // Revoked key.
    let fresh = sign("{}").await;
    keys.revoke("default", &kid, "test").await.unwrap();
    let _ = fresh;
    let r = verify(good).await;
    assert_eq!(r.failure(), pb::VerifyFailure::RevokedKey, "{}", r.message);
}

#[tokio::test]
async fn watch_jwks_delivers_a_revocation_within_a_second() {
    let server = common::TestServer::start(&[("default", Algorithm::EdDsa)]).await;
    server
        .admin()
        .rotate(pb::RotateRequest {
            key_ring: "default".into(),
            immediate: true,
            reason: "t".into(),
            request_id: String::new(),
            fresh: false,
        })
        .await
        .unwrap();
    let mut stream = server
        .signer()
        .watch_jwks(pb::WatchJwksRequest {
            key_ring: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.keys.len(), 2);
    let retiring = first
        .keys
        .iter()
        .find(|k| k.state() == pb::KeyState::Retiring)
        .unwrap()
        .kid
        .clone();
    let started = std::time::Instant::now();
    server
        .admin()
        .revoke_key(pb::RevokeKeyRequest {
            key_ring: "default".into(),
            kid: retiring.clone(),
            reason: "t".into(),
        })
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(1), stream.message())
        .await
        .expect("a new JWKS within a second")
        .unwrap()
        .unwrap();
    assert!(
        !next.jwks_json.contains(&retiring),
        "the revoked key is gone"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// /metrics is Prometheus text and the counters move with RPCs.
#[tokio::test]
async fn metrics_parse_and_move() {
    let server = common::TestServer::start(&[("metrics-ring", Algorithm::EdDsa)]).await;
    let scrape = || async {
        let (status, _, body) = common::http_get(server.http, "/metrics").await;
        assert_eq!(status, 200);
        for line in body
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
            let metric = name.split('{').next().unwrap();
            assert!(
                metric
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad name in {line:?}"
            );
            assert!(
                !name.contains('{') || name.ends_with('}'),
                "bad labels in {line:?}"
            );
        }
        body
    };
    let value = |body: &str, prefix: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(prefix))
            .map_or(0.0, |l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
    };
    let ok = r#"signet_signs_total{ring="metrics-ring",alg="EdDSA",outcome="ok"}"#;
    let before = scrape().await;
    for _ in 0..3 {
        server
            .signer()
            .sign(pb::SignRequest {
                key_ring: "metrics-ring".into(),
                claims_json: b"{}".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    server
        .signer()
        .verify(pb::VerifyRequest {
            key_ring: "metrics-ring".into(),
            token: "x.y.z".into(),
        })
        .await
        .unwrap();
    server
        .signer()
        .report_verification_failures(pb::ReportVerificationFailuresRequest {
            key_ring: "metrics-ring".into(),
            counts: vec![pb::FailureCount {
                reason: pb::VerifyFailure::UnknownKid.into(),
                count: 5,
            }],
            verifier: "gw-1".into(),
        })
        .await
        .unwrap();
    let _ = common::http_get(server.http, "/v1/rings/metrics-ring/jwks.json").await;
    let after = scrape().await;
    assert_eq!(value(&after, ok) - value(&before, ok), 3.0);
    let own = r#"signet_verification_failures_total{ring="metrics-ring",reason="malformed",source="own"}"#;
    assert_eq!(value(&after, own) - value(&before, own), 1.0);
    let reported = r#"signet_verification_failures_total{ring="metrics-ring",reason="unknown_kid",source="reported"}"#;
    assert_eq!(value(&after, reported) - value(&before, reported), 5.0);
    assert!(value(&after, r#"signet_jwks_requests_total{status="200"}"#) >= 1.0);
    assert_eq!(
        value(&after, r#"signet_keys{ring="metrics-ring",state="active"}"#),
        1.0
    );
    assert!(after.contains("signet_sign_duration_seconds_bucket"));
    assert!(after.contains("signet_sealed 0"));
    assert!(after.contains("signet_audit_failures_total"));
    assert!(after.contains(r#"signet_next_transition_seconds{ring="metrics-ring"}"#));
    assert!(!after.contains("kid="), "no kid labels");
}

/// The verifier library: unknown-kid refresh with cooldown, last good set
/// on fetch failure, and a just-activated key.
#[tokio::test]
async fn verifier_library() {
    let clock = Arc::new(ManualClock::new(UnixTime::from_secs(T0)));
    let keys = manager(clock.clone(), Algorithm::EdDsa).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(signet::http::serve(listener, keys.clone(), async {
        let _ = stopped.await;
    }));
    let v = Verifier::new(&format!("http://{addr}/.well-known/jwks.json"))
        .unwrap()
        .with_clock(clock.clone())
        .with_cooldown(Duration::from_secs(30));
    let sign = || async {
        keys.sign(SignParams {
            ring: "default",
            claims_json: br#"{"sub":"u"}"#,
            ttl: None,
            header_json: b"",
            grant: None,
        })
        .await
        .unwrap()
        .token
    };
    let t1 = sign().await;
    assert_eq!(v.verify(&t1).await.unwrap().claims["sub"], "u");
    assert_eq!(v.fetches(), 1);
    assert!(v.verify(&t1).await.is_ok());
    assert_eq!(v.fetches(), 1, "cached per max-age");

    // An emergency rotation: the first unknown kid triggers one refresh.
    keys.rotate("default", true, "t", None).await.unwrap();
    let t2 = sign().await;
    assert!(
        v.verify(&t2).await.is_ok(),
        "unknown kid -> refresh -> verifies"
    );
    assert_eq!(v.fetches(), 2);
    // A kid nobody has: no refresh within the cooldown.
    let forged = {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
        let p: Vec<&str> = t2.split('.').collect();
        format!(
            "{}.{}.{}",
            B64.encode(r#"{"alg":"EdDSA","kid":"forged"}"#),
            p[1],
            p[2]
        )
    };
    let r = v.verify(&forged).await.unwrap_err();
    assert_eq!(r.failure, signet::crypto::verify::Failure::UnknownKid);
    assert_eq!(
        v.fetches(),
        2,
        "cooldown: no refetch for 30 s after the last unknown-kid refresh"
    );
    clock.set(UnixTime::from_secs(T0 + 31));
    let _ = v.verify(&forged).await;
    assert_eq!(v.fetches(), 3, "after the cooldown, one refetch");

    // The server goes away: the last good set stays in use.
    let _ = stop.send(());
    http.await.unwrap().unwrap();
    clock.set(UnixTime::from_secs(T0 + 2 * 3600));
    let t3 = sign().await;
    assert!(
        v.verify(&t3).await.is_ok(),
        "fetch failed, last good set kept"
    );
    // That verify started a refresh in the background, against the server
    // that is gone. Wait for it to fail: finishing late, after the server is
    // back and the clock has moved, it would put the verifier into backoff
    // just when the next step needs a fetch (a flake seen once in 5 runs).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while v.consecutive_failures() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the background refresh against the stopped server never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A just-activated key verifies: scheduled successor, published at day
    // 84+, activated 6 days later; the cache expires on the way.
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(signet::http::serve(
        listener,
        keys.clone(),
        std::future::pending(),
    ));
    let activate = keys
        .rotate("default", false, "planned", None)
        .await
        .unwrap()
        .0
        .timeline
        .activate_at;
    clock.set(UnixTime::from_secs(activate.as_secs() - 3600));
    assert!(v.verify(&sign().await).await.is_ok());
    clock.set(activate);
    let t4 = sign().await;
    assert!(v.verify(&t4).await.is_ok(), "token of a just-activated key");

    // Counts go back to Signet.
    let counts = v.take_counts();
    assert_eq!(
        counts,
        vec![(signet::crypto::verify::Failure::UnknownKid, 2)]
    );
}

/// The verifier library over HTTPS, served by Signet's own HTTP listener
/// with `[http_tls]`: with the JWKS server's CA it fetches and verifies; trusting only the system store (which lacks that CA) the fetch
/// fails on the certificate and no token verifies; plain http:// to a
/// non-loopback host is refused up front.
#[tokio::test]
async fn verifier_library_over_https() {
    use crate::common::certs;
    let server = common::TestServer::start(&[("default", Algorithm::Es256)]).await;
    let ca = certs::ca("jwks CA");
    let dir = tempfile::tempdir().unwrap();
    let addr = certs::serve_https(server.keys.clone(), &ca, dir.path()).await;
    let url = format!("https://{addr}/.well-known/jwks.json");
    let token = server
        .keys
        .sign(SignParams {
            ring: "default",
            claims_json: br#"{"sub":"over-tls"}"#,
            ttl: None,
            header_json: b"",
            grant: None,
        })
        .await
        .unwrap()
        .token;

    let trusting = Verifier::new(&url)
        .unwrap()
        .with_root_ca_pem(ca.pem.as_bytes())
        .unwrap();
    assert_eq!(
        trusting.verify(&token).await.unwrap().claims["sub"],
        "over-tls"
    );

    let system_only = Verifier::new(&url).unwrap();
    let err = system_only.refresh().await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let rejected = system_only.verify(&token).await.unwrap_err();
    assert_eq!(
        rejected.failure,
        signet::crypto::verify::Failure::UnknownKid
    );

    let err = Verifier::new(&format!(
        "http://{}/.well-known/jwks.json",
        "jwks.internal:8080"
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("http:// is accepted for loopback addresses only"),
        "{err}"
    );
}
