//! Signet's gRPC API for token issuers.
//!
//! # Layout
//!
//! - [`v1`]: the generated messages and gRPC clients of `signet.v1`
//!   (`proto/signet/v1/signet.proto`, where every message is documented):
//!   [`v1::signer_client::SignerClient`], [`v1::key_admin_client::KeyAdminClient`],
//!   [`v1::operator_client::OperatorClient`].
//! - [`Client`]: a small typed client for what a token issuer does: sign a
//!   claims set with a ring's active key, fetch a ring's JWKS.
//! - [`connect`]: a channel to a server on a Unix socket (`unix:/path`), or
//!   on TCP (`http://` for a loopback development server, `https://` with
//!   mTLS: see [`Tls`]).
//!
//! ```no_run
//! # async fn f() -> Result<(), signet_proto::Error> {
//! let mut signet = signet_proto::Client::connect("unix:/run/signet/grpc.sock").await?;
//! let token = signet
//!     .sign("payments", &serde_json::json!({"sub": "alice", "aud": "api.example"}))
//!     .await?;
//! println!("{} (kid {}, expires {})", token.token, token.kid, token.expires_at);
//! # Ok(()) }
//! ```

use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

/// The generated code of `signet.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("signet.v1");
}

/// The encoded descriptor set of the API, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/signet_descriptor.bin"));

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address is not `unix:/PATH`, `http://HOST:PORT` or
    /// `https://HOST:PORT`, or TLS was asked for without the `tls` feature.
    #[error("address {0:?}: {1}")]
    Address(String, String),
    /// No connection could be made (the server is down, the socket is not
    /// there or not ours to open, a TLS handshake failed).
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// The server answered with an error: its code and message say what
    /// was wrong (a field and the rule it broke, a missing grant, …).
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The claims do not serialise to a JSON object.
    #[error("claims: {0}")]
    Claims(String),
}

/// The certificates for mTLS to a server on TCP: PEM text.
#[derive(Clone)]
pub struct Tls {
    /// The CA that issued the server's certificate.
    pub ca_pem: String,
    /// This client's certificate (its identity in the server's policy).
    pub cert_pem: String,
    /// This client's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches a log.
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel to the Signet server at `addr`: `unix:/PATH` (the server knows
/// the caller by its uid), `https://HOST:PORT` with `tls`, or
/// `http://HOST:PORT` (plaintext: only `signet dev` serves it).
pub async fn connect(addr: &str, tls: Option<&Tls>) -> Result<Channel, Error> {
    if let Some(path) = addr.strip_prefix("unix:") {
        return connect_unix(path).await;
    }
    let bad = |why: &str| Error::Address(addr.to_owned(), why.to_owned());
    let mut endpoint = Endpoint::from_shared(addr.to_owned())
        .map_err(|_| bad("not unix:/PATH, http://HOST:PORT or https://HOST:PORT"))?;
    match (addr.split("://").next(), tls) {
        (Some("https"), Some(tls)) => endpoint = with_tls(endpoint, tls, addr)?,
        (Some("https"), None) => return Err(bad("https needs the client's certificates (Tls)")),
        (Some("http"), None) => {}
        (Some("http"), Some(_)) => {
            return Err(bad("certificates given for a plaintext http:// address"));
        }
        _ => return Err(bad("not unix:/PATH, http://HOST:PORT or https://HOST:PORT")),
    }
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| Error::Connect(addr.to_owned(), cause(&e)))
}

#[cfg(feature = "tls")]
fn with_tls(endpoint: Endpoint, tls: &Tls, addr: &str) -> Result<Endpoint, Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
    endpoint
        .tls_config(config)
        .map_err(|e| Error::Address(addr.to_owned(), format!("TLS configuration: {e}")))
}

#[cfg(not(feature = "tls"))]
fn with_tls(_: Endpoint, _: &Tls, addr: &str) -> Result<Endpoint, Error> {
    Err(Error::Address(
        addr.to_owned(),
        "built without the `tls` feature".into(),
    ))
}

/// A channel over the Unix socket at `path`.
pub async fn connect_unix(path: &str) -> Result<Channel, Error> {
    let socket = std::path::PathBuf::from(path);
    // The URI is required by the API and unused: the connector decides
    // where the connection goes.
    Endpoint::from_static("http://signet.invalid")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .map_err(|e| Error::Connect(format!("unix:{path}"), cause(&e)))
}

/// The innermost cause of a transport error: "No such file or directory",
/// "Connection refused", a certificate problem.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// A signed token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The compact JWS.
    pub token: String,
    /// The key that signed it (its header's `kid`).
    pub kid: String,
    /// Its `exp`, in seconds since the Unix epoch.
    pub expires_at: i64,
}

/// The typed client of a token issuer.
#[derive(Clone, Debug)]
pub struct Client {
    signer: v1::signer_client::SignerClient<Channel>,
}

impl Client {
    /// Connects to `addr` (see [`connect`]) without TLS: a Unix socket, or
    /// `http://` to a development server.
    pub async fn connect(addr: &str) -> Result<Self, Error> {
        Ok(Self::new(connect(addr, None).await?))
    }

    /// Connects to `https://HOST:PORT` with mTLS.
    pub async fn connect_tls(addr: &str, tls: &Tls) -> Result<Self, Error> {
        Ok(Self::new(connect(addr, Some(tls)).await?))
    }

    /// A client over a channel made elsewhere.
    pub fn new(channel: Channel) -> Self {
        Self {
            signer: v1::signer_client::SignerClient::new(channel),
        }
    }

    /// Signs `claims` (a JSON object) with the active key of `ring`, for
    /// the ring's default lifetime. Signet sets `iat`, `exp` and a `jti`.
    pub async fn sign(
        &mut self,
        ring: &str,
        claims: &impl serde::Serialize,
    ) -> Result<Signed, Error> {
        self.sign_for(ring, claims, None).await
    }

    /// [`Client::sign`] with a lifetime (at most the ring's
    /// `max_token_ttl`; the server refuses more, naming the field).
    pub async fn sign_for(
        &mut self,
        ring: &str,
        claims: &impl serde::Serialize,
        ttl: Option<Duration>,
    ) -> Result<Signed, Error> {
        let claims_json = serde_json::to_vec(claims).map_err(|e| Error::Claims(e.to_string()))?;
        let reply = self
            .signer
            .sign(v1::SignRequest {
                key_ring: ring.to_owned(),
                claims_json,
                ttl: ttl.map(|t| prost_types::Duration {
                    seconds: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
                header_json: vec![],
            })
            .await?
            .into_inner();
        Ok(Signed {
            token: reply.token,
            kid: reply.kid,
            expires_at: reply.expires_at.map_or(0, |t| t.seconds),
        })
    }

    /// The ring's JWKS as JSON text (what `GET /v1/rings/RING/jwks.json`
    /// serves).
    pub async fn jwks(&mut self, ring: &str) -> Result<String, Error> {
        let reply = self
            .signer
            .get_jwks(v1::GetJwksRequest {
                key_ring: ring.to_owned(),
            })
            .await?
            .into_inner();
        Ok(reply.jwks_json)
    }
}
