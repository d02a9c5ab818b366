//! The public HTTP surface under abuse and at its edges: slow and idle
//! connections, the connection cap, shutdown with connections open, metric
//! cardinality, the JWKS of a sealed server, and HTTPS on the listener.

use crate::common::{self, certs, process::Proc};

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use signet::{
    clock::SystemClock,
    crypto::{Algorithm, KeySpec},
    http::{HttpLimits, HttpsAcceptor},
    keyring::KeyManager,
    pb,
    seal::EphemeralKek,
    store::MemoryStore,
    verifier::Verifier,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
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

/// The start of a request whose header never ends.
const HALF_HEADER: &[u8] = b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: test\r\nX-Slow: ";

/// A listener serving `router` with `limits`; stops when the sender is
/// used or dropped.
struct Served {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn serve(router: Router, limits: HttpLimits) -> Served {
    serve_on(router, limits, None).await
}

/// The same over HTTPS with `acceptor`.
async fn serve_https(router: Router, acceptor: Arc<HttpsAcceptor>) -> Served {
    serve_on(router, HttpLimits::default(), Some(acceptor)).await
}

async fn serve_on(router: Router, limits: HttpLimits, tls: Option<Arc<HttpsAcceptor>>) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(signet::http::serve_with(
        listener,
        router,
        limits,
        tls,
        async {
            let _ = stopped.await;
        },
    ));
    Served { addr, stop, task }
}

async fn half_header(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(HALF_HEADER).await.unwrap();
    s
}

/// Whether the peer has closed `s`: EOF or a reset within `limit`.
async fn closes_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {} // a response or an error page; keep reading
        }
    }
}

/// How many of `conns` are still open: no EOF, reset or data within
/// 200 ms (all waited on together).
async fn count_open(conns: &mut [TcpStream]) -> usize {
    let closed = futures::future::join_all(
        conns
            .iter_mut()
            .map(|s| closes_within(s, Duration::from_millis(200))),
    )
    .await;
    closed.iter().filter(|c| !**c).count()
}

/// One GET on a fresh connection; `None` if the server closed it unanswered.
async fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// Polls `check` every 50 ms until it holds; fails with `what` after
/// `limit`. The async twin of `common::eventually`.
async fn eventually_async<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Raises the soft open-file limit to the hard one: 500 connections and
/// their server ends exceed a default soft limit of 1024 in one process.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

/// 500 clients that send half a request header hold 500 connections, and
/// JWKS requests from another client are still answered, each while all
/// 500 stay open (default limits: a 10 s header timeout, 1024 connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_do_not_starve_jwks() {
    raise_nofile_limit();
    let keys = keys_with_default_ring().await;
    let server = serve(signet::http::router(keys), HttpLimits::default()).await;
    let opened = Instant::now();
    let mut loris = Vec::new();
    for _ in 0..500 {
        loris.push(half_header(server.addr).await);
    }
    for i in 0..20 {
        let (status, _, body) = try_get(server.addr, "/.well-known/jwks.json")
            .await
            .unwrap_or_else(|| panic!("JWKS request {i} was not answered"));
        assert_eq!(status, 200, "JWKS request {i}");
        assert!(body.contains("\"keys\""));
    }
    let open = count_open(&mut loris).await;
    assert_eq!(
        open,
        500,
        "every slow client was still connected {:?} after connecting (the header timeout is 10 s)",
        opened.elapsed()
    );
}

/// A connection that sends nothing, or trickles a header a byte at a time,
/// is closed at the header timeout; a keep-alive connection between
/// requests lives until the idle timeout, then is closed.
#[tokio::test]
async fn slow_and_idle_connections_are_closed() {
    let keys = keys_with_default_ring().await;
    let limits = HttpLimits {
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(3000),
        ..HttpLimits::default()
    };
    let server = serve(signet::http::router(keys), limits).await;

    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closes_within(&mut silent, Duration::from_secs(5)).await,
        "a silent connection is closed"
    );
    let silent_for = started.elapsed();
    assert!(
        silent_for >= Duration::from_millis(400) && silent_for < Duration::from_millis(2500),
        "closed at the header timeout, not the idle one: {silent_for:?}"
    );

    // One byte every 100 ms keeps the socket busy but never ends the header.
    let trickle = TcpStream::connect(server.addr).await.unwrap();
    let (mut rd, mut wr) = trickle.into_split();
    let writer = tokio::spawn(async move {
        for b in HALF_HEADER.iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a trickled header is cut off");
    assert!(started.elapsed() < Duration::from_millis(2500));
    writer.abort();

    // Keep-alive: a complete request, then quiet.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"ok\n") {
        let n = kept.read(&mut buf).await.unwrap();
        assert!(n > 0, "answered before close");
        got.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    assert!(
        !closes_within(&mut kept, Duration::from_millis(1500)).await,
        "idle keep-alive outlives the header timeout"
    );
    assert!(
        closes_within(&mut kept, Duration::from_secs(10)).await,
        "idle keep-alive is closed"
    );
    let idle_for = answered.elapsed();
    assert!(
        idle_for >= Duration::from_millis(2900),
        "closed at the idle timeout: {idle_for:?}"
    );
    drop(server.stop);
}

/// Beyond max_connections a new connection waits briefly, is closed
/// unserved and counted; a freed slot serves again.
#[tokio::test]
async fn connections_beyond_the_cap_are_refused_and_counted() {
    let keys = keys_with_default_ring().await;
    let limits = HttpLimits {
        max_connections: 3,
        over_limit_wait: Duration::from_millis(100),
        ..HttpLimits::default()
    };
    let server = serve(signet::http::router(keys.clone()), limits).await;
    let refused = || {
        metric(
            &signet::telemetry::render(&keys),
            "signet_http_connections_refused_total",
        )
    };
    let before = refused();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(half_header(server.addr).await);
    }
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closes_within(&mut extra, Duration::from_secs(5)).await,
        "the fourth connection is closed"
    );
    assert!(try_get(server.addr, "/healthz").await.is_none());
    assert!(refused() - before >= 2.0, "refusals are counted");
    assert_eq!(
        count_open(&mut held).await,
        3,
        "the three held are untouched"
    );

    drop(held.pop());
    eventually_async(Duration::from_secs(5), "a freed slot serves", || async {
        try_get(server.addr, "/healthz").await.map(|r| r.0) == Some(200)
    })
    .await;
}

/// On shutdown, connections without a request in flight close at once, a
/// request in flight finishes, and one that does not is dropped at the
/// deadline: serving returns regardless.
#[tokio::test]
async fn shutdown_finishes_requests_then_drops_the_rest() {
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let (slow_tx, stuck_tx) = (entered_tx.clone(), entered_tx);
    let router = Router::new()
        .route(
            "/slow",
            get(move || {
                let tx = slow_tx.clone();
                async move {
                    let _ = tx.send("slow");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done\n"
                }
            }),
        )
        .route(
            "/stuck",
            get(move || {
                let tx = stuck_tx.clone();
                async move {
                    let _ = tx.send("stuck");
                    std::future::pending::<&'static str>().await
                }
            }),
        );
    let limits = HttpLimits {
        shutdown_deadline: Duration::from_secs(2),
        ..HttpLimits::default()
    };
    let server = serve(router, limits).await;
    let mut loris = half_header(server.addr).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let request = |path: &'static str| async move {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        s
    };
    let mut slow = request("/slow").await;
    let mut stuck = request("/stuck").await;
    let mut seen = vec![entered.recv().await.unwrap(), entered.recv().await.unwrap()];
    seen.sort();
    assert_eq!(seen, ["slow", "stuck"]);

    let started = Instant::now();
    server.stop.send(()).unwrap();
    assert!(
        closes_within(&mut loris, Duration::from_millis(1500)).await,
        "a half-sent request is dropped at once"
    );
    assert!(closes_within(&mut idle, Duration::from_millis(1500)).await);
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("done\n"),
        "{answer:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("serving ends at the shutdown deadline")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(4500),
        "the stuck request held shutdown until the deadline only: {took:?}"
    );
    assert!(closes_within(&mut stuck, Duration::from_secs(1)).await);
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "the listener is closed"
    );
}

/// The real binary with the default limits: 500 half-sent headers do not
/// stop JWKS requests, and SIGTERM with the 500 still open exits well
/// within the 10 s shutdown deadline, successfully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signet_dev_under_slow_loris_serves_jwks_and_stops_on_sigterm() {
    raise_nofile_limit();
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Proc::dev(&dir.path().join("data"), &[], &[]).unwrap();
    let addr = dev.http_addr();
    let opened = Instant::now();
    let mut loris = Vec::new();
    for _ in 0..500 {
        loris.push(half_header(addr).await);
    }
    for i in 0..20 {
        let (status, headers, _) = try_get(addr, "/.well-known/jwks.json")
            .await
            .unwrap_or_else(|| panic!("JWKS request {i} was not answered"));
        assert_eq!(status, 200, "JWKS request {i}");
        assert!(headers.contains("application/jwk-set+json"));
    }
    assert!(opened.elapsed() < Duration::from_secs(10));
    assert_eq!(count_open(&mut loris).await, 500);

    let started = Instant::now();
    let pid = dev.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < HttpLimits::default().shutdown_deadline,
            "signet dev still running {:?} after SIGTERM",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    eprintln!(
        "signet dev exited {:?} after SIGTERM with 500 slow connections open",
        started.elapsed()
    );
    for s in &mut loris {
        assert!(closes_within(s, Duration::from_secs(1)).await);
    }
}

async fn fetches_with(url: &str, ca: &certs::Ca) -> bool {
    Verifier::new(url)
        .unwrap()
        .with_root_ca_pem(ca.pem.as_bytes())
        .unwrap()
        .refresh()
        .await
        .is_ok()
}

/// The HTTPS certificate is re-read on reload; a broken file keeps the old
/// one, and the error names the field.
#[tokio::test]
async fn https_certificate_reloads_and_a_broken_file_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (certs::ca("old CA"), certs::ca("new CA"));
    let files = certs::https_files(&old_ca, dir.path());
    let acceptor = Arc::new(HttpsAcceptor::load(files.clone()).unwrap());
    let keys = keys_with_default_ring().await;
    let server = serve_https(signet::http::router(keys), acceptor.clone()).await;
    let url = format!("https://{}/.well-known/jwks.json", server.addr);
    assert!(fetches_with(&url, &old_ca).await);
    assert!(!fetches_with(&url, &new_ca).await);
    // Plain HTTP on the HTTPS port gets no answer.
    assert!(try_get(server.addr, "/healthz").await.is_none());

    std::fs::write(&files.cert, "not a certificate").unwrap();
    let e = acceptor.reload().unwrap_err().to_string();
    assert!(e.starts_with("http_tls.cert "), "{e}");
    assert!(
        fetches_with(&url, &old_ca).await,
        "a broken file keeps the old certificate"
    );

    certs::https_files(&new_ca, dir.path());
    acceptor.reload().unwrap();
    assert!(fetches_with(&url, &new_ca).await);
    assert!(!fetches_with(&url, &old_ca).await);
}

/// `signet server` with `[http_tls]` serves its JWKS over HTTPS and picks
/// up a new certificate on SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signet_server_http_tls_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let kek = common::process::kek_file(&dir.path().join("kek"));
    let config = common::process::write_config(
        dir.path(),
        &dir.path().join("data"),
        &kek,
        &[("r", "EdDSA")],
    );
    let (old_ca, new_ca) = (certs::ca("old CA"), certs::ca("new CA"));
    let files = certs::https_files(&old_ca, dir.path());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[http_tls]\ncert = {:?}\nkey = {:?}\n",
        files.cert.display().to_string(),
        files.key.display().to_string()
    ));
    std::fs::write(&config, text).unwrap();
    let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap();
    let url = format!("https://{}/v1/rings/r/jwks.json", server.http_addr());
    assert!(fetches_with(&url, &old_ca).await);

    certs::https_files(&new_ca, dir.path());
    let pid = server.child.id().to_string();
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
    };
    assert!(hup().success());
    eventually_async(
        Duration::from_secs(10),
        "the new certificate is served after SIGHUP",
        || fetches_with(&url, &new_ca),
    )
    .await;
    assert!(server.terminate().success());
}
