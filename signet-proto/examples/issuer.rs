//! A token issuer: signs a claims set with Signet and prints the token.
//!
//! ```sh
//! SIGNET_ADDR=unix:/run/signet/grpc.sock \
//!     cargo run -p signet-proto --example issuer -- payments '{"sub":"alice","aud":"api.example"}'
//! ```
//!
//! Over the Unix socket the server knows this process by its uid; its policy
//! must grant that uid `sign` on the ring.

use signet_proto::{Client, Signed};

/// Signs `claims_json` (a JSON object) with the active key of `ring` on
/// the server at `addr`.
pub async fn issue(
    addr: &str,
    ring: &str,
    claims_json: &str,
) -> Result<Signed, Box<dyn std::error::Error>> {
    let claims: serde_json::Value = serde_json::from_str(claims_json)?;
    let mut signet = Client::connect(addr).await?;
    Ok(signet.sign(ring, &claims).await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("SIGNET_ADDR").unwrap_or_else(|_| "unix:/run/signet/grpc.sock".into());
    let mut args = std::env::args().skip(1);
    let ring = args.next().unwrap_or_else(|| "default".into());
    let claims = args.next().unwrap_or_else(|| r#"{"sub":"example"}"#.into());
    let signed = issue(&addr, &ring, &claims).await?;
    eprintln!("kid {} expires at {}", signed.kid, signed.expires_at);
    println!("{}", signed.token);
    Ok(())
}
