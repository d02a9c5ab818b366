//! The public HTTP surface under abuse and at its edges: slow and idle
//! connections, the connection cap, shutdown with connections open, metric
//! cardinality, the JWKS of a sealed server, and HTTPS on the listener.

use crate::common;

use std::sync::Arc;

use axum::Router;
use signet::{
    clock::SystemClock,
    crypto::{Algorithm, KeySpec},
    keyring::KeyManager,
    pb,
    seal::EphemeralKek,
    store::MemoryStore,
};

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

async fn sign_unknown(
    mut signer: signet::pb::signer_client::SignerClient<tonic::transport::Channel>,
    ring: String,
) {
    let e = signer
        .sign(pb::SignRequest {
            key_ring: ring,
            claims_json: b"{}".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

/// Requests naming 10,000 rings that do not exist add no metric series:
/// Sign, Verify and ReportVerificationFailures over gRPC, JWKS over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_ring_names_add_no_metric_series() {
    let server = common::TestServer::start(&[("cardinality", Algorithm::EdDsa)]).await;
    let series = || async {
        let (status, _, body) = common::http_get(server.http, "/metrics").await;
        assert_eq!(status, 200);
        body.lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
            .collect::<std::collections::BTreeSet<String>>()
    };
    // One Sign to an unknown ring first, so its "-" series exists before
    // the count.
    let mut signer = server.signer();
    sign_unknown(signer.clone(), "made-up-warmup".into()).await;
    let before = series().await;

    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let signer = signer.clone();
            tokio::spawn(async move {
                for i in (t..10_000).step_by(8) {
                    sign_unknown(signer.clone(), format!("made-up-{i}")).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..200 {
        let ring = format!("made-up-v{i}");
        let e = signer
            .verify(pb::VerifyRequest {
                key_ring: ring.clone(),
                token: "x.y.z".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = signer
            .report_verification_failures(pb::ReportVerificationFailuresRequest {
                key_ring: ring.clone(),
                counts: vec![pb::FailureCount {
                    reason: pb::VerifyFailure::UnknownKid.into(),
                    count: 1,
                }],
                verifier: "v".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let (status, _, _) =
            common::http_get(server.http, &format!("/v1/rings/{ring}/jwks.json")).await;
        assert_eq!(status, 404);
    }
    let after = series().await;
    let new: Vec<_> = after.difference(&before).collect();
    assert!(
        new.iter().all(|s| !s.contains("made-up")),
        "no series names a made-up ring: {new:?}"
    );
    // Other tests in this process may add a few series of their own rings
    // meanwhile; 10,000 would show.
    assert!(
        new.len() < 50,
        "{} new series after 10,000 Signs to unknown rings: {:?}",
        new.len(),
        &new[..new.len().min(10)]
    );
    let unknown = r#"signet_signs_total{ring="-",alg="-",outcome="error"}"#;
    let body = common::http_get(server.http, "/metrics").await.2;
    assert!(
        metric(&body, unknown) >= 10_001.0,
        "unknown rings are counted under \"-\""
    );
}

/// One request through `router` without a listener: (status,
/// Cache-Control, body).
async fn oneshot_get(router: Router, path: &str) -> (u16, String, String) {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let resp = router
        .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, cache, String::from_utf8(body.to_vec()).unwrap())
}

/// A server that started sealed has verified no key: its JWKS endpoints
/// answer 503 with no-store, never an empty set a verifier would cache;
/// once unsealed they serve the keys, and sealing again keeps serving them.
#[tokio::test]
async fn a_sealed_server_serves_no_empty_jwks() {
    let store = Arc::new(MemoryStore::new());
    let kek = Arc::new(EphemeralKek::new().unwrap());
    let first = KeyManager::open(store.clone(), Arc::new(SystemClock), kek.clone())
        .await
        .unwrap();
    first.unseal().await.unwrap();
    first
        .create_ring("default", KeySpec::new(Algorithm::Es256, 0).unwrap())
        .await
        .unwrap();
    drop(first);
    // A restart: the records are there, the keys are sealed.
    let keys = KeyManager::open(store, Arc::new(SystemClock), kek)
        .await
        .unwrap();
    assert!(keys.is_sealed());

    let get = |path: &'static str| oneshot_get(signet::http::router(keys.clone()), path);
    for path in ["/.well-known/jwks.json", "/v1/rings/default/jwks.json"] {
        let (status, cache, body) = get(path).await;
        assert_eq!((status, cache.as_str()), (503, "no-store"), "{path}");
        let err: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            err["error"].as_str().unwrap().starts_with("sealed: "),
            "{body}"
        );
        assert!(!body.contains("\"keys\""));
    }
    assert_eq!(get("/v1/rings/nope/jwks.json").await.0, 404);

    keys.unseal().await.unwrap();
    let (status, cache, body) = get("/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    assert!(cache.starts_with("public, max-age="), "{cache}");
    let set: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(set["keys"].as_array().unwrap().len(), 1);

    keys.seal().await;
    let (status, _, again) = get("/.well-known/jwks.json").await;
    assert_eq!((status, again), (200, body), "verified keys stay published");
}

async fn keys_with_default_ring() -> KeyManager {
    let keys = KeyManager::ephemeral(Arc::new(SystemClock)).await.unwrap();
    keys.create_ring("default", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    keys
}

/// `signet server`'s HTTP listener serves the router without /metrics; its
/// metrics listener serves only /metrics.
#[tokio::test]
async fn metrics_are_not_on_the_public_router() {
    let keys = keys_with_default_ring().await;
    let public = || signet::http::router_with(keys.clone(), false);
    assert_eq!(oneshot_get(public(), "/metrics").await.0, 404);
    assert_eq!(oneshot_get(public(), "/.well-known/jwks.json").await.0, 200);
    let metrics = || signet::http::metrics_router(keys.clone());
    let (status, _, body) = oneshot_get(metrics(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("signet_sealed"));
    assert_eq!(
        oneshot_get(metrics(), "/.well-known/jwks.json").await.0,
        404
    );
}
