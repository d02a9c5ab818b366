//! Sign, GetJwks, Rotate and ListKeys against a real server on port 0.

use crate::common;

use common::{TestServer, part, verify};
use signet::{crypto::Algorithm, pb};
use tonic::Code;

const ALL: [(&str, Algorithm); 5] = [
    ("rs", Algorithm::Rs256),
    ("ps", Algorithm::Ps256),
    ("es", Algorithm::Es256),
    ("ed", Algorithm::EdDsa),
    ("ed-full", Algorithm::Ed25519),
];

fn sign_req(ring: &str, claims: &str) -> pb::SignRequest {
    pb::SignRequest {
        key_ring: ring.into(),
        claims_json: claims.as_bytes().to_vec(),
        ttl: None,
        header_json: vec![],
    }
}

async fn jwks(server: &TestServer, ring: &str) -> pb::GetJwksResponse {
    server
        .signer()
        .get_jwks(pb::GetJwksRequest {
            key_ring: ring.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn every_algorithm_signs_and_verifies_independently() {
    let server = TestServer::start(&ALL).await;
    for (ring, alg) in ALL {
        let resp = server
            .signer()
            .sign(sign_req(
                ring,
                r#"{"sub":"alice","aud":["a","b"],"role":"admin"}"#,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.alg, alg.name());
        let header = part(&resp.token, 0);
        assert_eq!(header["alg"], alg.name());
        assert_eq!(header["kid"], resp.kid.as_str());
        assert_eq!(header["typ"], "JWT");
        let set = jwks(&server, ring).await;
        let claims = verify(&resp.token, &set.jwks_json);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["role"], "admin");
        let iat = claims["iat"].as_i64().unwrap();
        let exp = claims["exp"].as_i64().unwrap();
        assert_eq!(exp - iat, 15 * 60, "{alg}: default ttl is 15 minutes");
        assert_eq!(resp.expires_at.unwrap().seconds, exp);
        assert!(
            claims["jti"].as_str().is_some_and(|j| j.len() >= 16),
            "jti set"
        );
    }
}

#[tokio::test]
async fn jwks_entries_carry_only_public_members() {
    let server = TestServer::start(&ALL).await;
    for (ring, alg) in ALL {
        let set: serde_json::Value =
            serde_json::from_str(&jwks(&server, ring).await.jwks_json).unwrap();
        let keys = set["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let mut members: Vec<_> = keys[0].as_object().unwrap().keys().cloned().collect();
        members.sort();
        let want: &[&str] = match alg {
            Algorithm::Rs256 | Algorithm::Ps256 => &["alg", "e", "kid", "kty", "n", "use"],
            Algorithm::Es256 => &["alg", "crv", "kid", "kty", "use", "x", "y"],
            _ => &["alg", "crv", "kid", "kty", "use", "x"],
        };
        assert_eq!(members, want, "{alg}");
        assert_eq!(keys[0]["use"], "sig");
        assert_eq!(keys[0]["alg"], alg.name());
        // RSA-2048: a 256-byte modulus, 342 base64url characters.
        if alg.is_rsa() {
            assert_eq!(keys[0]["n"].as_str().unwrap().len(), 342);
        }
    }
}

#[tokio::test]
async fn kid_is_the_rfc7638_thumbprint() {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
    use rsa::sha2::{Digest, Sha256};
    let server = TestServer::start(&ALL).await;
    for (ring, _) in ALL {
        let set: serde_json::Value =
            serde_json::from_str(&jwks(&server, ring).await.jwks_json).unwrap();
        let k = &set["keys"][0];
        // Recompute independently: required members, sorted, no whitespace.
        let canonical = match k["kty"].as_str().unwrap() {
            "RSA" => serde_json::json!({"e": k["e"], "kty": "RSA", "n": k["n"]}),
            "EC" => serde_json::json!({"crv": k["crv"], "kty": "EC", "x": k["x"], "y": k["y"]}),
            _ => serde_json::json!({"crv": k["crv"], "kty": "OKP", "x": k["x"]}),
        };
        let digest = Sha256::digest(serde_json::to_vec(&canonical).unwrap());
        assert_eq!(k["kid"].as_str().unwrap(), B64.encode(digest), "{ring}");
    }
}

#[tokio::test]
async fn rotate_keeps_old_tokens_verifiable() {
    let server = TestServer::start(&[("default", Algorithm::Es256)]).await;
    let before = server
        .signer()
        .sign(sign_req("default", r#"{"sub":"before"}"#))
        .await
        .unwrap()
        .into_inner();
    let rotated = server
        .admin()
        .rotate(pb::RotateRequest {
            key_ring: "default".into(),
            immediate: true,
            reason: "test".into(),
            request_id: String::new(),
            fresh: false,
        })
        .await
        .unwrap()
        .into_inner();
    let new_kid = rotated.new_key.as_ref().unwrap().kid.clone();
    let old = rotated.previous_key.unwrap();
    assert_eq!(old.kid, before.kid);
    assert_eq!(old.state(), pb::KeyState::Retiring);
    let grace = old.remove_at.unwrap().seconds - old.retire_at.unwrap().seconds;
    assert_eq!(
        grace,
        7 * 24 * 3600,
        "old key stays published for the 7-day grace"
    );
    assert_ne!(new_kid, before.kid);

    let after = server
        .signer()
        .sign(sign_req("default", r#"{"sub":"after"}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.kid, new_kid, "the new token names the new kid");

    let set = jwks(&server, "default").await;
    assert_eq!(verify(&before.token, &set.jwks_json)["sub"], "before");
    assert_eq!(verify(&after.token, &set.jwks_json)["sub"], "after");
    assert_eq!(set.keys.len(), 2);

    let listed = server
        .admin()
        .list_keys(pb::ListKeysRequest {
            key_ring: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    let states: Vec<_> = listed.iter().map(|k| (k.kid.clone(), k.state())).collect();
    assert_eq!(
        states,
        [
            (before.kid.clone(), pb::KeyState::Retiring),
            (new_kid.clone(), pb::KeyState::Active)
        ]
    );
    // The successor activates exactly when the predecessor retires.
    assert_eq!(
        listed[0].retire_at.unwrap().seconds,
        listed[1].activate_at.unwrap().seconds
    );
}

#[tokio::test]
async fn create_key_ring_validates() {
    let server = TestServer::start(&[("default", Algorithm::EdDsa)]).await;
    let cases = [
        ("Bad Name", "ES256", 0, Code::InvalidArgument, "name: "),
        (
            "x",
            "HS256",
            0,
            Code::InvalidArgument,
            "algorithm: \"HS256\" is not supported",
        ),
        (
            "x",
            "RS256",
            1024,
            Code::InvalidArgument,
            "rsa_bits: 1024 is not supported",
        ),
        (
            "x",
            "ES256",
            2048,
            Code::InvalidArgument,
            "rsa_bits: must be 0 for ES256",
        ),
        (
            "default",
            "ES256",
            0,
            Code::AlreadyExists,
            "key ring default already exists",
        ),
    ];
    for (name, alg, bits, code, msg) in cases {
        let err = server
            .admin()
            .create_key_ring(pb::CreateKeyRingRequest {
                issuer: Default::default(),
                name: name.into(),
                algorithm: alg.into(),
                rsa_bits: bits,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{name} {alg} {bits}: {}", err.message());
        assert!(
            err.message().starts_with(msg),
            "{name} {alg} {bits}: {}",
            err.message()
        );
    }
    let ok = server
        .admin()
        .create_key_ring(pb::CreateKeyRingRequest {
            issuer: Default::default(),
            name: "big".into(),
            algorithm: "PS256".into(),
            rsa_bits: 3072,
        })
        .await
        .unwrap()
        .into_inner()
        .ring
        .unwrap();
    assert_eq!((ok.algorithm.as_str(), ok.rsa_bits), ("PS256", 3072));
    assert_eq!(ok.max_token_ttl.unwrap().seconds, 3600);
    let resp = server
        .signer()
        .sign(sign_req("big", "{}"))
        .await
        .unwrap()
        .into_inner();
    let set = jwks(&server, "big").await;
    verify(&resp.token, &set.jwks_json);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let server = TestServer::start(&[("default", Algorithm::EdDsa)]).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "signet.v1.Signer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(server.channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"signet.v1.Signer"), "{names:?}");
    assert!(names.contains(&"signet.v1.KeyAdmin"), "{names:?}");
}

#[tokio::test]
async fn http_serves_jwks() {
    let server =
        TestServer::start(&[("default", Algorithm::Es256), ("other", Algorithm::EdDsa)]).await;
    let (status, head, body) = common::http_get(server.http, "/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/jwk-set+json"),
        "{head}"
    );
    let grpc = jwks(&server, "default").await.jwks_json;
    assert_eq!(body, grpc, "HTTP and gRPC serve the same set");
    let (status, _, body) = common::http_get(server.http, "/v1/rings/other/jwks.json").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"OKP\""));
    let (status, _, body) = common::http_get(server.http, "/v1/rings/nope/jwks.json").await;
    assert_eq!(status, 404);
    assert!(body.contains("not found"), "{body}");
    let (status, _, body) = common::http_get(server.http, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}
