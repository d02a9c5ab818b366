//! Access control and audit through real mTLS connections: certificates
//! are generated here (rcgen); every decision is checked against the grants
//! policy and found in the audit log, which fails closed.

use std::{path::Path, sync::Arc, time::Duration};

use rcgen::SanType;

use crate::common::certs::{Ca, ca, leaf};
use signet::{
    audit::{AuditConfig, AuditLog, SinkConfig},
    authz::{Authz, SharedAuthz},
    clock::SystemClock,
    crypto::{Algorithm, KeySpec},
    keyring::KeyManager,
    pb::{
        self, key_admin_client::KeyAdminClient, operator_client::OperatorClient,
        signer_client::SignerClient,
    },
    tls::{Acceptor, TlsFiles},
};
use tokio::net::TcpListener;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

const POLICY: &str = r#"
[[rule]]
identity = "uri:spiffe://test/issuer/*"
actions = ["sign", "read"]
rings = ["pay-*"]

[[rule]]
identity = "dns:gateway.internal"
actions = ["verify", "read"]
rings = ["*"]

[[rule]]
identity = "uri:spiffe://test/security-team"
actions = ["admin"]
rings = ["*"]
"#;

struct Fixture {
    addr: std::net::SocketAddr,
    ca: Ca,
    audit_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A server whose audit appends give up after `audit_timeout`: short where
/// a test waits for the failure, long elsewhere (a loaded disk can stall an
/// fsync for more than a second, and then the Sign fails closed).
async fn start(audit_file: Option<&Path>, audit_timeout: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("test CA");
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
    for ring in ["pay-eu", "internal"] {
        keys.create_ring(ring, KeySpec::new(Algorithm::EdDsa, 0).unwrap())
            .await
            .unwrap();
    }
    let audit_path = audit_file.map_or_else(|| dir.path().join("audit.log"), Path::to_path_buf);
    let mut config = AuditConfig::new(vec![SinkConfig::file(audit_path.clone())]);
    config.timeout = audit_timeout;
    let audit = AuditLog::open(config).await.unwrap();
    let on_reject = signet::server::audit_rejected(audit.clone());
    let authz = SharedAuthz::new(Authz::from_toml(POLICY).unwrap());
    let key = Arc::new(keys.audit_key(&dir.path().join("audit.key")).await.unwrap());
    let parts = signet::rpc::AuditParts {
        log: audit,
        key: Some(key),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = Arc::new(Acceptor::load(files).unwrap());
    let incoming = acceptor.incoming(listener, on_reject);
    tokio::spawn(signet::rpc::serve_with(
        incoming,
        keys,
        Arc::new(authz),
        Some(parts),
        std::future::pending(),
    ));
    Fixture {
        addr,
        ca,
        audit_path,
        _dir: dir,
    }
}

async fn channel(
    f: &Fixture,
    client: Option<(String, String)>,
    trust: &str,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trust))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{}", f.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

fn sign_req(ring: &str) -> pb::SignRequest {
    pb::SignRequest {
        key_ring: ring.into(),
        claims_json: br#"{"sub":"canary-subject-7731","secret":"canary-claim-value-0042"}"#
            .to_vec(),
        ..Default::default()
    }
}

async fn code_of<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn permission_matrix_over_mtls_and_every_call_audited() {
    let f = start(None, Duration::from_secs(30)).await;
    let issuer = leaf(
        &f.ca,
        "issuer",
        vec![SanType::URI(
            "spiffe://test/issuer/payments".try_into().unwrap(),
        )],
    );
    let gateway = leaf(
        &f.ca,
        "gw",
        vec![SanType::DnsName("gateway.internal".try_into().unwrap())],
    );
    let team = leaf(
        &f.ca,
        "security-team",
        vec![SanType::URI(
            "spiffe://test/security-team".try_into().unwrap(),
        )],
    );
    let stranger = leaf(
        &f.ca,
        "stranger",
        vec![SanType::DnsName("stranger.internal".try_into().unwrap())],
    );

    let mut expected = 0;
    for (who, cert, cases) in [
        (
            "issuer",
            issuer,
            vec![
                ("sign", "pay-eu", Code::Ok),
                ("sign", "internal", Code::PermissionDenied),
                ("rotate", "pay-eu", Code::PermissionDenied),
                ("jwks", "pay-eu", Code::Ok),
                ("seal", "*", Code::PermissionDenied),
            ],
        ),
        (
            "gateway",
            gateway,
            vec![
                ("sign", "pay-eu", Code::PermissionDenied),
                ("verify", "pay-eu", Code::Ok),
                ("jwks", "internal", Code::Ok),
                ("rotate", "internal", Code::PermissionDenied),
            ],
        ),
        (
            "team",
            team,
            vec![
                ("rotate", "internal", Code::Ok),
                ("sign", "internal", Code::Ok),
                ("status", "*", Code::Ok),
            ],
        ),
        (
            "stranger",
            stranger,
            vec![
                ("sign", "pay-eu", Code::PermissionDenied),
                ("jwks", "pay-eu", Code::PermissionDenied),
                ("status", "*", Code::PermissionDenied),
            ],
        ),
    ] {
        let ch = channel(&f, Some(cert), &f.ca.pem).await.unwrap();
        let mut signer = SignerClient::new(ch.clone());
        let mut admin = KeyAdminClient::new(ch.clone());
        let mut op = OperatorClient::new(ch.clone());
        for (rpc, ring, want) in cases {
            let got = match rpc {
                "sign" => code_of(signer.sign(sign_req(ring)).await).await,
                "verify" => {
                    code_of(
                        signer
                            .verify(pb::VerifyRequest {
                                key_ring: ring.into(),
                                token: "a.b.c".into(),
                            })
                            .await,
                    )
                    .await
                }
                "jwks" => {
                    code_of(
                        signer
                            .get_jwks(pb::GetJwksRequest {
                                key_ring: ring.into(),
                            })
                            .await,
                    )
                    .await
                }
                "rotate" => {
                    code_of(
                        admin
                            .rotate(pb::RotateRequest {
                                key_ring: ring.into(),
                                immediate: true,
                                reason: "matrix".into(),
                                request_id: String::new(),
                                fresh: false,
                            })
                            .await,
                    )
                    .await
                }
                "seal" => {
                    code_of(
                        op.seal(pb::SealRequest {
                            reason: "matrix".into(),
                        })
                        .await,
                    )
                    .await
                }
                "status" => code_of(op.status(pb::StatusRequest {}).await).await,
                _ => unreachable!(),
            };
            assert_eq!(got, want, "{who} {rpc} on {ring}");
            expected += 1;
        }
    }

    // An admin can compute the digest auditors search for; others cannot.
    let team = leaf(
        &f.ca,
        "security-team",
        vec![SanType::URI(
            "spiffe://test/security-team".try_into().unwrap(),
        )],
    );
    let mut op = OperatorClient::new(channel(&f, Some(team), &f.ca.pem).await.unwrap());
    let hmac = op
        .audit_hash(pb::AuditHashRequest {
            value: "canary-subject-7731".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .hmac;
    let status = op.status(pb::StatusRequest {}).await.unwrap().into_inner();
    expected += 2;
    let gateway = leaf(
        &f.ca,
        "gw",
        vec![SanType::DnsName("gateway.internal".try_into().unwrap())],
    );
    let denied = OperatorClient::new(channel(&f, Some(gateway), &f.ca.pem).await.unwrap())
        .audit_hash(pb::AuditHashRequest { value: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    expected += 1;

    // No client certificate, or one from another CA: the handshake fails.
    assert!(
        SignerClient::new(channel(&f, None, &f.ca.pem).await.unwrap())
            .sign(sign_req("pay-eu"))
            .await
            .is_err()
    );
    let rogue_ca = ca("rogue");
    let rogue = leaf(&rogue_ca, "security-team", vec![]);
    let r = match channel(&f, Some(rogue), &f.ca.pem).await {
        Ok(ch) => SignerClient::new(ch)
            .sign(sign_req("pay-eu"))
            .await
            .map(|_| ()),
        Err(_) => Err(tonic::Status::unavailable("handshake")),
    };
    assert!(r.is_err(), "an untrusted certificate is refused");
    // Refused handshakes are recorded as the server sees them fail, not
    // before the client's error: wait for both records.
    let path = f.audit_path.clone();
    crate::common::wait_for("both refused handshakes audited", move || {
        std::fs::read_to_string(&path)
            .unwrap()
            .matches(r#""rpc":"tls.handshake""#)
            .count()
            >= 2
    })
    .await;

    // Every call is in the audit log, with identity, outcome and code.
    let log = std::fs::read_to_string(&f.audit_path).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let handshakes = lines.iter().filter(|l| l["rpc"] == "tls.handshake").count();
    assert!(
        handshakes >= 2,
        "refused handshakes are audited: {handshakes}"
    );
    // Besides one outcome per RPC: an intent before each mutating RPC that
    // was allowed (the team's rotation), and signed checkpoints.
    let intents = lines.iter().filter(|l| l["outcome"] == "intent").count();
    assert_eq!(intents, 1, "the allowed rotation announced itself");
    let signed = lines
        .iter()
        .filter(|l| signet::audit::is_signed_kind(l["rpc"].as_str().unwrap()))
        .count();
    assert_eq!(
        lines.len() - handshakes - intents - signed,
        expected,
        "one outcome record per RPC"
    );
    let denied = lines
        .iter()
        .filter(|l| l["outcome"] == "denied" && l["rpc"] != "tls.handshake")
        .count();
    assert_eq!(denied, 9);
    assert!(
        lines.iter().any(|l| l["sub_hmac"] == hmac.as_str()),
        "audit hash finds the subject's records"
    );
    // The head Status reported was the log's head at that moment.
    let at_status = lines
        .iter()
        .position(|l| l["seq"] == status.audit_head_seq)
        .unwrap();
    assert_eq!(
        lines[at_status + 1]["prev"],
        status.audit_head_hash.as_str(),
        "Status reports the hash the chain continues from"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["peer"] == "uri:spiffe://test/issuer/payments"
                && l["code"] == "OK"
                && l["kid"].as_str().is_some_and(|k| !k.is_empty())
                && l["jti"].is_string()
                && l["exp"].is_number())
    );
    assert!(
        lines
            .iter()
            .any(|l| l["peer"] == "dns:stranger.internal" && l["code"] == "PERMISSION_DENIED")
    );
    assert!(lines.iter().any(|l| l["peer"] == "dns:gateway.internal"));
    assert!(
        lines
            .iter()
            .all(|l| l["request_id"].as_str().is_some_and(|r| !r.is_empty()))
    );
    // No claims in clear, no token, no key material: only digests.
    assert!(!log.contains("canary-claim-value-0042") && !log.contains("canary-subject-7731"));
    assert!(!log.contains("eyJ"), "no token or JOSE header in the log");
    assert!(
        lines
            .iter()
            .any(|l| l["claims_hmac"].as_str().is_some_and(|h| h.len() == 64)
                && l["sub_hmac"].is_string())
    );
    let report = signet::audit::verify_file(&f.audit_path).unwrap();
    assert!(report.is_valid(), "{:?}", report.first_error);
}

#[tokio::test]
async fn audit_failure_fails_closed_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("audit.log");
    let real = dir.path().join("real.log");
    std::os::unix::fs::symlink("/dev/full", &link).unwrap();
    let f = start(Some(&link), Duration::from_millis(500)).await;
    let team = leaf(
        &f.ca,
        "security-team",
        vec![SanType::URI(
            "spiffe://test/security-team".try_into().unwrap(),
        )],
    );
    let mut signer = SignerClient::new(channel(&f, Some(team), &f.ca.pem).await.unwrap());

    let err = signer.sign(sign_req("internal")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "audit unavailable");

    // The sink works again: requests succeed (the log retries the sink).
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = signer.sign(sign_req("internal")).await;
        if r.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sink never came back: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(signet::audit::verify_file(&real).unwrap().is_valid());
}

/// 10,000 concurrent Signs through the guard produce a log that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_signs_verify() {
    let f = start(None, Duration::from_secs(30)).await;
    let team = leaf(
        &f.ca,
        "security-team",
        vec![SanType::URI(
            "spiffe://test/security-team".try_into().unwrap(),
        )],
    );
    let ch = channel(&f, Some(team), &f.ca.pem).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut signer = SignerClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                signer.sign(sign_req("internal")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = signet::audit::verify_file(&f.audit_path).unwrap();
    assert!(report.is_valid(), "{:?}", report.first_error);
    let log = std::fs::read_to_string(&f.audit_path).unwrap();
    let signs = log.lines().filter(|l| l.contains("Signer/Sign")).count();
    let checkpoints = log
        .lines()
        .filter(|l| l.contains("audit.checkpoint"))
        .count();
    assert_eq!(signs, 10_000);
    assert!(
        checkpoints >= 10,
        "a checkpoint at least every 1,000 records: {checkpoints}"
    );
    assert_eq!(report.lines, 10_000 + checkpoints as u64);
    assert_eq!(report.head_seq, report.lines);
}

/// SIGHUP's TLS reload: the acceptor serves new certificates on the next
/// handshake without a restart; a broken file keeps the old ones.
#[tokio::test]
async fn tls_certificates_reload_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (ca("old CA"), ca("new CA"));
    let files = TlsFiles::new(
        dir.path().join("server.pem"),
        dir.path().join("server.key"),
        dir.path().join("ca.pem"),
    );
    let install = |ca: &Ca| {
        let (cert, key) = leaf(
            ca,
            "signet",
            vec![SanType::DnsName("localhost".try_into().unwrap())],
        );
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        std::fs::write(&files.client_ca, &ca.pem).unwrap();
    };
    install(&old_ca);
    let keys = KeyManager::ephemeral(Arc::new(SystemClock)).await.unwrap();
    let acceptor = Arc::new(Acceptor::load(files.clone()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = acceptor.clone().incoming(listener, |_, _| {});
    tokio::spawn(signet::rpc::serve_with(
        incoming,
        keys,
        Arc::new(signet::rpc::guard::AllowAll),
        None,
        std::future::pending(),
    ));
    let f = Fixture {
        addr,
        ca: old_ca,
        audit_path: dir.path().join("unused"),
        _dir: tempfile::tempdir().unwrap(),
    };
    let status = |ch: Channel| async move {
        OperatorClient::new(ch)
            .status(pb::StatusRequest {})
            .await
            .map(|_| ())
    };
    let ops = || vec![SanType::DnsName("ops.internal".try_into().unwrap())];
    let old_client = leaf(&f.ca, "ops", ops());
    status(
        channel(&f, Some(old_client.clone()), &f.ca.pem)
            .await
            .unwrap(),
    )
    .await
    .unwrap();

    install(&new_ca);
    acceptor.reload().unwrap();
    let new_client = leaf(&new_ca, "ops", ops());
    status(channel(&f, Some(new_client), &new_ca.pem).await.unwrap())
        .await
        .unwrap();
    let old = match channel(&f, Some(old_client), &f.ca.pem).await {
        Ok(ch) => status(ch).await.is_ok(),
        Err(_) => false,
    };
    assert!(
        !old,
        "after reload the old CA's certificates no longer pass"
    );

    std::fs::write(&files.cert, "not a certificate").unwrap();
    assert!(acceptor.reload().is_err(), "a broken file is refused");
    let again = leaf(&new_ca, "ops", ops());
    status(channel(&f, Some(again), &new_ca.pem).await.unwrap())
        .await
        .unwrap();
}

/// SIGHUP, as an operator or logrotate sends it: the server reloads its
/// access policy (a broken file keeps the old rules) and reopens its audit
/// file, so a rotated-away log is followed by a new one at the same path.
#[test]
fn sighup_reloads_the_policy_and_reopens_the_audit_log() {
    use crate::common::{
        eventually,
        process::{Proc, kek_file, my_uid, write_config},
    };

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kek = kek_file(&dir.path().join("kek"));
    let config = write_config(dir.path(), &data, &kek, &[("r", "EdDSA")]);
    let policy = dir.path().join("policy.toml");
    let grant = |actions: &str| {
        let rule = format!(
            "[[rule]]\nidentity = {:?}\nactions = {actions}\nrings = [\"*\"]\n",
            my_uid()
        );
        std::fs::write(&policy, rule).unwrap();
    };
    grant(r#"["read"]"#);
    let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap();
    let sign = || server.run(&["sign", "--ring", "r", "--claims", "{}"]);
    let hup = || {
        let pid = server.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    let logs = || server.stderr.lock().unwrap().clone();
    let denied = |out: &std::process::Output| {
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("PermissionDenied")
    };

    assert!(denied(&sign()), "read only: no signing");
    // The policy file changes; nothing happens until SIGHUP.
    grant(r#"["read", "sign"]"#);
    assert!(denied(&sign()), "policies reload on SIGHUP only");
    // logrotate moves the audit log away, then signals.
    let log = data.join("audit.log");
    let rotated = data.join("audit.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    hup();
    let within = Duration::from_secs(5);
    eventually(within, "the new policy", || sign().status.success());
    assert!(logs().contains("authz policy reloaded"), "{}", logs());
    let fresh = std::fs::read_to_string(&log).unwrap();
    assert!(
        fresh.contains(r#""rpc":"signet.v1.Signer/Sign","ring":"r""#)
            && fresh.contains(r#""outcome":"ok""#),
        "the reopened log at the same path has the new records: {fresh}"
    );
    let out = server.run(&["audit", "verify", rotated.to_str().unwrap()]);
    assert!(out.status.success(), "the rotated file is intact");
    // The new file's first record continues the old file's chain.
    let old_last = std::fs::read_to_string(&rotated).unwrap();
    let old_last = old_last.lines().last().unwrap();
    let first: serde_json::Value = serde_json::from_str(fresh.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["prev"],
        signet::audit::line_hash(format!("{old_last}\n").as_bytes())
    );

    // A broken policy is refused; the rules in force stay.
    std::fs::write(&policy, "[[rule]]\nidentity = 42\n").unwrap();
    hup();
    eventually(within, "the broken policy rejected", || {
        logs().contains("authz policy rejected; keeping the old rules")
    });
    assert!(sign().status.success(), "old rules kept");
}
