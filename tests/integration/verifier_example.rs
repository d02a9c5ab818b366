//! The two examples a user starts from, end to end: `signet-proto`'s
//! issuer signs against a real `signet dev`, and `signet-verifier`'s
//! resource server verifies the token against the dev server's JWKS URL,
//! and refuses a tampered copy with the reason.

#[path = "../../signet-verifier/examples/resource_server.rs"]
#[allow(dead_code)] // its `main` is the example's, not ours
mod resource_server;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use signet_verifier::Failure;

use crate::{
    common::{self, process::Proc},
    issuer_example::example as issuer,
};

#[tokio::test]
async fn the_resource_server_example_verifies_what_the_issuer_example_signs() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Proc::dev(&dir.path().join("data"), &[], &[]).unwrap();
    let signed = issuer::issue(
        &dev.grpc,
        "default",
        r#"{"sub":"alice","aud":"api.example"}"#,
    )
    .await
    .unwrap();
    let jwks_url = format!("http://{}/.well-known/jwks.json", dev.http_addr());

    let verified = resource_server::check(&jwks_url, &signed.token)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verified.kid, signed.kid);
    assert_eq!(verified.claims["sub"], "alice");
    assert_eq!(verified.claims["aud"], "api.example");
    assert_eq!(verified.claims["exp"], signed.expires_at);

    // The same header and signature over other claims: refused, and the
    // reason says which key the signature failed under.
    let mut claims = common::part(&signed.token, 1);
    claims["sub"] = "mallory".into();
    let mut parts: Vec<String> = signed.token.split('.').map(str::to_owned).collect();
    parts[1] = B64.encode(serde_json::to_vec(&claims).unwrap());
    let tampered = parts.join(".");
    let refused = resource_server::check(&jwks_url, &tampered)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.failure, Failure::BadSignature);
    assert_eq!(
        refused.message,
        format!("the signature does not verify under key {}", signed.kid)
    );
    assert_eq!(refused.kid.as_deref(), Some(signed.kid.as_str()));

    // A URL no verifier may use is an error, not a refusal.
    let remote = resource_server::check("http://signet.example/jwks.json", &signed.token)
        .await
        .unwrap_err();
    assert!(remote.to_string().contains("loopback"), "{remote}");
}
