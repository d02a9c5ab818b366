//! Public keys as SPKI PEM, over HTTP and from `signet keys --format pem`,
//! checked by `openssl`: for every algorithm, openssl verifies a Signet
//! token's signature with the PEM alone, and refuses a tampered one.

use std::{path::Path, process::Command};

use signet::{crypto::Algorithm, keyring::SignParams};

use crate::{
    common::{TestServer, http_get, part, process::Proc},
    oidc::{etag, get_with},
};

/// A JWS ES256 signature (r || s, 32 bytes each) as the DER
/// ECDSA-Sig-Value openssl reads: SEQUENCE { INTEGER r, INTEGER s }.
fn ecdsa_der(sig: &[u8]) -> Vec<u8> {
    let int = |b: &[u8]| {
        let b = &b[b.iter().position(|&x| x != 0).unwrap_or(b.len() - 1)..];
        let mut out = vec![0x02];
        if b[0] & 0x80 != 0 {
            out.push(u8::try_from(b.len() + 1).unwrap());
            out.push(0);
        } else {
            out.push(u8::try_from(b.len()).unwrap());
        }
        out.extend_from_slice(b);
        out
    };
    let (r, s) = sig.split_at(32);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, u8::try_from(body.len()).unwrap()];
    out.extend(body);
    out
}

/// Runs openssl to verify `sig` over `input` with the PEM key in `pem`, as
/// `alg` signs. Returns whether openssl accepted it (and its output).
fn openssl_verifies(alg: &str, pem: &Path, input: &[u8], sig: &[u8]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let (input_path, sig_path) = (dir.path().join("input"), dir.path().join("sig"));
    std::fs::write(&input_path, input).unwrap();
    let sig = if alg == "ES256" {
        ecdsa_der(sig)
    } else {
        sig.to_vec()
    };
    std::fs::write(&sig_path, sig).unwrap();
    let (pem, input_path, sig_path) = (
        pem.to_str().unwrap(),
        input_path.to_str().unwrap(),
        sig_path.to_str().unwrap(),
    );
    let mut cmd = Command::new("openssl");
    match alg {
        "RS256" | "ES256" => {
            cmd.args([
                "dgst",
                "-sha256",
                "-verify",
                pem,
                "-signature",
                sig_path,
                input_path,
            ]);
        }
        // PS256: RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt
        // (RFC 7518 section 3.5).
        "PS256" => {
            cmd.args([
                "dgst",
                "-sha256",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
                "-sigopt",
                "rsa_mgf1_md:sha256",
                "-verify",
                pem,
                "-signature",
                sig_path,
                input_path,
            ]);
        }
        "EdDSA" | "Ed25519" => {
            cmd.args([
                "pkeyutl", "-verify", "-pubin", "-inkey", pem, "-rawin", "-in", input_path,
                "-sigfile", sig_path,
            ]);
        }
        other => panic!("no openssl command for {other}"),
    }
    let out = cmd
        .output()
        .expect("openssl runs (README's walk-throughs need it too)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `GET /v1/rings/{ring}/keys/{kid}.pem` for each algorithm: SPKI PEM as
/// `application/x-pem-file`, cached like the JWKS (ETag, 304), and openssl
/// verifies a token with it and refuses a tampered token.
#[tokio::test]
async fn openssl_verifies_tokens_with_the_served_pem() {
    let algs = [
        ("rs", Algorithm::Rs256),
        ("ps", Algorithm::Ps256),
        ("es", Algorithm::Es256),
        ("ed", Algorithm::EdDsa),
        ("ed-rfc9864", Algorithm::Ed25519),
    ];
    let server = TestServer::start(&algs).await;
    let dir = tempfile::tempdir().unwrap();
    for (ring, _) in algs {
        let token = server
            .keys
            .sign(SignParams {
                ring,
                claims_json: br#"{"sub":"pem"}"#,
                ttl: None,
                header_json: b"",
                grant: None,
            })
            .await
            .unwrap()
            .token;
        let header = part(&token, 0);
        let (kid, alg) = (
            header["kid"].as_str().unwrap(),
            header["alg"].as_str().unwrap(),
        );
        let path = format!("/v1/rings/{ring}/keys/{kid}.pem");
        let (status, head, pem) = get_with(server.http, &path, None).await;
        assert_eq!(status, 200, "{path}: {pem}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: application/x-pem-file"),
            "{head}"
        );
        assert!(lower.contains("cache-control: public, max-age="), "{head}");
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        let (status, _, body) = get_with(server.http, &path, Some(&etag(&head))).await;
        assert_eq!(status, 304, "{body}");

        let pem_path = dir.path().join(format!("{ring}.pem"));
        std::fs::write(&pem_path, &pem).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
        let sig = B64.decode(sig).unwrap();
        let (ok, out) = openssl_verifies(alg, &pem_path, input.as_bytes(), &sig);
        assert!(
            ok,
            "openssl refused a {alg} token with the served PEM: {out}"
        );
        let tampered = format!("{input}x");
        let (ok, out) = openssl_verifies(alg, &pem_path, tampered.as_bytes(), &sig);
        assert!(!ok, "openssl accepted a tampered {alg} token: {out}");
    }

    // Unknown kid (well formed): 404. Not a kid: 400. Not .pem, or an
    // unknown ring: 404.
    let unknown = "A".repeat(43);
    for (path, want) in [
        (format!("/v1/rings/rs/keys/{unknown}.pem"), 404),
        ("/v1/rings/rs/keys/not-a-kid.pem".to_owned(), 400),
        (format!("/v1/rings/rs/keys/{unknown}.der"), 404),
        (format!("/v1/rings/nope/keys/{unknown}.pem"), 404),
    ] {
        let (status, _, body) = http_get(server.http, &path).await;
        assert_eq!(status, want, "{path}: {body}");
    }
    let (_, _, body) = http_get(server.http, "/v1/rings/rs/keys/not-a-kid.pem").await;
    assert!(
        body.contains("kid: must be 43 characters of base64url"),
        "{body}"
    );
}

/// `signet keys --format pem` (the real binary against `signet dev`):
/// every key of the JWKS after a line naming it, and with `--kid` the PEM
/// alone, the same as the HTTP route serves; openssl reads both.
#[tokio::test]
async fn signet_keys_format_pem() {
    let data = tempfile::tempdir().unwrap();
    let dev = Proc::dev(data.path(), &[], &[]).unwrap();
    let table = dev.ok(&["keys"]);
    let kid = table
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let all = dev.ok(&["keys", "--format", "pem"]);
    assert!(
        all.starts_with(&format!(
            "kid {kid} alg RS256 state active\n-----BEGIN PUBLIC KEY-----\n"
        )),
        "{all}"
    );
    let one = dev.ok(&["keys", "--format", "pem", "--kid", &kid]);
    assert!(one.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{one}");
    let http: std::net::SocketAddr = dev
        .http
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (status, _, served) = http_get(http, &format!("/v1/rings/default/keys/{kid}.pem")).await;
    assert_eq!(status, 200);
    assert_eq!(one, served, "CLI and HTTP give the same PEM");
    let pem = data.path().join("key.pem");
    std::fs::write(&pem, &all).unwrap();
    let out = Command::new("openssl")
        .args([
            "pkey",
            "-pubin",
            "-in",
            pem.to_str().unwrap(),
            "-noout",
            "-text",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Public-Key: (2048 bit)"));

    let missing = dev.run(&["keys", "--format", "pem", "--kid", &"A".repeat(43)]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("is not in ring default's JWKS"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
