//! Client subcommands: they talk to a running server over gRPC.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use tonic::transport::{Channel, Endpoint};

use super::{ClientArgs, parse_duration, transport_error};
use crate::{
    crypto::Spki as _,
    pb::{self, key_admin_client::KeyAdminClient, signer_client::SignerClient},
};

/// Connects to `addr` (`http://HOST:PORT`, `HOST:PORT`, or
/// `https://HOST:PORT` for a server with `[tls]`: the client certificate,
/// its key and the CA that signed the server's certificate come from
/// `SIGNET_TLS_CERT`, `SIGNET_TLS_KEY` and `SIGNET_TLS_CA`, PEM file paths).
pub async fn connect(addr: &str) -> anyhow::Result<Channel> {
    if let Some(path) = addr.strip_prefix("unix:") {
        return connect_unix(path).await;
    }
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("--addr {addr:?} is not a valid address"))?;
    let mut files = None;
    if uri.starts_with("https://") {
        let read = |var: &str| -> anyhow::Result<(String, String)> {
            let path = std::env::var(var)
                .with_context(|| format!("{uri} uses TLS: set {var} to a PEM file"))?;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{var}={path}: cannot read it"))?;
            Ok((path, text))
        };
        let (ca, cert, key) = (
            read("SIGNET_TLS_CA")?,
            read("SIGNET_TLS_CERT")?,
            read("SIGNET_TLS_KEY")?,
        );
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca.1))
            .identity(tonic::transport::Identity::from_pem(&cert.1, &key.1));
        endpoint = endpoint.tls_config(tls).context("TLS configuration")?;
        files = Some(transport_error::TlsFiles { ca, cert, key });
    }
    transport_error::remember(transport_error::Target {
        uri: uri.clone(),
        tls: files,
    });
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| {
            if let Some(why) = transport_error::explain(&uri, &e) {
                return anyhow!("cannot connect to {uri}: {why}");
            }
            anyhow!(
                "cannot connect to {uri}: is the server running? (start one with `signet dev`, \
                 or point --addr / SIGNET_ADDR at it)"
            )
        })
}

/// Connects over the server's Unix socket: the server knows the caller by
/// its uid, so there is no certificate to give.
async fn connect_unix(path: &str) -> anyhow::Result<Channel> {
    signet_proto::connect_unix(path).await.map_err(|e| {
        anyhow!(
            "{e} (is the server running, and may this user open the socket? its mode and group \
             are listen.grpc_socket_mode and listen.grpc_socket_group)"
        )
    })
}

/// Turns a gRPC status into a one-line error: the code, then the server's
/// message (which names the field and the rule).
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    if let Some(source) = std::error::Error::source(&s)
        && transport_error::is_transport(source)
    {
        // The connection failed, not the call: `transport_error::diagnose`
        // finds out why before the command's error is printed.
        return anyhow::Error::new(transport_error::TransportFailure(format!(
            "{:?}: {}",
            s.code(),
            s.message()
        )));
    }
    anyhow!("{:?}: {}", s.code(), s.message())
}

/// `--ring`, defaulting to `default`.
#[derive(Debug, Args)]
pub struct RingArgs {
    /// Key ring name.
    #[arg(long, default_value = "default")]
    pub ring: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `signet sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    #[command(flatten)]
    ring: RingArgs,
    /// Claims as a JSON object, or @FILE to read them from a file (@- for
    /// stdin). The server sets `iat` and `exp` (give neither), and sets a
    /// random `jti` only when the claims give none.
    #[arg(long)]
    claims: String,
    /// Token lifetime, e.g. 90s, 15m, 1h (default: the ring's, 15m; at most
    /// the ring's max_token_ttl, 1h).
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// Extra header members as JSON; only `typ` and `cty`, e.g. '{"typ":"at+jwt"}'.
    #[arg(long)]
    header: Option<String>,
}

/// Options of `signet keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    ring: RingArgs,
    /// Print JSON instead of a table (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// table: every key with its timeline. json: the same as JSON. pem: the
    /// public key of each key in the JWKS (published, active, retiring) as
    /// SPKI PEM, for verifiers that take a key file (nginx, Envoy,
    /// openssl), each after a line naming its kid, alg and state.
    #[arg(long, value_enum, default_value = "table")]
    format: KeysFormat,
    /// With --format pem: only this key, and the PEM alone.
    // A kid is base64url, so one in 64 begins with `-`.
    #[arg(long, allow_hyphen_values = true)]
    kid: Option<String>,
}

/// What `signet keys` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeysFormat {
    /// A table, one key a line.
    Table,
    /// JSON, one object per key.
    Json,
    /// SPKI PEM public keys.
    Pem,
}

/// Options of `signet rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    ring: RingArgs,
    /// Emergency rotation: a key signs now instead of after publish_lead.
    /// A successor that verifiers already hold (published for at least
    /// jwks_max_age + clock_skew) is promoted, so no verifier meets an
    /// unknown kid; otherwise a new key signs at once.
    #[arg(long)]
    now: bool,
    /// With --now: always generate a new key, even when a published
    /// successor could be promoted (it may be compromised too).
    #[arg(long, requires = "now")]
    fresh: bool,
    /// Why (kept with the new key and logged).
    #[arg(long)]
    reason: String,
    /// Idempotency key (e.g. a UUID): repeat the command with the same id
    /// after a timeout or UNAVAILABLE, and it rotates at most once; the
    /// retry prints the key the first attempt created.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
}

/// Options of `signet revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The kid to revoke (one that begins with `-` is taken as a kid too).
    // A kid is base64url, so one in 64 begins with `-`.
    #[arg(allow_hyphen_values = true)]
    kid: String,
    #[command(flatten)]
    ring: RingArgs,
    /// Why (kept with the key and logged).
    #[arg(long)]
    reason: String,
}

/// `signet rings ...`
#[derive(Debug, Subcommand)]
pub enum RingsCommand {
    /// List every key ring: name, algorithm, active kid and key count.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a key ring and its first key.
    Create {
        /// Ring name: a-z, 0-9, '-', '_', '.'; up to 64 characters.
        name: String,
        /// Algorithm: RS256, PS256, ES256, EdDSA or Ed25519.
        #[arg(long)]
        alg: String,
        /// RSA modulus size for RS256/PS256: 2048, 3072 or 4096.
        #[arg(long)]
        rsa_bits: Option<u32>,
        /// Issuer URL: set as `iss` in every token of the ring, and served
        /// as OIDC discovery at ISSUER/.well-known/openid-configuration
        /// (https://HOST/v1/rings/NAME reaches this ring's document).
        #[arg(long)]
        issuer: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn read_claims(arg: &str) -> anyhow::Result<Vec<u8>> {
    match arg.strip_prefix('@') {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .context("--claims @-: cannot read stdin")?;
            Ok(buf)
        }
        Some(path) => std::fs::read(PathBuf::from(path))
            .with_context(|| format!("--claims @{path}: cannot read the file")),
        None => Ok(arg.as_bytes().to_vec()),
    }
}

pub async fn sign(args: SignArgs) -> anyhow::Result<()> {
    let claims_json = read_claims(&args.claims)?;
    let mut client = SignerClient::new(connect(&args.ring.client.addr).await?);
    let resp = client
        .sign(pb::SignRequest {
            key_ring: args.ring.ring,
            claims_json,
            ttl: args.ttl.map(crate::rpc::duration_to_proto),
            header_json: args.header.map(String::into_bytes).unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("{}", resp.token);
    Ok(())
}

pub async fn jwks(args: RingArgs) -> anyhow::Result<()> {
    let mut client = SignerClient::new(connect(&args.client.addr).await?);
    let resp = client
        .get_jwks(pb::GetJwksRequest {
            key_ring: args.ring,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let value: serde_json::Value =
        serde_json::from_str(&resp.jwks_json).context("the server sent a JWKS that is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

pub(super) fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.map(|t| crate::clock::UnixTime::from_secs(t.seconds).to_string())
        .unwrap_or_else(|| "-".to_owned())
}

pub(super) fn state_name(k: &pb::KeyInfo) -> &'static str {
    match k.state() {
        pb::KeyState::Pending => "pending",
        pb::KeyState::Published => "published",
        pb::KeyState::Active => "active",
        pb::KeyState::Retiring => "retiring",
        pb::KeyState::Removed => "removed",
        pb::KeyState::Revoked => "revoked",
        pb::KeyState::Unspecified => "unknown",
    }
}

pub async fn keys(args: KeysArgs) -> anyhow::Result<()> {
    if args.format == KeysFormat::Pem {
        return keys_pem(args).await;
    }
    if args.kid.is_some() {
        anyhow::bail!("--kid applies to --format pem only");
    }
    let mut client = KeyAdminClient::new(connect(&args.ring.client.addr).await?);
    let resp = client
        .list_keys(pb::ListKeysRequest {
            key_ring: args.ring.ring,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.json || args.format == KeysFormat::Json {
        let keys: Vec<_> = resp
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kid": k.kid,
                    "alg": k.alg,
                    "state": state_name(k),
                    "created_at": k.created_at.as_ref().map(|t| t.seconds),
                    "publish_at": k.publish_at.as_ref().map(|t| t.seconds),
                    "activate_at": k.activate_at.as_ref().map(|t| t.seconds),
                    "retire_at": k.retire_at.as_ref().map(|t| t.seconds),
                    "remove_at": k.remove_at.as_ref().map(|t| t.seconds),
                    "revoked_at": k.revoked_at.as_ref().map(|t| t.seconds),
                    "reason": k.reason,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&keys)?);
        return Ok(());
    }
    println!(
        "{:<43}  {:<9}  {:<7}  {:<20}  {:<20}  {:<20}  {:<20}  REASON",
        "KID", "STATE", "ALG", "PUBLISHED", "SIGNS FROM", "SIGNS UNTIL", "LEAVES JWKS"
    );
    for k in &resp.keys {
        let leaves = k.revoked_at.as_ref().or(k.remove_at.as_ref());
        println!(
            "{:<43}  {:<9}  {:<7}  {:<20}  {:<20}  {:<20}  {:<20}  {}",
            k.kid,
            state_name(k),
            k.alg,
            time(k.publish_at.as_ref()),
            time(k.activate_at.as_ref()),
            time(k.retire_at.as_ref()),
            time(leaves),
            k.reason,
        );
    }
    Ok(())
}

/// `signet keys --format pem`: the ring's JWKS, each key as SPKI PEM.
async fn keys_pem(args: KeysArgs) -> anyhow::Result<()> {
    let ring = args.ring.ring;
    let mut client = SignerClient::new(connect(&args.ring.client.addr).await?);
    let resp = client
        .get_jwks(pb::GetJwksRequest {
            key_ring: ring.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let set: crate::keyring::JwkSet = serde_json::from_str(&resp.jwks_json)
        .context("the server sent a JWKS that is not a JWK Set")?;
    let state = |kid: &str| {
        resp.keys
            .iter()
            .find(|k| k.kid == kid)
            .map_or("published", state_name)
    };
    let pem = |jwk: &crate::crypto::Jwk| {
        jwk.to_spki_pem()
            .map_err(|_| anyhow!("kid {}: the server sent a key that is not valid", jwk.kid))
    };
    if let Some(kid) = args.kid {
        let jwk = set.keys.iter().find(|k| k.kid == kid).with_context(|| {
            format!(
                "kid {kid} is not in ring {ring}'s JWKS (only published, active and retiring \
                 keys have a public key to show; see `signet keys --ring {ring}`)"
            )
        })?;
        print!("{}", pem(jwk)?);
        return Ok(());
    }
    for jwk in &set.keys {
        // Text before a PEM block is allowed (RFC 7468 section 5.2) and
        // ignored by PEM readers.
        println!("kid {} alg {} state {}", jwk.kid, jwk.alg, state(&jwk.kid));
        print!("{}", pem(jwk)?);
    }
    Ok(())
}

pub async fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    let mut client = KeyAdminClient::new(connect(&args.ring.client.addr).await?);
    let ring = args.ring.ring;
    let resp = client
        .rotate(pb::RotateRequest {
            key_ring: ring.clone(),
            immediate: args.now,
            reason: args.reason,
            request_id: args.request_id.unwrap_or_default(),
            fresh: args.fresh,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let new = resp.new_key.context("the server sent no new key")?;
    if resp.promoted {
        println!(
            "ring {ring}: key {} (published since {}, so verifiers hold it) signs from now on",
            new.kid,
            time(new.publish_at.as_ref())
        );
    } else if args.now {
        println!("ring {ring}: new key {} signs from now on", new.kid);
    } else {
        println!(
            "ring {ring}: key {} is published and signs from {}",
            new.kid,
            time(new.activate_at.as_ref())
        );
    }
    if let Some(old) = resp.previous_key {
        println!(
            "ring {ring}: key {} signs until {}; it stays in the JWKS until {}",
            old.kid,
            time(old.retire_at.as_ref()),
            time(old.remove_at.as_ref())
        );
    }
    Ok(())
}

pub async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let mut client = KeyAdminClient::new(connect(&args.ring.client.addr).await?);
    let resp = client
        .revoke_key(pb::RevokeKeyRequest {
            key_ring: args.ring.ring.clone(),
            kid: args.kid,
            reason: args.reason,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let key = resp.key.context("the server sent no key")?;
    println!(
        "ring {}: key {} revoked at {}: removed from the JWKS, its material destroyed",
        args.ring.ring,
        key.kid,
        time(key.revoked_at.as_ref())
    );
    Ok(())
}

pub async fn rings(cmd: RingsCommand) -> anyhow::Result<()> {
    match cmd {
        RingsCommand::List { json, client } => {
            let mut admin = KeyAdminClient::new(connect(&client.addr).await?);
            let resp = admin
                .list_key_rings(pb::ListKeyRingsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            print_rings(&resp.rings, json)
        }
        RingsCommand::Create {
            name,
            alg,
            rsa_bits,
            issuer,
            client,
        } => {
            let mut admin = KeyAdminClient::new(connect(&client.addr).await?);
            let resp = admin
                .create_key_ring(pb::CreateKeyRingRequest {
                    name,
                    algorithm: alg,
                    rsa_bits: rsa_bits.unwrap_or(0),
                    issuer: issuer.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let ring = resp.ring.context("the server sent no ring")?;
            let kid = ring.keys.first().map(|k| k.kid.as_str()).unwrap_or("-");
            println!(
                "created ring {} ({}), active kid {kid}",
                ring.name, ring.algorithm
            );
            if !ring.issuer.is_empty() {
                println!(
                    "issuer {}: discovery at {}/.well-known/openid-configuration",
                    ring.issuer, ring.issuer
                );
            }
            Ok(())
        }
    }
}

fn print_rings(rings: &[pb::KeyRingInfo], json: bool) -> anyhow::Result<()> {
    let active = |r: &pb::KeyRingInfo| {
        r.keys
            .iter()
            .find(|k| k.state() == pb::KeyState::Active)
            .map(|k| k.kid.clone())
    };
    if json {
        let rings: Vec<_> = rings
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "algorithm": r.algorithm,
                    "rsa_bits": r.rsa_bits,
                    "active_kid": active(r),
                    "keys": r.keys.len(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rings)?);
        return Ok(());
    }
    println!("{:<24}  {:<8}  {:<43}  KEYS", "NAME", "ALG", "ACTIVE KID");
    for r in rings {
        println!(
            "{:<24}  {:<8}  {:<43}  {}",
            r.name,
            r.algorithm,
            active(r).unwrap_or_else(|| "-".to_owned()),
            r.keys.len()
        );
    }
    Ok(())
}

/// Options of `signet verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The token (JWS compact serialization), or @FILE, or @- for stdin.
    token: String,
    #[command(flatten)]
    ring: RingArgs,
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let token = String::from_utf8(read_claims(&args.token)?).context("the token is not UTF-8")?;
    let mut client = SignerClient::new(connect(&args.ring.client.addr).await?);
    let resp = client
        .verify(pb::VerifyRequest {
            key_ring: args.ring.ring,
            token: token.trim().to_owned(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if resp.valid {
        println!("valid: kid {} alg {}", resp.kid, resp.alg);
        let claims: serde_json::Value = serde_json::from_slice(&resp.claims_json)?;
        println!("{}", serde_json::to_string_pretty(&claims)?);
        Ok(())
    } else {
        let reason = resp
            .failure()
            .as_str_name()
            .trim_start_matches("VERIFY_FAILURE_")
            .to_owned();
        anyhow::bail!("invalid: {reason}: {}", resp.message)
    }
}
