//! A resource server's side of Signet: verify tokens against a JWKS URL with
//! `signet::verifier`, and report failures back to Signet.
//!
//! ```sh
//! signet dev &                                   # gRPC 127.0.0.1:50051, HTTP 127.0.0.1:8080
//! TOKEN=$(signet sign --claims '{"sub":"alice"}')
//! cargo run --example verify_tokens -- "$TOKEN" not-a-token
//! ```

use signet::{pb::signer_client::SignerClient, verifier::Verifier};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jwks = std::env::var("SIGNET_JWKS_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8080/.well-known/jwks.json".into());
    let verifier = Verifier::new(&jwks)?;
    for token in std::env::args().skip(1) {
        match verifier.verify(&token).await {
            Ok(v) => println!(
                "valid (kid {}): {}",
                v.kid,
                serde_json::Value::Object(v.claims)
            ),
            Err(r) => println!("rejected: {} ({})", r.failure, r.message),
        }
    }
    // Tell Signet what this verifier saw, so failures show up in its metrics.
    let addr = std::env::var("SIGNET_ADDR").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    if let Ok(channel) = tonic::transport::Endpoint::from_shared(addr)?
        .connect()
        .await
    {
        verifier
            .report(
                &mut SignerClient::new(channel),
                "default",
                "example-verifier",
            )
            .await?;
    }
    Ok(())
}
