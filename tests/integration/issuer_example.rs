//! The token issuer's side as a user meets it: `signet-proto`'s example and
//! typed client against real servers (plaintext `signet dev`, and a closed
//! `signet server` on its Unix socket), each token checked by an
//! independent verifier against the ring's JWKS.

#[path = "../../signet-proto/examples/issuer.rs"]
#[allow(dead_code)] // its `main` is the example's, not ours
pub(crate) mod example; // verifier_example uses it too

use signet_proto::Client;

use crate::common::{
    self,
    process::{Proc, kek_file, write_config},
};

fn grpc_url(p: &Proc) -> String {
    if p.grpc.contains("://") || p.grpc.starts_with("unix:") {
        p.grpc.clone()
    } else {
        format!("http://{}", p.grpc)
    }
}

#[tokio::test]
async fn the_issuer_example_signs_against_signet_dev() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Proc::dev(&dir.path().join("data"), &[], &[]).unwrap();
    let signed = example::issue(&grpc_url(&dev), "default", r#"{"sub":"alice"}"#)
        .await
        .unwrap();
    let jwks = dev.ok(&["jwks"]);
    let claims = common::verify(&signed.token, &jwks);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["exp"], signed.expires_at);
    assert_eq!(common::part(&signed.token, 0)["kid"], signed.kid.as_str());
}

#[tokio::test]
async fn the_typed_client_signs_and_fetches_the_jwks_over_the_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_file(&dir.path().join("kek"));
    let config = write_config(
        dir.path(),
        &dir.path().join("data"),
        &kek,
        &[("payments", "ES256")],
    );
    let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap();
    let addr = format!("unix:{}", dir.path().join("grpc.sock").display());
    let mut client = Client::connect(&addr).await.unwrap();
    let signed = client
        .sign_for(
            "payments",
            &serde_json::json!({"sub": "bob", "aud": "api.example"}),
            Some(std::time::Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let jwks = client.jwks("payments").await.unwrap();
    let claims = common::verify(&signed.token, &jwks);
    assert_eq!(claims["aud"], "api.example");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        60
    );

    // Errors keep the server's code and message.
    let err = client
        .sign("payments", &serde_json::json!(["not", "an", "object"]))
        .await
        .unwrap_err();
    let signet_proto::Error::Status(status) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(err.to_string().contains("claims_json"), "{err}");
    let missing = Client::connect(&format!("unix:{}", dir.path().join("nope.sock").display()))
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("No such file"), "{missing}");
    drop(server);
}
