//! Issuers and OpenID Connect discovery: a ring with an issuer puts it in
//! every token as `iss` (a caller's own `iss` is refused), and serves a
//! discovery document that an independent OIDC client (Python's authlib,
//! installed by scripts/oidc-client-setup) follows from the issuer URL
//! alone to verify a Signet token.

use std::{path::PathBuf, process::Command};

use signet::pb::{self, signer_client::SignerClient};
use tonic::{Code, transport::Channel};

use crate::common::{self, TestServer, certs, http_get, part};

/// The Python interpreter of the OIDC client's virtual environment. The
/// test fails (never skips) when it cannot be installed.
fn oidc_client_python() -> PathBuf {
    let out = Command::new("scripts/oidc-client-setup")
        .output()
        .expect("scripts/oidc-client-setup runs");
    assert!(
        out.status.success(),
        "the OIDC client (authlib) could not be installed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs the independent client: discovery from `issuer`, then verification
/// of `token`, trusting `ca`. `Ok(claims)` or `Err(its reason)`.
fn discover_and_verify(
    python: &PathBuf,
    issuer: &str,
    token: &str,
    ca: &std::path::Path,
) -> Result<serde_json::Value, String> {
    let out = Command::new(python)
        .arg("tests/oidc/discover_and_verify.py")
        .args([issuer, token, ca.to_str().unwrap()])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn sign(channel: &Channel, ring: &str, claims: &str) -> Result<String, tonic::Status> {
    SignerClient::new(channel.clone())
        .sign(pb::SignRequest {
            key_ring: ring.into(),
            claims_json: claims.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().token)
}

async fn create(
    server: &TestServer,
    name: &str,
    alg: &str,
    issuer: &str,
) -> Result<pb::KeyRingInfo, tonic::Status> {
    server
        .admin()
        .create_key_ring(pb::CreateKeyRingRequest {
            name: name.into(),
            algorithm: alg.into(),
            rsa_bits: 0,
            issuer: issuer.into(),
        })
        .await
        .map(|r| r.into_inner().ring.unwrap())
}

/// Signet over HTTPS (its own `[http_tls]` listener) with two rings with
/// issuers: `default` at the origin, `payments` at its /v1/rings prefix.
/// authlib discovers each from the issuer URL alone, checks the document,
/// fetches the JWKS it names and verifies a Signet token; a token of the
/// other ring is refused.
#[tokio::test]
async fn an_independent_oidc_client_discovers_and_verifies() {
    let python = tokio::task::spawn_blocking(oidc_client_python)
        .await
        .unwrap();
    let server = TestServer::start(&[]).await;
    let ca = certs::ca("oidc CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let addr = certs::serve_https(server.keys.clone(), &ca, dir.path()).await;

    let origin = format!("https://{addr}");
    let payments = format!("https://{addr}/v1/rings/payments");
    create(&server, "default", "RS256", &origin).await.unwrap();
    let ring = create(&server, "payments", "RS256", &payments)
        .await
        .unwrap();
    assert_eq!(ring.issuer, payments);

    let claims = r#"{"sub":"alice","aud":"api.example"}"#;
    let t_default = sign(&server.channel, "default", claims).await.unwrap();
    let t_payments = sign(&server.channel, "payments", claims).await.unwrap();
    assert_eq!(part(&t_default, 1)["iss"], origin.as_str());
    assert_eq!(part(&t_payments, 1)["iss"], payments.as_str());

    let (p, ca_p) = (python.clone(), ca_path.clone());
    let (o, pay, td, tp) = (
        origin.clone(),
        payments.clone(),
        t_default.clone(),
        t_payments.clone(),
    );
    let results = tokio::task::spawn_blocking(move || {
        [
            discover_and_verify(&p, &o, &td, &ca_p),
            discover_and_verify(&p, &pay, &tp, &ca_p),
            // The other ring's token: its kid is not in this issuer's JWKS.
            discover_and_verify(&p, &o, &tp, &ca_p),
        ]
    })
    .await
    .unwrap();
    let [ok_default, ok_payments, crossed] = results;
    let ok_default = ok_default.unwrap();
    assert_eq!(ok_default["sub"], "alice");
    assert_eq!(ok_default["iss"], origin.as_str());
    assert_eq!(ok_payments.unwrap()["iss"], payments.as_str());
    assert!(crossed.is_err(), "a token of another ring verified");
}

/// The issuer's rules at the gRPC boundary, the `iss` Signet sets, and the
/// discovery routes' answers and caching.
#[tokio::test]
async fn issuer_rules_iss_claim_and_discovery_routes() {
    let server = TestServer::start(&[("plain", signet::crypto::Algorithm::Es256)]).await;
    let http = server.http;
    let issuer = format!("http://{http}/v1/rings/es");

    // Bad issuers: INVALID_ARGUMENT naming the field and the rule, and no
    // ring is created.
    for (bad, rule) in [
        ("http://issuer.example.org", "must be an https:// URL"),
        (
            "https://issuer.example.org?x=1",
            "must have no query (?) or fragment (#)",
        ),
        (
            "https://issuer.example.org#f",
            "must have no query (?) or fragment (#)",
        ),
        ("https://issuer.example.org/", "must not end with '/'"),
        ("issuer", "is not a URL"),
    ] {
        let e = create(&server, "bad", "ES256", bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().starts_with("issuer: "), "{}", e.message());
        assert!(e.message().contains(rule), "{bad}: {}", e.message());
    }
    assert!(server.keys.ring("bad", "ring").is_err(), "nothing created");

    create(&server, "es", "ES256", &issuer).await.unwrap();
    let token = sign(&server.channel, "es", r#"{"sub":"s"}"#).await.unwrap();
    assert_eq!(part(&token, 1)["iss"], issuer.as_str());
    // A caller's own iss is refused, not overridden.
    for iss in [issuer.as_str(), "https://other.example"] {
        let claims = format!(r#"{{"sub":"s","iss":"{iss}"}}"#);
        let e = sign(&server.channel, "es", &claims).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message()
                .starts_with("claims_json.iss: must not be given: ring es sets iss"),
            "{}",
            e.message()
        );
    }
    // A ring without an issuer leaves iss to the caller, as before.
    let t = sign(&server.channel, "plain", r#"{"iss":"mine"}"#)
        .await
        .unwrap();
    assert_eq!(part(&t, 1)["iss"], "mine");

    // The discovery document, cached like the JWKS.
    let (status, head, body) =
        http_get(http, "/v1/rings/es/.well-known/openid-configuration").await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("cache-control: public, max-age="), "{head}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["issuer"], issuer.as_str());
    assert_eq!(doc["jwks_uri"], format!("{issuer}/.well-known/jwks.json"));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert_eq!(
        doc["response_types_supported"],
        serde_json::json!(["id_token"])
    );
    assert_eq!(
        doc["subject_types_supported"],
        serde_json::json!(["public"])
    );
    // jwks_uri answers with the ring's JWKS.
    let (status, _, jwks) = http_get(http, "/v1/rings/es/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    common::verify(&token, &jwks);
    // ETag and 304.
    let path = "/v1/rings/es/.well-known/openid-configuration";
    let (_, raw, _) = get_with(http, path, None).await;
    let (status, again, body) = get_with(http, path, Some(&etag(&raw))).await;
    assert_eq!(status, 304, "{again}");
    assert!(body.is_empty());

    // No issuer, unknown ring: 404. The default route serves ring default
    // (absent here).
    for path in [
        "/v1/rings/plain/.well-known/openid-configuration",
        "/v1/rings/nope/.well-known/openid-configuration",
        "/.well-known/openid-configuration",
    ] {
        let (status, _, body) = http_get(http, path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (_, _, body) = http_get(http, "/v1/rings/plain/.well-known/openid-configuration").await;
    assert!(body.contains("ring plain has no issuer"), "{body}");

    // UpdatePolicy: unset keeps the issuer, a bad one is refused with
    // nothing changed, "" removes it.
    let policy = server
        .admin()
        .get_key_ring(pb::GetKeyRingRequest {
            key_ring: "es".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .ring
        .unwrap();
    assert_eq!(policy.issuer, issuer);
    let update = |issuer: Option<&str>| pb::UpdatePolicyRequest {
        key_ring: "es".into(),
        policy: policy.policy,
        issuer: issuer.map(str::to_owned),
    };
    let kept = server.admin().update_policy(update(None)).await.unwrap();
    assert_eq!(kept.into_inner().issuer, issuer);
    let e = server
        .admin()
        .update_policy(update(Some("ftp://x.example")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("issuer: "), "{}", e.message());
    assert_eq!(
        part(&sign(&server.channel, "es", "{}").await.unwrap(), 1)["iss"],
        issuer.as_str(),
        "a refused update changed nothing"
    );
    let removed = server
        .admin()
        .update_policy(update(Some("")))
        .await
        .unwrap();
    assert_eq!(removed.into_inner().issuer, "");
    let t = sign(&server.channel, "es", "{}").await.unwrap();
    assert!(part(&t, 1).get("iss").is_none(), "no issuer, no iss");
    let (status, _, _) = http_get(http, "/v1/rings/es/.well-known/openid-configuration").await;
    assert_eq!(status, 404);
}

/// A GET, with `If-None-Match` if given: (status, raw head, body). Unlike
/// `http_get`, header values keep their case (an ETag is case-sensitive).
pub async fn get_with(
    addr: std::net::SocketAddr,
    path: &str,
    if_none_match: Option<&str>,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra = if_none_match
        .map(|e| format!("If-None-Match: {e}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// The ETag header of a raw head.
pub fn etag(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            l.strip_prefix("etag: ")
                .or_else(|| l.strip_prefix("ETag: "))
        })
        .unwrap()
        .trim()
        .to_owned()
}

/// The issuer from the configuration, the CLI and a sign grant, through
/// the real binary: `[[rings]] issuer` is checked (`--check-config`),
/// applied at creation and again at start to a ring that has another;
/// `signet policy set --issuer/--no-issuer` changes it and other changes
/// keep it; a grant allowing another `iss` than the ring's is refused.
#[tokio::test]
async fn issuer_from_config_cli_and_grants() {
    use crate::common::process::{Proc, kek_file, my_uid, write_config};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kek = kek_file(&dir.path().join("kek"));
    // Admin on the plain rings; on grant-* only sign (constrained), read
    // and policy, so the sign grant's iss rule applies.
    std::fs::write(
        dir.path().join("policy.toml"),
        format!(
            "[[rule]]\nidentity = {me:?}\nactions = [\"admin\"]\nrings = [\"default\", \"other\"]\n\n\
             [[rule]]\nidentity = {me:?}\nactions = [\"sign\", \"read\", \"policy\"]\nrings = [\"grant-*\"]\n\
             [rule.sign]\niss = \"https://orders.example.org\"\n",
            me = my_uid()
        ),
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        &data,
        &kek,
        &[
            ("grant-a", "ES256"),
            ("grant-b", "ES256"),
            ("default", "ES256"),
        ],
    );
    let base = std::fs::read_to_string(&config).unwrap();
    let with_issuers = |default: Option<&str>| {
        let text = base
            .replace(
                "name = \"grant-a\"\n",
                "name = \"grant-a\"\nissuer = \"https://a.example\"\n",
            )
            .replace(
                "name = \"grant-b\"\n",
                "name = \"grant-b\"\nissuer = \"https://orders.example.org\"\n",
            );
        let text = match default {
            Some(i) => text.replace(
                "name = \"default\"\n",
                &format!("name = \"default\"\nissuer = {i:?}\n"),
            ),
            None => text,
        };
        std::fs::write(&config, text).unwrap();
    };
    let cfg = config.to_str().unwrap();

    with_issuers(Some("http://a.example"));
    let out = Command::new(crate::common::process::BIN)
        .args(["server", "--config", cfg, "--check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rings[2].issuer: \"http://a.example\" must be an https:// URL"),
        "{err}"
    );

    with_issuers(Some("https://first.example"));
    let server = Proc::spawn(&["server", "--config", cfg], &[]).unwrap();
    let iss = |ring: &str| {
        let token = server.ok(&["sign", "--ring", ring, "--claims", "{}"]);
        part(token.trim(), 1).get("iss").cloned()
    };
    assert_eq!(iss("default").unwrap(), "https://first.example");
    let http = server.http_addr();
    let (status, _, body) = http_get(http, "/.well-known/openid-configuration").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""issuer":"https://first.example""#),
        "{body}"
    );

    // A sign grant that allows another iss than the ring's: refused.
    let denied = server.run(&["sign", "--ring", "grant-a", "--claims", "{}"]);
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("claims_json.iss: ring grant-a sets iss \"https://a.example\""),
        "{err}"
    );
    assert_eq!(iss("grant-b").unwrap(), "https://orders.example.org");

    // The CLI: set, keep across another change, show, remove.
    server.ok(&["policy", "set", "--issuer", "https://second.example"]);
    assert_eq!(iss("default").unwrap(), "https://second.example");
    server.ok(&["policy", "set", "--grace", "8d"]);
    assert_eq!(iss("default").unwrap(), "https://second.example", "kept");
    let shown = server.ok(&["policy", "show"]);
    assert!(
        shown.contains("issuer             https://second.example"),
        "{shown}"
    );
    let bad = server.run(&["policy", "set", "--issuer", "https://x.example/"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("must not end with '/'"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let created = server.ok(&[
        "rings",
        "create",
        "other",
        "--alg",
        "EdDSA",
        "--issuer",
        "https://c.example/v1/rings/other",
    ]);
    assert!(
        created.contains("issuer https://c.example/v1/rings/other: discovery at https://c.example/v1/rings/other/.well-known/openid-configuration"),
        "{created}"
    );
    assert_eq!(server.terminate().code(), Some(0));

    // At start, the configured issuer replaces another one.
    let server = Proc::spawn(&["server", "--config", cfg], &[]).unwrap();
    let iss = |ring: &str| {
        let token = server.ok(&["sign", "--ring", ring, "--claims", "{}"]);
        part(token.trim(), 1).get("iss").cloned()
    };
    assert_eq!(iss("default").unwrap(), "https://first.example");
    server.ok(&["policy", "set", "--no-issuer"]);
    assert_eq!(iss("default"), None);
    assert_eq!(server.terminate().code(), Some(0));

    // A ring the configuration gives no issuer keeps what it has.
    with_issuers(None);
    let server = Proc::spawn(&["server", "--config", cfg], &[]).unwrap();
    let token = server.ok(&["sign", "--ring", "default", "--claims", "{}"]);
    assert!(part(token.trim(), 1).get("iss").is_none());
    server.ok(&["policy", "set", "--issuer", "https://third.example"]);
    assert_eq!(server.terminate().code(), Some(0));
    let server = Proc::spawn(&["server", "--config", cfg], &[]).unwrap();
    let token = server.ok(&["sign", "--ring", "default", "--claims", "{}"]);
    assert_eq!(part(token.trim(), 1)["iss"], "https://third.example");
}

/// `signet dev --issuer`: the default ring's tokens carry the issuer; a
/// bad one stops it before it starts, naming the flag and the rule.
#[tokio::test]
async fn dev_issuer() {
    use crate::common::process::Proc;
    let data = tempfile::tempdir().unwrap();
    let dev = Proc::dev(data.path(), &["--issuer", "http://127.0.0.1:8080"], &[]).unwrap();
    let token = dev.ok(&["sign", "--claims", "{}"]);
    assert_eq!(part(token.trim(), 1)["iss"], "http://127.0.0.1:8080");
    let bad = Proc::dev(
        tempfile::tempdir().unwrap().path(),
        &["--issuer", "http://a.example"],
        &[],
    );
    let err = bad.err().unwrap();
    assert!(
        err.contains("--issuer: \"http://a.example\" must be an https:// URL"),
        "{err}"
    );
}
