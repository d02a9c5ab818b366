//! `signet` client commands that cannot talk to a server over TLS say what
//! to fix, not `Unknown: transport error`: each case against a real mTLS
//! (or plaintext) server in this process, through the real binary.

use std::{path::Path, sync::Arc};

use rcgen::SanType;
use signet::{
    authz::{Authz, SharedAuthz},
    clock::SystemClock,
    keyring::KeyManager,
    tls::{Acceptor, TlsFiles},
};
use tokio::net::TcpListener;

use crate::common::{
    certs::{Ca, ca, leaf},
    process::BIN,
};

const POLICY: &str = r#"
[[rule]]
identity = "uri:spiffe://test/admin"
actions = ["admin"]
rings = ["*"]
"#;

struct Servers {
    /// The mTLS server's port.
    tls: u16,
    /// A plaintext server's port.
    plain: u16,
    ca: Ca,
    dir: tempfile::TempDir,
}

async fn start() -> Servers {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("client-tls CA");
    let (cert, key) = leaf(
        &ca,
        "signet",
        vec![SanType::DnsName("localhost".try_into().unwrap())],
    );
    let files = TlsFiles::new(
        dir.path().join("server.pem"),
        dir.path().join("server.key"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    std::fs::write(&files.client_ca, &ca.pem).unwrap();
    let keys = KeyManager::ephemeral(Arc::new(SystemClock)).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = listener.local_addr().unwrap().port();
    let acceptor = Arc::new(Acceptor::load(files).unwrap());
    let incoming = acceptor.incoming(listener, |_, _| {});
    tokio::spawn(signet::rpc::serve_with(
        incoming,
        keys.clone(),
        Arc::new(SharedAuthz::new(Authz::from_toml(POLICY).unwrap())),
        None,
        std::future::pending(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = listener.local_addr().unwrap().port();
    tokio::spawn(signet::rpc::serve(listener, keys, std::future::pending()));
    Servers {
        tls,
        plain,
        ca,
        dir,
    }
}

/// Writes a client certificate (and key) to `DIR/NAME.pem`, `DIR/NAME.key`.
fn client(dir: &Path, name: &str, pair: (String, String)) -> (String, String) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, pair.0).unwrap();
    std::fs::write(&key, pair.1).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

/// Runs `signet status --addr ADDR` with the TLS files.
async fn run_status(addr: &str, ca: &Path, pair: &(String, String)) -> std::process::Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["status", "--addr", addr])
        .env("SIGNET_TLS_CA", ca)
        .env("SIGNET_TLS_CERT", &pair.0)
        .env("SIGNET_TLS_KEY", &pair.1);
    // A blocking thread: this runtime goes on serving the servers.
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Runs `signet status`, expects a failure, returns its stderr.
async fn status(addr: &str, ca: &Path, pair: &(String, String)) -> String {
    let out = run_status(addr, ca, pair).await;
    assert!(!out.status.success(), "{addr}: succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_say_what_to_fix() {
    let s = start().await;
    let d = s.dir.path();
    let uri = |u: &str| SanType::URI(u.try_into().unwrap());
    let good = client(
        d,
        "good",
        leaf(&s.ca, "admin", vec![uri("spiffe://test/admin")]),
    );
    let other_ca = ca("another CA");
    std::fs::write(d.join("other-ca.pem"), &other_ca.pem).unwrap();
    let stranger = client(
        d,
        "stranger",
        leaf(&other_ca, "admin", vec![uri("spiffe://test/admin")]),
    );
    let https = format!("https://localhost:{}", s.tls);
    let ca_pem = d.join("ca.pem");

    // The control: these files work.
    let out = run_status(&https, &ca_pem, &good).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let other = d.join("other-ca.pem");
    let err = status(&https, &other, &good).await;
    assert_eq!(
        err.trim_end(),
        format!(
            "signet: cannot connect to {https}: the server's certificate is not trusted: it was \
             not issued by the CA in SIGNET_TLS_CA ({}); set SIGNET_TLS_CA to the CA that \
             issued the server's [tls] cert",
            other.display()
        )
    );

    let err = status(&https, &ca_pem, &stranger).await;
    assert_eq!(
        err.trim_end(),
        format!(
            "signet: the server refused the client certificate {}: it was not issued by a CA \
             the server trusts; use a certificate from the server's [tls] client_ca; the \
             server's log says which (\"TLS connection refused\")",
            stranger.0
        )
    );

    // The CA's own certificate (and key) as the client certificate.
    let ca_as_client = client(
        d,
        "ca-as-client",
        (s.ca.pem.clone(), s.ca.issuer.key().serialize_pem()),
    );
    let err = status(&https, &ca_pem, &ca_as_client).await;
    assert!(
        err.starts_with(&format!(
            "signet: the server refused the client certificate {}: (",
            ca_as_client.0
        )) && err.contains("a CA certificate used as a client certificate"),
        "{err}"
    );

    let http = format!("http://localhost:{}", s.tls);
    let err = status(&http, &ca_pem, &good).await;
    assert_eq!(
        err.trim_end(),
        format!(
            "signet: {http} answers in TLS: use --addr https://localhost:{} (with \
             SIGNET_TLS_CA, SIGNET_TLS_CERT and SIGNET_TLS_KEY naming PEM files)",
            s.tls
        )
    );

    let plain = format!("https://localhost:{}", s.plain);
    let err = status(&plain, &ca_pem, &good).await;
    assert!(
        err.starts_with(&format!(
            "signet: cannot connect to {plain}: {plain} does not answer in TLS: the server \
             listens in plaintext on this port"
        )),
        "{err}"
    );
}
