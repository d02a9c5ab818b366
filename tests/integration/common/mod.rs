//! Test support: a real server on 127.0.0.1:0 and independent verifiers.
#![allow(dead_code)]

pub mod certs;
pub mod postgres;
pub mod process;

use std::{net::SocketAddr, sync::Arc};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use signet::{
    clock::SystemClock,
    crypto::{Algorithm, KeySpec},
    keyring::KeyManager,
    pb::{key_admin_client::KeyAdminClient, signer_client::SignerClient},
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// A running server; dropped, it shuts down.
pub struct TestServer {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub keys: KeyManager,
    pub channel: Channel,
    _stop: tokio::sync::watch::Sender<()>,
}

impl TestServer {
    /// Starts gRPC and HTTP on port 0 with one ring per `(name, alg)`.
    pub async fn start(rings: &[(&str, Algorithm)]) -> Self {
        let keys = KeyManager::ephemeral(Arc::new(SystemClock)).await.unwrap();
        for (name, alg) in rings {
            keys.create_ring(name, KeySpec::new(*alg, 0).unwrap())
                .await
                .unwrap();
        }
        let grpc_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc, http) = (grpc_l.local_addr().unwrap(), http_l.local_addr().unwrap());
        let (stop, rx) = tokio::sync::watch::channel(());
        let stopped = move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.changed().await;
            }
        };
        tokio::spawn(signet::rpc::serve(grpc_l, keys.clone(), stopped()));
        tokio::spawn(signet::http::serve(http_l, keys.clone(), stopped()));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            grpc,
            http,
            keys,
            channel,
            _stop: stop,
        }
    }

    pub fn signer(&self) -> SignerClient<Channel> {
        SignerClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> KeyAdminClient<Channel> {
        KeyAdminClient::new(self.channel.clone())
    }
}

/// Polls `check` every 100 ms until it holds; fails with `what` after
/// `limit`.
pub fn eventually(limit: std::time::Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Decodes a JWS part as JSON.
pub fn part(token: &str, i: usize) -> serde_json::Value {
    let p = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&B64.decode(p).unwrap()).unwrap()
}

/// Verifies `token` against `jwks_json` with jsonwebtoken (and, for RSA,
/// again with the `rsa` crate; for Ed25519 with ed25519-dalek). Returns the
/// claims. Panics if any verifier rejects it.
pub fn verify(token: &str, jwks_json: &str) -> serde_json::Value {
    let header = part(token, 0);
    let kid = header["kid"].as_str().unwrap();
    let set: serde_json::Value = serde_json::from_str(jwks_json).unwrap();
    let jwk = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} not in JWKS"))
        .clone();
    let alg = header["alg"].as_str().unwrap();
    assert_eq!(jwk["alg"], alg, "JWK alg matches the header");
    let (signing_input, sig_b64) = token.rsplit_once('.').unwrap();
    let sig = B64.decode(sig_b64).unwrap();
    match alg {
        "RS256" | "PS256" => verify_rsa(alg, &jwk, signing_input.as_bytes(), &sig),
        "Ed25519" => {
            // jsonwebtoken knows only the polymorphic "EdDSA" name.
            use ed25519_dalek::Verifier;
            let x: [u8; 32] = B64
                .decode(jwk["x"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
            let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
            vk.verify(signing_input.as_bytes(), &sig).unwrap();
            return part(token, 1);
        }
        _ => {}
    }
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(alg.parse().unwrap());
    validation.validate_aud = false;
    validation.required_spec_claims = ["exp", "iat"].iter().map(|s| s.to_string()).collect();
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("jsonwebtoken rejected a {alg} token: {e}"))
        .claims
}

fn verify_rsa(alg: &str, jwk: &serde_json::Value, msg: &[u8], sig: &[u8]) {
    use rsa::{BoxedUint, PublicKey, sha2::Sha256, signature::Verifier};
    let n = B64.decode(jwk["n"].as_str().unwrap()).unwrap();
    let e = B64.decode(jwk["e"].as_str().unwrap()).unwrap();
    let key = PublicKey::new(
        BoxedUint::from_be_slice_vartime(&n),
        BoxedUint::from_be_slice_vartime(&e),
    )
    .unwrap();
    if alg == "RS256" {
        let vk = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key);
        let sig = rsa::pkcs1v15::Signature::try_from(sig).unwrap();
        vk.verify(msg, &sig)
            .expect("rsa crate rejected an RS256 token");
    } else {
        let vk = rsa::pss::VerifyingKey::<Sha256>::new(key);
        let sig = rsa::pss::Signature::try_from(sig).unwrap();
        vk.verify(msg, &sig)
            .expect("rsa crate rejected a PS256 token");
    }
}

/// A plain HTTP/1.1 GET over a TCP socket: (status, headers, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// [`eventually`] from async code: the check runs on a blocking thread
/// while this runtime goes on (writing the audit records awaited).
pub async fn wait_for(what: &'static str, check: impl FnMut() -> bool + Send + 'static) {
    tokio::task::spawn_blocking(move || {
        eventually(std::time::Duration::from_secs(10), what, check)
    })
    .await
    .unwrap();
}
