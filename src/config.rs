//! The server configuration file (TOML). Every field has a default and a
//! doc comment; unknown fields are errors, so a typo never silently falls
//! back to a default.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    crypto::{Algorithm, KeySpec},
    keyring::{Issuer, RingName},
    seal::KekSpec,
};

/// The whole configuration of `signet server`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen addresses.
    #[serde(default)]
    pub listen: Listen,
    /// Where keys are stored.
    #[serde(default)]
    pub store: Store,
    /// How keys are sealed at rest.
    pub seal: Seal,
    /// Rings to create at start if they do not exist yet.
    #[serde(default)]
    pub rings: Vec<RingConfig>,
    /// gRPC over TLS with client certificates. Required for a TCP gRPC
    /// listener (plaintext TCP is `signet dev` only).
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Who may do what (grants). Required: without it every caller would
    /// be refused, so the server does not start.
    #[serde(default)]
    pub authz: Option<AuthzSection>,
    /// Where audit records go.
    #[serde(default)]
    pub audit: AuditSection,
    /// HTTPS on the HTTP (JWKS, health) listener. Default: plain HTTP.
    #[serde(default)]
    pub http_tls: Option<HttpTlsSection>,
}

/// `[http_tls]`: PEM files for the HTTP listener, re-read on SIGHUP (a file
/// that does not load keeps the old certificate). No client certificates:
/// verifiers fetch the JWKS anonymously.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsSection {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// `[tls]`: PEM files, re-read on SIGHUP.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
    /// CA bundle client certificates must chain to.
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM or DER) from the client CA; a
    /// certificate on one is refused at the handshake. Re-read on SIGHUP.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Accept a certificate's subject CN as an identity (`cn:NAME`). Off by
    /// default: a CN is free text, and only SANs are typed by the CA.
    #[serde(default)]
    pub allow_cn_identity: bool,
}

/// `[authz]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthzSection {
    /// The grants policy file (see signet.policy.example.toml), re-read on
    /// SIGHUP; a file that fails validation keeps the old rules.
    pub policy: PathBuf,
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Sinks: `file:PATH` or `stdout`, each optionally followed by
    /// `,optional`. A request succeeds once at least one required sink
    /// wrote its record. Default: `file:DATA_DIR/audit.log`, required.
    #[serde(default)]
    pub sinks: Vec<String>,
    /// `always` (fsync every record before answering), `never`, or
    /// `interval:1s`. Default `always`.
    #[serde(default = "default_fsync")]
    pub fsync: String,
    /// How long a record may take to write before the request fails with
    /// UNAVAILABLE, in seconds. Default 2.
    #[serde(default = "default_audit_timeout")]
    pub timeout_secs: u64,
    /// Where each new signed checkpoint is also sent, as one JSON line
    /// (`{"time","log","seq","hash"}`), to get it off the host: `stdout` (for
    /// journald or a log agent) or `file:PATH` on another volume. Compare
    /// with `signet audit verify FILE --anchor SEQ:HASH`. Default: none.
    #[serde(default)]
    pub checkpoint_sinks: Vec<String>,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            fsync: default_fsync(),
            timeout_secs: default_audit_timeout(),
            checkpoint_sinks: Vec::new(),
        }
    }
}

fn default_fsync() -> String {
    "always".into()
}

fn default_audit_timeout() -> u64 {
    2
}

impl AuditSection {
    /// The checkpoint sinks, parsed.
    pub fn checkpoint_sinks(&self) -> Result<Vec<crate::audit::SinkSpec>, String> {
        self.checkpoint_sinks
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse()
                    .map_err(|e| format!("audit.checkpoint_sinks[{i}]: {e}"))
            })
            .collect()
    }

    /// The audit configuration, with the default sink under `data_dir`.
    pub fn audit_config(&self, data_dir: &Path) -> Result<crate::audit::AuditConfig, String> {
        use crate::audit::{AuditConfig, FsyncPolicy, SinkConfig, SinkSpec};
        let fsync: FsyncPolicy = self
            .fsync
            .parse()
            .map_err(|e| format!("audit.fsync: {e}"))?;
        let mut sinks = Vec::new();
        let specs = if self.sinks.is_empty() {
            vec![format!("file:{}", data_dir.join("audit.log").display())]
        } else {
            self.sinks.clone()
        };
        for (i, s) in specs.iter().enumerate() {
            let (spec, optional) = match s.strip_suffix(",optional") {
                Some(spec) => (spec, true),
                None => (s.as_str(), false),
            };
            let spec: SinkSpec = spec.parse().map_err(|e| format!("audit.sinks[{i}]: {e}"))?;
            sinks.push(SinkConfig {
                spec,
                required: !optional,
                fsync,
            });
        }
        let mut config = AuditConfig::new(sinks);
        config.timeout = std::time::Duration::from_secs(self.timeout_secs.max(1));
        Ok(config)
    }
}

/// `[listen]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// gRPC API: `unix:PATH` (a Unix socket; callers are known by their uid)
    /// or `HOST:PORT` (needs `[tls]` with client certificates). Default
    /// `unix:/run/signet/grpc.sock`.
    #[serde(default = "default_grpc")]
    pub grpc: GrpcListen,
    /// File mode of the gRPC Unix socket, octal. Default `"0660"`: the
    /// owner and the group may connect; policy rules still decide.
    #[serde(default = "default_socket_mode")]
    pub grpc_socket_mode: String,
    /// Group of the gRPC Unix socket (a name or number). Default: the
    /// server's group.
    #[serde(default)]
    pub grpc_socket_group: Option<String>,
    /// A gRPC connection is closed after this long (and its caller
    /// reconnects, under the current certificates, CRLs and rules). Default
    /// `"1h"`.
    #[serde(
        default = "default_max_connection_age",
        with = "humantime_serde_compat"
    )]
    pub max_connection_age: std::time::Duration,
    /// How long requests in flight on such a connection may finish.
    /// Default `"1m"`.
    #[serde(
        default = "default_max_connection_age_grace",
        with = "humantime_serde_compat"
    )]
    pub max_connection_age_grace: std::time::Duration,
    /// On SIGTERM, how long requests in flight may finish before the
    /// connections still open are closed (a client that never answers the
    /// server's GOAWAY would otherwise hold the shutdown forever). Keep it
    /// below the supervisor's stop timeout (systemd `TimeoutStopSec`,
    /// Kubernetes `terminationGracePeriodSeconds`: 30s in `deploy/`), or the
    /// final audit checkpoint is lost to SIGKILL. Default `"10s"`.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde_compat")]
    pub shutdown_grace: std::time::Duration,
    /// HTTP address (JWKS for verifiers, health). Default `127.0.0.1:8080`.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// The address of `/metrics`, a listener of its own: the public JWKS
    /// listener never serves them. Default `127.0.0.1:9090`.
    #[serde(default = "default_metrics")]
    pub metrics: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            grpc_socket_mode: default_socket_mode(),
            grpc_socket_group: None,
            max_connection_age: default_max_connection_age(),
            max_connection_age_grace: default_max_connection_age_grace(),
            shutdown_grace: default_shutdown_grace(),
            http: default_http(),
            metrics: default_metrics(),
        }
    }
}

/// Where the gRPC API listens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum GrpcListen {
    /// TCP; mTLS required outside `signet dev`.
    Tcp(SocketAddr),
    /// A Unix domain socket at this absolute path.
    Unix(PathBuf),
}

impl std::str::FromStr for GrpcListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "{s:?}: a Unix socket path must be absolute (unix:/run/signet/grpc.sock)"
                ));
            }
            return Ok(GrpcListen::Unix(path));
        }
        s.parse()
            .map(GrpcListen::Tcp)
            .map_err(|_| format!("{s:?} is neither unix:/PATH nor HOST:PORT (e.g. 0.0.0.0:50051)"))
    }
}

impl TryFrom<String> for GrpcListen {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::fmt::Display for GrpcListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrpcListen::Tcp(a) => write!(f, "{a}"),
            GrpcListen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Durations written as `"90s"`, `"1h"` (humantime) or a number of seconds.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(std::time::Duration::from_secs(n)),
            Raw::Text(t) => humantime::parse_duration(&t)
                .map_err(|e| serde::de::Error::custom(format!("{t:?}: {e} (e.g. \"1h\")"))),
        }
    }
}

fn default_grpc() -> GrpcListen {
    GrpcListen::Unix(PathBuf::from("/run/signet/grpc.sock"))
}

fn default_socket_mode() -> String {
    "0660".into()
}

fn default_max_connection_age() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}

fn default_max_connection_age_grace() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

/// Also `signet dev`'s.
pub(crate) fn default_shutdown_grace() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

fn default_metrics() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// `[store]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Store {
    /// Data directory: the embedded SQLite store (`signet.db`) unless `url`
    /// is set, and always this process's lock file and audit log. Default
    /// `/var/lib/signet`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A PostgreSQL URL (`postgres://user@host/db?sslmode=verify-full`) to
    /// share keys between replicas instead of the embedded store.
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL schema for Signet's tables (default: the URL's default).
    #[serde(default)]
    pub schema: Option<String>,
    /// How often a replica re-reads the shared store even without a change
    /// notification, in seconds. Default 5.
    #[serde(default = "default_refresh")]
    pub refresh_interval_secs: u64,
    /// Why `url` uses `sslmode=verify-ca` (the server's certificate chains
    /// to the CA but its name is not checked) instead of `verify-full`.
    /// Required with `verify-ca` to a host that is not loopback.
    #[serde(default)]
    pub tls_reason: Option<String>,
    /// A replica on a shared store whose last successful refresh is older
    /// than this stops signing and serving its JWKS, rather than use keys
    /// that may have been revoked elsewhere; it resumes on the first
    /// refresh that succeeds. Must be less than every ring's `grace` and
    /// `publish_lead`. Between 10s and 1h; default `"5m"`.
    #[serde(default = "default_max_staleness", with = "humantime_serde_compat")]
    pub max_staleness: std::time::Duration,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            url: None,
            schema: None,
            refresh_interval_secs: default_refresh(),
            tls_reason: None,
            max_staleness: default_max_staleness(),
        }
    }
}

fn default_max_staleness() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

/// The bounds of `store.max_staleness`.
pub const MAX_STALENESS_BOUNDS: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(10),
    std::time::Duration::from_secs(3600),
);

/// Checks that a PostgreSQL `url` to a host that is not loopback verifies
/// the server's certificate: `sslmode=verify-full`, or `verify-ca` with a
/// `tls_reason`, and a root certificate (`sslrootcert=`). A URL without
/// them would connect with sqlx's default (`prefer`): no certificate check
/// and downgradable, so a network attacker could read and replay rows.
pub fn check_store_tls(url: &str, tls_reason: Option<&str>) -> Result<(), String> {
    let parsed = url::Url::parse(url)
        .map_err(|e| format!("store.url: not a valid URL ({e}); e.g. postgres://user@host/db"))?;
    let query = |names: &[&str]| {
        parsed
            .query_pairs()
            .filter(|(k, _)| names.contains(&k.as_ref()))
            .map(|(_, v)| v.into_owned())
            .last()
    };
    // sqlx connects to a Unix socket when the host (in the authority or a
    // `host=` parameter) is a path.
    let host = match query(&["host"]) {
        Some(h) => h,
        None => parsed.host_str().unwrap_or_default().to_owned(),
    };
    let decoded = url::form_urlencoded::parse(format!("h={host}").as_bytes())
        .map(|(_, v)| v.into_owned())
        .next()
        .unwrap_or_default();
    let local = decoded.is_empty()
        || decoded.starts_with('/')
        || decoded.eq_ignore_ascii_case("localhost")
        || decoded
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if local {
        return Ok(());
    }
    let fix = "add sslmode=verify-full&sslrootcert=/etc/signet/db-ca.pem (or verify-ca with \
               store.tls_reason)";
    let mode = query(&["sslmode", "ssl-mode"]).unwrap_or_default();
    match mode.as_str() {
        "verify-full" => {}
        "verify-ca" if tls_reason.is_some_and(|r| !r.trim().is_empty()) => {}
        "verify-ca" => {
            return Err(format!(
                "store.url: host {decoded} is not loopback and sslmode=verify-ca does not check \
                 the server's name: use sslmode=verify-full, or state why not in \
                 store.tls_reason = \"...\""
            ));
        }
        _ => {
            return Err(format!("store.url: host {decoded} is not loopback: {fix}"));
        }
    }
    if query(&["sslrootcert", "ssl-root-cert", "ssl-ca"]).is_none_or(|c| c.is_empty()) {
        return Err(format!(
            "store.url: host {decoded} is not loopback: add sslrootcert=/etc/signet/db-ca.pem \
             (the CA the database's certificate must chain to)"
        ));
    }
    Ok(())
}

fn default_refresh() -> u64 {
    5
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/signet")
}

/// `[seal]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    /// KEK provider: `file:PATH`, `env:VAR` or
    /// `pkcs11:module=PATH;token=LABEL;key=LABEL;pin-env=VAR`. Required: keep
    /// the KEK outside the data directory.
    pub kek: String,
    /// Run even if key memory cannot be locked (it could then be swapped to
    /// disk). Default false.
    #[serde(default)]
    pub allow_unlocked_memory: bool,
}

/// `[[rings]]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RingConfig {
    /// Ring name.
    pub name: String,
    /// RS256, PS256, ES256, EdDSA or Ed25519.
    pub algorithm: String,
    /// RSA modulus size (2048, 3072, 4096); omit for other algorithms.
    #[serde(default)]
    pub rsa_bits: u32,
    /// Issuer URL (`https://…`, or `http://` to a loopback host): set as
    /// `iss` in every token of the ring, and its OIDC discovery document is
    /// served at `{issuer}/.well-known/openid-configuration`. Applied at
    /// start to a ring that exists with another issuer. Omit for none (an
    /// issuer set with `signet policy set --issuer` is then kept).
    #[serde(default)]
    pub issuer: Option<String>,
}

/// Parses an octal file mode such as `"0660"`; group and owner bits only
/// (a socket others could write to would let any local user call).
pub fn socket_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8).map_err(|_| {
        format!("listen.grpc_socket_mode: {text:?} is not an octal mode such as \"0660\"")
    })?;
    if mode & !0o770 != 0 {
        return Err(format!(
            "listen.grpc_socket_mode: {text:?} gives access to others or sets special bits; \
             use owner and group bits only (e.g. \"0660\", \"0600\")"
        ));
    }
    Ok(mode)
}

/// A configuration that parsed and validated.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The file as written.
    pub config: Config,
    /// The KEK provider.
    pub kek: KekSpec,
    /// The rings, validated, with their issuers.
    pub rings: Vec<(RingName, KeySpec, Option<Issuer>)>,
}

/// Why a configuration file was refused. The message names the file, the
/// field and the rule.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    path: String,
    message: String,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Checked, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let config: Config = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        config.check().map_err(err)
    }

    /// Validates the parsed file.
    pub fn check(self) -> Result<Checked, String> {
        let kek: KekSpec = self
            .seal
            .kek
            .parse()
            .map_err(|e| format!("seal.kek: {e}"))?;
        let mut rings = Vec::new();
        for (i, r) in self.rings.iter().enumerate() {
            let name =
                RingName::parse(&r.name, &format!("rings[{i}].name")).map_err(|e| e.to_string())?;
            let alg: Algorithm = r
                .algorithm
                .parse()
                .map_err(|e| format!("rings[{i}].algorithm: {e}"))?;
            let spec = KeySpec::new(alg, r.rsa_bits)
                .map_err(|e| format!("rings[{i}].{}: {e}", e.field()))?;
            if rings.iter().any(|(n, _, _)| n == &name) {
                return Err(format!("rings[{i}].name: {name} is configured twice"));
            }
            let issuer = r
                .issuer
                .as_deref()
                .map(|text| Issuer::parse(text, &format!("rings[{i}].issuer")))
                .transpose()
                .map_err(|e| e.to_string())?;
            rings.push((name, spec, issuer));
        }
        self.audit
            .audit_config(&self.store.data_dir)
            .map_err(|e| e.to_string())?;
        self.audit.checkpoint_sinks()?;
        if self.authz.is_none() {
            return Err(
                "[authz] is missing: signet server grants nothing without a policy; add \
                 [authz] policy = \"/etc/signet/policy.toml\" (see signet.policy.example.toml)"
                    .into(),
            );
        }
        match &self.listen.grpc {
            GrpcListen::Tcp(addr) if self.tls.is_none() => {
                return Err(format!(
                    "listen.grpc {addr}: a TCP gRPC listener needs [tls] with client \
                     certificates (plaintext TCP is for `signet dev` only); or listen on a Unix \
                     socket: grpc = \"unix:/run/signet/grpc.sock\""
                ));
            }
            GrpcListen::Unix(path) if self.tls.is_some() => {
                return Err(format!(
                    "[tls] is set but listen.grpc is the Unix socket {}: TLS applies to a \
                     TCP listener; remove [tls] or listen on HOST:PORT",
                    path.display()
                ));
            }
            _ => {}
        }
        socket_mode(&self.listen.grpc_socket_mode)?;
        let age = self.listen.max_connection_age;
        if age < std::time::Duration::from_secs(1)
            || age > std::time::Duration::from_secs(7 * 86400)
        {
            return Err("listen.max_connection_age: must be between 1s and 7 days".into());
        }
        if self.listen.max_connection_age_grace > std::time::Duration::from_secs(3600) {
            return Err("listen.max_connection_age_grace: must be at most 1h".into());
        }
        if self.listen.shutdown_grace > std::time::Duration::from_secs(600) {
            return Err(format!(
                "listen.shutdown_grace: {} is over the limit of 10m; a stop that long \
                 outlasts any supervisor's stop timeout",
                humantime::format_duration(self.listen.shutdown_grace)
            ));
        }
        if self.listen.metrics.port() != 0 && self.listen.metrics.port() == self.listen.http.port()
        {
            return Err(format!(
                "listen.metrics {}: must be another port than listen.http {}: /metrics is \
                 never served on the public JWKS listener",
                self.listen.metrics, self.listen.http
            ));
        }
        if let Some(url) = &self.store.url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err("store.url: must be a postgres:// URL".into());
        }
        if let Some(url) = &self.store.url {
            check_store_tls(url, self.store.tls_reason.as_deref())?;
        }
        let (lo, hi) = MAX_STALENESS_BOUNDS;
        if self.store.max_staleness < lo || self.store.max_staleness > hi {
            return Err(format!(
                "store.max_staleness: {} is outside 10s..1h",
                humantime::format_duration(self.store.max_staleness)
            ));
        }
        if self.store.url.is_some()
            && self.store.max_staleness
                <= std::time::Duration::from_secs(self.store.refresh_interval_secs)
        {
            return Err(format!(
                "store.max_staleness: {} must be longer than store.refresh_interval_secs ({}s), \
                 or every replica would stop signing between two refreshes",
                humantime::format_duration(self.store.max_staleness),
                self.store.refresh_interval_secs
            ));
        }
        if self.store.refresh_interval_secs == 0 || self.store.refresh_interval_secs > 300 {
            return Err("store.refresh_interval_secs: must be between 1 and 300".into());
        }
        Ok(Checked {
            config: self,
            kek,
            rings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> Result<Checked, String> {
        toml::from_str::<Config>(s)
            .map_err(|e| e.to_string())
            .and_then(Config::check)
    }

    #[test]
    fn example_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("signet.example.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.rings.len(), 2);
        assert_eq!(c.kek.kind(), "file");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let cases = [
            (
                "[seal]\nkek = \"file:/k\"\ncolour = 1",
                "unknown field `colour`",
            ),
            (
                "[seal]\nkek = \"vault:x\"",
                "seal.kek: KEK spec \"vault:x\": unknown provider",
            ),
            (
                "[listen]\ngrpc = \"nope\"\n[seal]\nkek = \"file:/k\"",
                "\"nope\" is neither unix:/PATH nor HOST:PORT",
            ),
            (
                "[listen]\ngrpc = \"unix:grpc.sock\"\n[seal]\nkek = \"file:/k\"",
                "a Unix socket path must be absolute",
            ),
            (
                "[seal]\nkek = \"env:K\"\n[[rings]]\nname = \"a\"\nalgorithm = \"RS256\"\nrsa_bits = 1024",
                "rings[0].rsa_bits: 1024 is not supported",
            ),
            (
                "[seal]\nkek = \"env:K\"\n[[rings]]\nname = \"A\"\nalgorithm = \"ES256\"",
                "rings[0].name: ",
            ),
            ("", "missing field `seal`"),
            (
                "[seal]\nkek = \"env:K\"",
                "[authz] is missing: signet server grants nothing without a policy; add \
                 [authz] policy = \"/etc/signet/policy.toml\"",
            ),
            (
                "[listen]\ngrpc = \"0.0.0.0:50051\"\n[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"",
                "listen.grpc 0.0.0.0:50051: a TCP gRPC listener needs [tls]",
            ),
            (
                "[listen]\ngrpc = \"127.0.0.1:50051\"\n[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"",
                "(plaintext TCP is for `signet dev` only)",
            ),
            (
                "[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"",
                "[tls] is set but listen.grpc is the Unix socket /run/signet/grpc.sock",
            ),
            (
                "[listen]\ngrpc_socket_mode = \"0666\"\n[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"",
                "listen.grpc_socket_mode: \"0666\" gives access to others",
            ),
            (
                "[listen]\nmax_connection_age = \"forever\"\n[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"",
                "\"forever\": ",
            ),
            (
                "[seal]\nkek = \"env:K\"\n[audit]\nfsync = \"sometimes\"",
                "audit.fsync: ",
            ),
            (
                "[seal]\nkek = \"env:K\"\n[audit]\nsinks = [\"syslog\"]",
                "audit.sinks[0]: ",
            ),
        ];
        for (text, want) in cases {
            let e = check(text).err().unwrap_or_default();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn defaults() {
        let c = check("[seal]\nkek = \"env:SIGNET_KEK\"\n[authz]\npolicy = \"p\"").unwrap();
        assert_eq!(c.config.listen, Listen::default());
        assert_eq!(
            c.config.listen.grpc.to_string(),
            "unix:/run/signet/grpc.sock",
            "closed by default: a Unix socket"
        );
        assert_eq!(socket_mode(&c.config.listen.grpc_socket_mode), Ok(0o660));
        assert_eq!(c.config.store.data_dir, PathBuf::from("/var/lib/signet"));
        assert!(!c.config.seal.allow_unlocked_memory);
        assert_eq!(c.config.http_tls, None);
    }

    /// /metrics has a listener of its own by default, on loopback, and can
    /// not be put on the public JWKS port.
    #[test]
    fn metrics_listen_on_their_own_loopback_port_by_default() {
        let c = check("[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"").unwrap();
        assert_eq!(c.config.listen.metrics, "127.0.0.1:9090".parse().unwrap());
        assert_ne!(c.config.listen.metrics.port(), c.config.listen.http.port());
        let e = check("[listen]\nhttp = \"0.0.0.0:8080\"\nmetrics = \"127.0.0.1:8080\"\n[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"")
            .unwrap_err();
        assert!(
            e.starts_with(
                "listen.metrics 127.0.0.1:8080: must be another port than listen.http 0.0.0.0:8080"
            ),
            "{e}"
        );
        // Port 0 (tests) picks two free ports.
        check(
            "[listen]\nhttp = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"",
        )
        .unwrap();
    }

    #[test]
    fn http_tls_section() {
        let c = check("[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"\n[http_tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"")
            .unwrap();
        assert_eq!(
            c.config.http_tls,
            Some(HttpTlsSection {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        let e = check(
            "[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"\n[http_tls]\ncert = \"/c.pem\"",
        )
        .unwrap_err();
        assert!(e.contains("missing field `key`"), "{e}");
        let e = check(
            "[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"\n[http_tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"x\"",
        )
        .unwrap_err();
        assert!(e.contains("unknown field `client_ca`"), "{e}");
    }

    /// A PostgreSQL URL to a host that is not loopback must verify the
    /// server's certificate against a CA the URL names.
    #[test]
    fn store_url_to_another_host_needs_verified_tls() {
        let with = |url: &str, reason: Option<&str>| {
            let mut text = format!(
                "[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"\n[store]\nurl = {url:?}\n"
            );
            if let Some(r) = reason {
                text.push_str(&format!("tls_reason = {r:?}\n"));
            }
            check(&text).map(|_| ())
        };
        let fix = "add sslmode=verify-full&sslrootcert=/etc/signet/db-ca.pem (or verify-ca with store.tls_reason)";
        let refused = [
            (
                "postgres://signet@db.internal/signet",
                "host db.internal is not loopback: ",
            ),
            (
                "postgres://signet@db.internal/signet?sslmode=require",
                "host db.internal is not loopback: ",
            ),
            (
                "postgres://signet@db.internal/signet?sslmode=prefer&sslrootcert=/ca.pem",
                "host db.internal is not loopback: ",
            ),
            (
                "postgresql://10.0.0.5:5432/signet?sslmode=disable",
                "host 10.0.0.5 is not loopback: ",
            ),
            (
                "postgres://[2001:db8::1]/signet",
                "host [2001:db8::1] is not loopback: ",
            ),
        ];
        for (url, want) in refused {
            let e = with(url, None).unwrap_err();
            assert_eq!(e, format!("store.url: {want}{fix}"), "{url}");
        }
        // verify-full without a root certificate: the fix names it.
        let e = with("postgres://db.internal/signet?sslmode=verify-full", None).unwrap_err();
        assert!(
            e.starts_with("store.url: host db.internal is not loopback: add sslrootcert="),
            "{e}"
        );
        // verify-ca needs a stated reason, and a root certificate.
        let ca = "postgres://db.internal/signet?sslmode=verify-ca&sslrootcert=/ca.pem";
        let e = with(ca, None).unwrap_err();
        assert!(
            e.contains("sslmode=verify-ca does not check the server's name"),
            "{e}"
        );
        assert!(with(ca, Some("  ")).is_err(), "a blank reason is no reason");
        with(
            ca,
            Some("the database certificate is issued for an IP address"),
        )
        .unwrap();
        let e = with("postgres://db.internal/signet?sslmode=verify-ca", Some("x")).unwrap_err();
        assert!(e.contains("add sslrootcert="), "{e}");
        // Accepted: verify-full with a CA, in either spelling.
        with("postgres://signet@db.internal/signet?sslmode=verify-full&sslrootcert=/etc/signet/db-ca.pem", None).unwrap();
        with(
            "postgres://db.internal/signet?ssl-mode=verify-full&ssl-root-cert=/ca.pem",
            None,
        )
        .unwrap();
        // Loopback and Unix sockets need no TLS.
        for url in [
            "postgres://postgres@127.0.0.1:5432/test",
            "postgres://127.0.0.9/test",
            "postgres://localhost/test",
            "postgres://[::1]:5432/test",
            "postgres:///test",
            "postgres://%2Fvar%2Frun%2Fpostgresql/test",
            "postgres://db.internal/test?host=/var/run/postgresql",
        ] {
            with(url, None).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        // A `host=` parameter overrides the authority: a remote one counts.
        let e = with("postgres://localhost/test?host=db.internal", None).unwrap_err();
        assert!(e.contains("host db.internal is not loopback"), "{e}");
    }

    #[test]
    fn max_staleness_bounds_and_default() {
        let base = "[seal]\nkek = \"env:K\"\n[authz]\npolicy = \"p\"\n[store]\n";
        let c = check(base).unwrap();
        assert_eq!(
            c.config.store.max_staleness,
            std::time::Duration::from_secs(300)
        );
        for bad in ["\"9s\"", "\"2h\"", "0"] {
            let e = check(&format!("{base}max_staleness = {bad}\n")).unwrap_err();
            assert!(
                e.starts_with("store.max_staleness: ") && e.ends_with("is outside 10s..1h"),
                "{bad}: {e}"
            );
        }
        let c = check(&format!("{base}max_staleness = \"10s\"\n")).unwrap();
        assert_eq!(
            c.config.store.max_staleness,
            std::time::Duration::from_secs(10)
        );
        let e = check(&format!(
            "{base}url = \"postgres://127.0.0.1/t\"\nmax_staleness = \"10s\"\nrefresh_interval_secs = 10\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("must be longer than store.refresh_interval_secs (10s)"),
            "{e}"
        );
    }
}
