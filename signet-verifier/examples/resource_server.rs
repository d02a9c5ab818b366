//! A resource server's check: verifies a token against a JWKS URL and
//! prints its claims, or why it was refused.
//!
//! ```sh
//! signet dev &                              # JWKS at http://127.0.0.1:8080/.well-known/jwks.json
//! TOKEN=$(signet sign --claims '{"sub":"alice"}')
//! cargo run -p signet-verifier --example resource_server -- "$TOKEN"
//! echo "$TOKEN" | cargo run -p signet-verifier --example resource_server
//! ```
//!
//! `SIGNET_JWKS_URL` names another key set (`https://…`, or `http://` to a
//! loopback address). Exit status: 0 accepted, 1 refused (a key set that
//! cannot be fetched refuses too: no key has the token's kid), 2 a URL no
//! verifier accepts.

use std::io::Read as _;

use signet_verifier::{Rejected, Verified, Verifier};

/// Verifies `token` against the key set at `jwks_url`: the claims, or the
/// reason it was refused. An error only when no verifier can be made for
/// the URL (a malformed URL, `http://` to a remote host).
pub async fn check(
    jwks_url: &str,
    token: &str,
) -> Result<Result<Verified, Rejected>, signet_verifier::FetchError> {
    let verifier = Verifier::new(jwks_url)?;
    Ok(verifier.verify(token.trim()).await)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let url = std::env::var("SIGNET_JWKS_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8080/.well-known/jwks.json".into());
    let token = match std::env::args().nth(1) {
        Some(token) => token,
        None => {
            let mut token = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut token) {
                eprintln!("reading the token from stdin: {e}");
                return std::process::ExitCode::from(2);
            }
            token
        }
    };
    match check(&url, &token).await {
        Ok(Ok(v)) => {
            println!("{}", serde_json::Value::Object(v.claims));
            eprintln!("accepted: kid {} ({})", v.kid, v.alg);
            std::process::ExitCode::SUCCESS
        }
        Ok(Err(r)) => {
            eprintln!("refused: {} ({})", r.failure, r.message);
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::from(2)
        }
    }
}
