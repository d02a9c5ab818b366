//! Bad input: each refused with the right gRPC code and a message naming the
//! field and the rule; nothing is signed.

use crate::common;

use common::TestServer;
use signet::{crypto::Algorithm, pb};
use tonic::Code;

fn req(ring: &str, claims: &[u8]) -> pb::SignRequest {
    pb::SignRequest {
        key_ring: ring.into(),
        claims_json: claims.to_vec(),
        ttl: None,
        header_json: vec![],
    }
}

async fn refused(server: &TestServer, r: pb::SignRequest) -> tonic::Status {
    server.signer().sign(r).await.expect_err("must be refused")
}

fn deep(levels: usize) -> Vec<u8> {
    format!("{}1{}", "{\"a\":".repeat(levels), "}".repeat(levels)).into_bytes()
}

#[tokio::test]
async fn claims_rules() {
    let server = TestServer::start(&[("default", Algorithm::EdDsa)]).await;
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(17 * 1024)).into_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "array",
            b"[1,2]".to_vec(),
            "claims_json: must be a JSON object, not an array",
        ),
        (
            "string",
            b"\"x\"".to_vec(),
            "claims_json: must be a JSON object, not a string",
        ),
        ("empty", b"".to_vec(), "claims_json: is not acceptable JSON"),
        (
            "utf8",
            b"{\"sub\":\"\xc3\x28\"}".to_vec(),
            "claims_json: is not valid UTF-8",
        ),
        (
            "dup",
            br#"{"sub":"a","sub":"b"}"#.to_vec(),
            "claims_json: is not acceptable JSON: duplicate member name \"sub\"",
        ),
        (
            "depth",
            deep(33),
            "claims_json: is not acceptable JSON: nesting deeper than 32 levels",
        ),
        (
            "size",
            big,
            "claims_json: is 17418 bytes; the limit is 16384 bytes",
        ),
        (
            "exp type",
            br#"{"exp":"tomorrow"}"#.to_vec(),
            "claims_json.exp: must be a NumericDate",
        ),
        (
            "iat type",
            br#"{"iat":true}"#.to_vec(),
            "claims_json.iat: must be a NumericDate",
        ),
        (
            "exp given",
            br#"{"exp":4102444800}"#.to_vec(),
            "claims_json.exp: is set by Signet",
        ),
        (
            "nbf type",
            br#"{"nbf":"now"}"#.to_vec(),
            "claims_json.nbf: must be a NumericDate",
        ),
        (
            "nbf late",
            br#"{"nbf":9999999999}"#.to_vec(),
            "claims_json.nbf: 9999999999 is not before the token's exp",
        ),
        (
            "sub type",
            br#"{"sub":42}"#.to_vec(),
            "claims_json.sub: must be a string, not a number",
        ),
        (
            "aud type",
            br#"{"aud":{"x":1}}"#.to_vec(),
            "claims_json.aud: must be a string or a non-empty array of strings",
        ),
    ];
    for (what, claims, want) in cases {
        let s = refused(&server, req("default", &claims)).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {}", s.message());
        assert!(s.message().starts_with(want), "{what}: {}", s.message());
    }
    // 32 levels is still fine.
    server
        .signer()
        .sign(req("default", &deep(32)))
        .await
        .unwrap();
}

#[tokio::test]
async fn ttl_rules() {
    let server = TestServer::start(&[("default", Algorithm::EdDsa)]).await;
    let ttl = |seconds, nanos| {
        let mut r = req("default", b"{}");
        r.ttl = Some(prost_types::Duration { seconds, nanos });
        r
    };
    let cases = [
        (
            ttl(3601, 0),
            "ttl: 1h 1s exceeds the ring's max_token_ttl of 1h",
        ),
        (ttl(-5, 0), "ttl: must be positive"),
        (ttl(0, 0), "ttl: must be at least 1 second"),
        (ttl(10, 500), "ttl: must be whole seconds"),
    ];
    for (r, want) in cases {
        let s = refused(&server, r).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
        assert!(s.message().starts_with(want), "{}", s.message());
    }
    let ok = server
        .signer()
        .sign(ttl(3600, 0))
        .await
        .unwrap()
        .into_inner();
    let claims = common::part(&ok.token, 1);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
}

#[tokio::test]
async fn header_cannot_be_overridden() {
    let server = TestServer::start(&[("default", Algorithm::Es256)]).await;
    for name in ["alg", "kid", "jku", "x5u", "jwk", "crit", "x5c"] {
        let mut r = req("default", b"{}");
        r.header_json = format!(r#"{{"{name}":"none"}}"#).into_bytes();
        let s = refused(&server, r).await;
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            format!("header_json.{name}: is set by Signet; callers cannot choose it")
        );
    }
    let mut r = req("default", b"{}");
    r.header_json = br#"{"zip":"DEF"}"#.to_vec();
    let s = refused(&server, r).await;
    assert_eq!(
        s.message(),
        "header_json.zip: is not allowed (only typ and cty may be set)"
    );

    // typ may be set (RFC 9068 access tokens); alg and kid stay the service's.
    let mut r = req("default", br#"{"alg":"none","kid":"evil"}"#);
    r.header_json = br#"{"typ":"at+jwt"}"#.to_vec();
    let ok = server.signer().sign(r).await.unwrap().into_inner();
    let header = common::part(&ok.token, 0);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], ok.kid.as_str());
    // Claims named like header members stay claims, in the payload.
    assert_eq!(common::part(&ok.token, 1)["alg"], "none");
}

#[tokio::test]
async fn ring_rules() {
    let server = TestServer::start(&[("default", Algorithm::EdDsa)]).await;
    let s = refused(&server, req("nope", b"{}")).await;
    assert_eq!(s.code(), Code::NotFound);
    assert_eq!(s.message(), "key ring \"nope\" not found");
    for bad in ["", "UPPER", "a/b", "../etc"] {
        let s = refused(&server, req(bad, b"{}")).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            s.message().starts_with("key_ring: "),
            "{bad:?}: {}",
            s.message()
        );
    }
    let s = server
        .admin()
        .rotate(pb::RotateRequest {
            key_ring: "nope".into(),
            immediate: true,
            reason: "test".into(),
            request_id: String::new(),
            fresh: false,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let s = server
        .signer()
        .get_jwks(pb::GetJwksRequest {
            key_ring: "Bad".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    // Nothing was created by any of the refused calls.
    assert_eq!(server.keys.snapshot().rings().len(), 1);
}

/// A Rotate request id must be a short token; a bad one is refused before
/// anything rotates, and a good one makes retries answer the first result.
#[tokio::test]
async fn rotate_request_ids() {
    let server = TestServer::start(&[("default", Algorithm::EdDsa)]).await;
    let rotate = |id: String| {
        let mut admin = server.admin();
        async move {
            admin
                .rotate(pb::RotateRequest {
                    key_ring: "default".into(),
                    immediate: true,
                    reason: "test".into(),
                    request_id: id,
                    fresh: false,
                })
                .await
        }
    };
    for bad in [
        "a b".to_owned(),
        "x".repeat(129),
        "é".to_owned(),
        "a/b".to_owned(),
    ] {
        let s = rotate(bad.clone()).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}");
        assert_eq!(
            s.message(),
            "request_id: must be 1 to 128 characters of A-Z, a-z, 0-9, '-', '_', '.' or ':' (a UUID fits)"
        );
    }
    assert_eq!(
        server
            .keys
            .ring_info("default", "key_ring")
            .unwrap()
            .keys
            .len(),
        1,
        "nothing rotated"
    );
    let first = rotate("3f1c2a9e-0d4b-4c8e-9a51-6b7d2e8f0a13".into())
        .await
        .unwrap()
        .into_inner();
    let again = rotate("3f1c2a9e-0d4b-4c8e-9a51-6b7d2e8f0a13".into())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.new_key, first.new_key,
        "the retry answers the first result"
    );
    assert_eq!(
        again.previous_key.map(|k| k.kid),
        first.previous_key.map(|k| k.kid)
    );
    let other = rotate("another".into()).await.unwrap().into_inner();
    assert_ne!(other.new_key.unwrap().kid, first.new_key.unwrap().kid);
    assert_eq!(
        server
            .keys
            .ring_info("default", "key_ring")
            .unwrap()
            .keys
            .len(),
        3,
        "two request ids, two rotations"
    );
}

#[tokio::test]
async fn oversized_messages_refused_before_parsing() {
    let server = TestServer::start(&[("default", Algorithm::EdDsa)]).await;
    let huge = vec![b' '; signet::rpc::MAX_REQUEST_BYTES + 1];
    let s = refused(&server, req("default", &huge)).await;
    assert_eq!(s.code(), Code::OutOfRange, "{}", s.message());
}
