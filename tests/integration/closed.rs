//! Closed by default: no caller without an identity, typed identities,
//! certificate revocation and connection age, claim rules, re-authorized
//! streams. Each test tries to get something it should not.

use std::{path::PathBuf, process::Command, sync::Arc, time::Duration};

use rcgen::SanType;
use signet::{
    audit::{AuditConfig, AuditLog, SinkConfig},
    authz::{Authz, SharedAuthz},
    clock::SystemClock,
    crypto::{Algorithm, KeySpec},
    keyring::KeyManager,
    pb::{self, operator_client::OperatorClient, signer_client::SignerClient},
    tls::{Acceptor, TlsFiles},
};
use tokio::net::TcpListener;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::common::{
    certs::{Ca, ca, crl, leaf, leaf_serial},
    eventually,
    process::{BIN, Proc, kek_file, my_uid, write_config},
    wait_for,
};

/// Whether `err` is a refused TLS handshake with the alert `alert` (with
/// TLS 1.3 the client learns of it at its first request).
fn refused(err: &tonic::Status, alert: &str) -> bool {
    matches!(err.code(), Code::Unavailable | Code::Unknown) && format!("{err:?}").contains(alert)
}

fn uri(u: &str) -> SanType {
    SanType::URI(u.try_into().unwrap())
}

fn dns(d: &str) -> SanType {
    SanType::DnsName(d.try_into().unwrap())
}

/// A server on mTLS, in process, with the policy `policy`.
struct Tls {
    addr: std::net::SocketAddr,
    ca: Ca,
    dir: tempfile::TempDir,
    acceptor: Arc<Acceptor>,
    authz: SharedAuthz,
}

impl Tls {
    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap()
    }

    fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    fn crl_path(&self) -> PathBuf {
        self.dir.path().join("clients.crl")
    }

    async fn channel(&self, client: (String, String)) -> Result<Channel, tonic::transport::Error> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca.pem))
            .domain_name("localhost")
            .identity(Identity::from_pem(client.0, client.1));
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }

    /// Signs on `ring` with `claims` as `client`: the call's outcome, or
    /// the connection's failure as UNAVAILABLE.
    async fn sign(
        &self,
        client: (String, String),
        ring: &str,
        claims: &str,
    ) -> Result<pb::SignResponse, tonic::Status> {
        let ch = self
            .channel(client)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        SignerClient::new(ch)
            .sign(pb::SignRequest {
                key_ring: ring.into(),
                claims_json: claims.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

async fn start_tls(policy: &str, allow_cn: bool, max_age: Option<(Duration, Duration)>) -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("closed CA");
    let (cert, key) = leaf(&ca, "signet", vec![dns("localhost")]);
    let mut files = TlsFiles::new(
        dir.path().join("server.pem"),
        dir.path().join("server.key"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    std::fs::write(&files.client_ca, &ca.pem).unwrap();
    files.allow_cn_identity = allow_cn;
    let crl_path = dir.path().join("clients.crl");
    std::fs::write(&crl_path, crl(&ca, &[])).unwrap();
    files.crls = vec![crl_path];
    let keys = KeyManager::ephemeral(Arc::new(SystemClock)).await.unwrap();
    for ring in ["shared", "other"] {
        keys.create_ring(ring, KeySpec::new(Algorithm::Es256, 0).unwrap())
            .await
            .unwrap();
    }
    let audit = AuditLog::open(AuditConfig::new(vec![SinkConfig::file(
        dir.path().join("audit.log"),
    )]))
    .await
    .unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let authz = SharedAuthz::new(Authz::load(&policy_path).unwrap());
    let key = Arc::new(keys.audit_key(&dir.path().join("audit.key")).await.unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = Arc::new(Acceptor::load(files).unwrap());
    let incoming = acceptor
        .clone()
        .incoming(listener, signet::server::audit_rejected(audit.clone()));
    tokio::spawn(signet::rpc::serve_configured(
        incoming,
        keys,
        Arc::new(authz.clone()),
        Some(signet::rpc::AuditParts {
            log: audit,
            key: Some(key),
        }),
        max_age,
        std::future::pending(),
    ));
    Tls {
        addr,
        ca,
        dir,
        acceptor,
        authz,
    }
}

const SECURITY: &str = r#"
[[rule]]
identity = "uri:spiffe://test/ns/security/*"
actions = ["admin"]
rings = ["*"]
"#;

/// A certificate without SANs whose CN is a SPIFFE ID of the security team
/// is no member of it: refused at the handshake while CN identities are off,
/// and only `cn:...` (matching no `uri:` rule) when they are on. A
/// certificate with two URI SANs is refused at the handshake.
#[tokio::test]
async fn lookalike_cn_and_two_uri_sans_get_no_grant() {
    let lookalike = "spiffe://test/ns/security/sa/mallory";
    for allow_cn in [false, true] {
        let f = start_tls(SECURITY, allow_cn, None).await;
        let real = leaf(
            &f.ca,
            "alice",
            vec![uri("spiffe://test/ns/security/sa/alice")],
        );
        f.sign(real, "shared", "{}").await.unwrap();

        let fake = leaf(&f.ca, lookalike, vec![]);
        let err = f.sign(fake, "shared", "{}").await.unwrap_err();
        if allow_cn {
            assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        } else {
            assert!(refused(&err, "HandshakeFailure"), "{err:?}");
        }

        let two = leaf(
            &f.ca,
            "two",
            vec![
                uri("spiffe://test/ns/security/sa/alice"),
                uri("spiffe://test/ns/other/sa/x"),
            ],
        );
        let err = f.sign(two, "shared", "{}").await.unwrap_err();
        assert!(refused(&err, "HandshakeFailure"), "{err:?}");

        // Refused handshakes are audited with the reason.
        let path = f.dir.path().join("audit.log");
        wait_for("the two-URI refusal audited", move || {
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("has 2 URI SANs; a SPIFFE certificate has exactly one")
        })
        .await;
        let log = f.audit();
        if allow_cn {
            assert!(
                log.contains(&format!(r#""peer":"cn:{lookalike}""#)),
                "the CN is typed as such: {log}"
            );
        } else {
            assert!(log.contains("CN identities are off"), "{log}");
        }
        assert!(!log.contains(&format!(r#""peer":"uri:{lookalike}""#)));
    }
}

/// A certificate put on the CRL (reloaded as SIGHUP does) is refused at the
/// next handshake, and an open connection does not outlive
/// `max_connection_age`: the client has to reconnect, and is refused.
#[tokio::test]
async fn revoked_certificate_is_refused_and_old_connections_age_out() {
    let f = start_tls(
        SECURITY,
        false,
        Some((Duration::from_secs(2), Duration::from_millis(500))),
    )
    .await;
    let alice = leaf_serial(
        &f.ca,
        "alice",
        vec![uri("spiffe://test/ns/security/sa/alice")],
        7001,
    );
    let bob = leaf_serial(
        &f.ca,
        "bob",
        vec![uri("spiffe://test/ns/security/sa/bob")],
        7002,
    );
    let ch = f.channel(alice.clone()).await.unwrap();
    let mut held = OperatorClient::new(ch);
    held.status(pb::StatusRequest {}).await.unwrap();

    std::fs::write(f.crl_path(), crl(&f.ca, &[7001])).unwrap();
    f.acceptor.reload().unwrap();
    let err = f.sign(alice, "shared", "{}").await.unwrap_err();
    assert!(refused(&err, "CertificateRevoked"), "{err:?}");
    f.sign(bob.clone(), "shared", "{}").await.unwrap();

    // The connection opened before the revocation is closed within the age
    // (plus grace); the channel's reconnect is then refused.
    let rt = tokio::runtime::Handle::current();
    let refused = tokio::task::spawn_blocking(move || {
        eventually(
            Duration::from_secs(15),
            "the old connection aged out",
            || rt.block_on(held.status(pb::StatusRequest {})).is_err(),
        );
    });
    refused.await.unwrap();
    // A broken CRL file keeps the loaded list.
    std::fs::write(f.crl_path(), "not a crl").unwrap();
    assert!(f.acceptor.reload().is_err());
    f.sign(bob, "shared", "{}").await.unwrap();
    let path = f.dir.path().join("audit.log");
    wait_for("the revoked handshake audited", move || {
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("invalid peer certificate: Revoked")
    })
    .await;
}

const CLAIMS_POLICY: &str = r#"
[[rule]]
identity = "uri:spiffe://test/ns/orders/sa/api"
actions = ["sign"]
rings = ["shared"]
[rule.sign]
iss = "https://orders.test"
aud = ["orders-api"]
aud_required = true
sub = "customer-*"

[[rule]]
identity = "uri:spiffe://test/ns/billing/sa/api"
actions = ["sign"]
rings = ["shared"]
[rule.sign]
aud = ["billing-api"]
max_ttl = "5m"
typ = ["JWT"]
"#;

/// Two issuers share one ring; each mints only what its rule allows. A
/// refusal names the claim and the rule for the caller, and the audit record
/// names the claim, never its value.
#[tokio::test]
async fn claim_rules_limit_what_each_issuer_signs() {
    let f = start_tls(CLAIMS_POLICY, false, None).await;
    let orders = || leaf(&f.ca, "orders", vec![uri("spiffe://test/ns/orders/sa/api")]);
    let billing = || {
        leaf(
            &f.ca,
            "billing",
            vec![uri("spiffe://test/ns/billing/sa/api")],
        )
    };

    let ok = f
        .sign(
            orders(),
            "shared",
            r#"{"aud":"orders-api","sub":"customer-1"}"#,
        )
        .await
        .unwrap();
    let claims = crate::common::part(&ok.token, 1);
    assert_eq!(claims["iss"], "https://orders.test", "Signet sets iss");
    let ok = f
        .sign(billing(), "shared", r#"{"aud":"billing-api"}"#)
        .await
        .unwrap();
    let claims = crate::common::part(&ok.token, 1);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300,
        "the ring's 1h default is capped by the rule's max_ttl"
    );
    assert!(claims.get("iss").is_none());

    let cases = [
        (
            orders(),
            r#"{"aud":"payments-admin","sub":"customer-1"}"#,
            "claims_json.aud: \"payments-admin\" is not allowed for uri:spiffe://test/ns/orders/sa/api (rule 0)",
            "claim rule: claims_json.aud (rule 0)",
            "payments-admin",
        ),
        (
            orders(),
            r#"{"aud":"orders-api","sub":"employee-9"}"#,
            "claims_json.sub: \"employee-9\" is not allowed for uri:spiffe://test/ns/orders/sa/api (rule 0)",
            "claim rule: claims_json.sub (rule 0)",
            "employee-9",
        ),
        (
            orders(),
            r#"{"aud":"orders-api","sub":"customer-1","iss":"https://evil.test"}"#,
            "claims_json.iss: \"https://evil.test\" is not allowed for uri:spiffe://test/ns/orders/sa/api (rule 0)",
            "claim rule: claims_json.iss (rule 0)",
            "evil.test",
        ),
        (
            orders(),
            r#"{"sub":"customer-1"}"#,
            "claims_json.aud: is required for uri:spiffe://test/ns/orders/sa/api (rule 0)",
            "claim rule: claims_json.aud (rule 0)",
            "\u{0}",
        ),
        (
            billing(),
            r#"{"aud":"orders-api"}"#,
            "claims_json.aud: \"orders-api\" is not allowed for uri:spiffe://test/ns/billing/sa/api (rule 1)",
            "claim rule: claims_json.aud (rule 1)",
            "\u{0}",
        ),
    ];
    for (client, claims, message, reason, secret) in cases {
        let err = f.sign(client, "shared", claims).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{claims}");
        assert_eq!(err.message(), message, "{claims}");
        let log = f.audit();
        let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!(last["code"], "PERMISSION_DENIED");
        assert_eq!(last["reason"], reason);
        assert!(
            !log.contains(secret),
            "the value stays out of the audit log"
        );
    }
    // A ttl over the rule's cap, and a typ the rule does not list.
    let ch = f.channel(billing()).await.unwrap();
    let err = SignerClient::new(ch.clone())
        .sign(pb::SignRequest {
            key_ring: "shared".into(),
            claims_json: br#"{"aud":"billing-api"}"#.to_vec(),
            ttl: Some(prost_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "ttl: 10m (longer than 5m) is not allowed for uri:spiffe://test/ns/billing/sa/api (rule 1)"
    );
    let err = SignerClient::new(ch)
        .sign(pb::SignRequest {
            key_ring: "shared".into(),
            claims_json: br#"{"aud":"billing-api"}"#.to_vec(),
            header_json: br#"{"typ":"at+jwt"}"#.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "header_json.typ: \"at+jwt\" is not allowed for uri:spiffe://test/ns/billing/sa/api (rule 1)"
    );
}

/// An open WatchJwks stream ends with PERMISSION_DENIED when a policy
/// reload withdraws its caller's grant, and the end is audited.
#[tokio::test]
async fn open_streams_are_reauthorized_on_policy_reload() {
    let policy = r#"
[[rule]]
identity = "dns:gateway.test"
actions = ["read"]
rings = ["*"]
"#;
    let f = start_tls(policy, false, None).await;
    let gw = leaf(&f.ca, "gw", vec![dns("gateway.test")]);
    let mut stream = SignerClient::new(f.channel(gw).await.unwrap())
        .watch_jwks(pb::WatchJwksRequest {
            key_ring: "shared".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(!first.jwks_json.is_empty());
    // A reload that keeps the grant leaves the stream open.
    f.authz.reload(&f.policy_path()).unwrap();
    std::fs::write(
        f.policy_path(),
        policy.replace("gateway.test", "other.test"),
    )
    .unwrap();
    f.authz.reload(&f.policy_path()).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends after the reload");
    let err = end.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let log = f.audit();
    assert!(
        log.lines().any(|l| l.contains("WatchJwks")
            && l.contains("PERMISSION_DENIED")
            && l.contains("policy reload")),
        "{log}"
    );
}

/// The shipped example config, with its paths moved into a temp dir,
/// starts a server on a Unix socket that refuses a caller it grants
/// nothing (this test's uid is in no rule of the example policy).
#[test]
fn example_config_starts_a_closed_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let d = dir.path().display().to_string();
    let kek = dir.path().join("kek");
    kek_file(&kek);
    std::fs::copy(
        format!("{root}/signet.policy.example.toml"),
        dir.path().join("policy.toml"),
    )
    .unwrap();
    let text = std::fs::read_to_string(format!("{root}/signet.example.toml"))
        .unwrap()
        .replace("/var/lib/signet", &format!("{d}/data"))
        .replace("/etc/signet/kek", &kek.display().to_string())
        .replace("/etc/signet/policy.toml", &format!("{d}/policy.toml"))
        .replace("/run/signet/grpc.sock", &format!("{d}/grpc.sock"))
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0")
        .replace(
            "allow_unlocked_memory = false",
            "allow_unlocked_memory = true",
        );
    let config = dir.path().join("signet.toml");
    std::fs::write(&config, text).unwrap();
    let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap();
    assert!(server.grpc.starts_with("unix:"), "{}", server.grpc);
    for args in [
        &["sign", "--claims", "{}"][..],
        &["status"],
        &["rotate", "--now", "--reason", "x"],
    ] {
        let out = server.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must be refused");
        assert!(stderr.contains("PermissionDenied"), "{args:?}: {stderr}");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("grpc.sock"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o660, "the socket's default mode");
    assert!(server.terminate().success());
    assert!(
        !dir.path().join("grpc.sock").exists(),
        "the socket file is removed at exit"
    );
}

/// The permission matrix over the Unix socket, with two real uids: this
/// test's (root in CI: granted) and `nobody` (65534: read only).
#[test]
fn permission_matrix_over_the_unix_socket() {
    use std::os::unix::{fs::PermissionsExt, process::CommandExt};
    assert!(
        nix::unistd::getuid().is_root(),
        "this test switches to uid 65534 for its second caller and must run as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        format!(
            "[[rule]]\nidentity = {:?}\nactions = [\"admin\"]\nrings = [\"*\"]\n\n\
             [[rule]]\nidentity = \"unix:user:nobody\"\nactions = [\"read\"]\nrings = [\"r\"]\n",
            my_uid()
        ),
    )
    .unwrap();
    let kek = kek_file(&dir.path().join("kek"));
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &kek,
        &[("r", "ES256")],
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[store]", "grpc_socket_group = \"65534\"\n\n[store]");
    std::fs::write(&config, text).unwrap();
    let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap();
    // The binary, where uid 65534 can run it.
    let bin = dir.path().join("signet");
    std::fs::copy(BIN, &bin).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new(&bin)
            .args(args)
            .env("SIGNET_ADDR", &server.grpc)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let code = |out: &std::process::Output| {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            "ok".to_owned()
        } else if err.contains("PermissionDenied") {
            "denied".to_owned()
        } else {
            err
        }
    };
    let cases: [(&[&str], &str, &str); 5] = [
        (&["sign", "--ring", "r", "--claims", "{}"], "ok", "denied"),
        (&["jwks", "--ring", "r"], "ok", "ok"),
        (&["keys", "--ring", "r"], "ok", "ok"),
        (
            &["rotate", "--ring", "r", "--reason", "matrix"],
            "ok",
            "denied",
        ),
        (&["status"], "ok", "denied"),
    ];
    for (args, root, nobody) in cases {
        assert_eq!(code(&server.run(args)), root, "root: {args:?}");
        assert_eq!(code(&as_nobody(args)), nobody, "nobody: {args:?}");
    }
    let log = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains(r#""peer":"unix:uid:65534""#)
            && l.contains("PERMISSION_DENIED")
            && l.contains("Signer/Sign")),
        "{log}"
    );
    // The socket's mode is the first gate: without the group bits, uid
    // 65534 cannot even connect.
    let sock = dir.path().join("grpc.sock");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = as_nobody(&["jwks", "--ring", "r"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
