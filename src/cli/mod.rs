//! The `signet` command: `dev` runs a server; the other subcommands are
//! clients of a running one (`--addr`, env `SIGNET_ADDR`).

mod audit;
mod authz;
mod bench;
mod bench_store;
mod check;
mod client;
mod dev;
mod health;
mod operator;
mod plugin;
mod policy;
mod server;
mod timeline;
mod transport_error;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

pub use bench::BenchArgs;
pub use client::connect;

/// Signet: a signing service for JWT infrastructure.
///
/// Signet holds JWT signing keys that no caller ever sees, signs claims over
/// gRPC, publishes the public keys as a JWKS and rotates them.
///
/// Start a local server with `signet dev`, then in another terminal:
///
///   signet sign --claims '{"sub":"alice"}'
///   signet jwks
///   signet rotate --reason "quarterly"
///   signet timeline --simulate --days 200
#[derive(Debug, Parser)]
#[command(name = "signet", version, verbatim_doc_comment)]
pub struct Cli {
    /// Log format of servers: text or json (one object per line).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: crate::telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a development server on loopback, with an RS256 key ring "default".
    ///
    /// Keys are sealed in --data-dir under a KEK file created there on first
    /// start, so they survive restarts. Plaintext gRPC, no access control,
    /// loopback only: never expose it.
    Dev(dev::DevArgs),
    /// Run the server from a configuration file (see signet.example.toml).
    Server(server::ServerArgs),
    /// Sign claims with a ring's active key; prints the token alone on stdout.
    Sign(client::SignArgs),
    /// Verify a token against a ring's keys; exits non-zero if it fails.
    Verify(client::VerifyArgs),
    /// Print a ring's JWKS (the public keys verifiers need) as JSON.
    Jwks(client::RingArgs),
    /// List a ring's keys with their states and dates.
    Keys(client::KeysArgs),
    /// Rotate a ring. By default the successor is published now and signs
    /// after the ring's publish_lead; --now is the emergency rotation.
    Rotate(client::RotateArgs),
    /// Revoke a key: out of the JWKS now, material destroyed. Revoking the
    /// signing key rotates immediately first.
    Revoke(client::RevokeArgs),
    /// Show, set or check a ring's rotation and token policy.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Chart a ring's key timeline (past and projected), or simulate one.
    Timeline(timeline::TimelineArgs),
    /// Manage key rings.
    #[command(subcommand)]
    Rings(client::RingsCommand),
    /// Show whether the server is sealed, its KEK provider, store and keys.
    Status(operator::StatusArgs),
    /// Drop the KEK and every private key from the server's memory now.
    Seal(operator::SealArgs),
    /// Re-open the KEK and the sealed keys after `signet seal`.
    Unseal(ClientArgs),
    /// Check access-policy decisions offline.
    #[command(subcommand)]
    Authz(authz::AuthzCommand),
    /// Check audit logs.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Offline maintenance of a stopped server's data directory.
    #[command(subcommand)]
    Operator(operator::OperatorCommand),
    /// Measure Sign throughput and latency over gRPC against the raw
    /// in-process signing rate.
    Bench(BenchArgs),
    /// Run as an OpenBao or Vault secrets plugin (started by the host, not
    /// by hand; see docs/openbao.md). Also entered when the binary is
    /// started with no arguments and the plugin cookie in its environment.
    Plugin(plugin::PluginArgs),
    /// Measure what a store of many rings costs at Unseal and refresh
    /// (sealed manifests checked for every ring), on SQLite in a
    /// temporary directory.
    BenchStore(bench_store::BenchStoreArgs),
    /// GET a health URL (default the local /readyz); exit 0 on 200. The
    /// container image's HEALTHCHECK.
    Health(health::HealthArgs),
}

/// A command given input it cannot use (a missing file, a malformed
/// option): exit code 2, like clap's usage errors, where 1 means the
/// command ran and found a problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Where a client subcommand finds the server.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Address of the Signet gRPC endpoint: unix:/PATH for the server's Unix
    /// socket (you are known by your uid); https://HOST:PORT for mTLS, with
    /// SIGNET_TLS_CA, SIGNET_TLS_CERT and SIGNET_TLS_KEY naming PEM files;
    /// http://HOST:PORT (or HOST:PORT) for `signet dev` only.
    #[arg(
        long,
        env = "SIGNET_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
}

/// Options shared by the commands that run a server.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Address for the gRPC API.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// Address for the HTTP surface (JWKS for verifiers, health).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Data directory: the SQLite store (sealed keys) and, unless --kek is
    /// given, the development KEK file.
    #[arg(long, default_value = "./signet-dev")]
    pub data_dir: PathBuf,
}

/// Parses `15m`, `1h`, `90s`, `30` (seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 15m, 1h)"))
}

/// Runs the command line and returns the process exit code. Errors print
/// one line on stderr.
pub fn main() -> ExitCode {
    // OpenBao and Vault start a plugin with no arguments, its cookie in the
    // environment.
    let cli = if std::env::args_os().len() == 1 && crate::plugin::handshake::started_as_plugin() {
        Cli::parse_from(["signet", "plugin"])
    } else {
        Cli::parse()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("signet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match run(cli).await {
            Ok(()) => Ok(()),
            Err(e) => Err(transport_error::diagnose(e).await),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signet: {e:#}");
            if e.is::<UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    LOG_FORMAT.set(cli.log_format).ok();
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Server(args) => server::run(args).await,
        Command::Status(args) => operator::status(args).await,
        Command::Seal(args) => operator::seal(args).await,
        Command::Unseal(args) => operator::unseal(args).await,
        Command::Operator(cmd) => operator::operator(cmd).await,
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Authz(cmd) => authz::run(cmd),
        Command::Sign(args) => client::sign(args).await,
        Command::Verify(args) => client::verify(args).await,
        Command::Jwks(args) => client::jwks(args).await,
        Command::Keys(args) => client::keys(args).await,
        Command::Rotate(args) => client::rotate(args).await,
        Command::Revoke(args) => client::revoke(args).await,
        Command::Policy(cmd) => policy::run(cmd).await,
        Command::Timeline(args) => timeline::run(args).await,
        Command::Rings(cmd) => client::rings(cmd).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Plugin(args) => plugin::run(args).await,
        Command::BenchStore(args) => bench_store::run(args).await,
        Command::Health(args) => health::run(args).await,
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when
/// this is called, not when the future is first polled: a server says it is
/// listening before it waits, and a SIGTERM right after that must still stop
/// it cleanly (final audit checkpoint, socket removed) rather than kill it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for {name}");
            None
        }
    };
    let mut int = listen(SignalKind::interrupt(), "Ctrl-C");
    let mut term = listen(SignalKind::terminate(), "SIGTERM");
    async move {
        tokio::select! {
            () = recv(int.as_mut()) => {},
            () = recv(term.as_mut()) => {},
        }
    }
}

/// The next delivery of `signal`; never, without one.
async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

static LOG_FORMAT: std::sync::OnceLock<crate::telemetry::LogFormat> = std::sync::OnceLock::new();

/// Logs to stderr in the `--log-format` chosen; `RUST_LOG` overrides the
/// default level `info`.
pub(crate) fn init_logging() {
    crate::telemetry::init_logging(LOG_FORMAT.get().copied().unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    /// A kid is base64url: one in 64 begins with `-`, and must still be
    /// taken as the kid, not as an option (a test revoking such a kid
    /// failed with "unexpected argument '-u'").
    #[test]
    fn a_kid_that_begins_with_a_dash_is_a_kid() {
        let kid = "-uo3l2LThALqlJ1FCW2qGd56KdLNmD1NSZlVNPlzAZ4";
        let cli = Cli::try_parse_from(["signet", "revoke", kid, "--ring", "r", "--reason", "x"])
            .unwrap_or_else(|e| panic!("{e}"));
        let Command::Revoke(args) = cli.command else {
            panic!("not revoke");
        };
        assert!(format!("{args:?}").contains(kid), "{args:?}");
        let cli = Cli::try_parse_from(["signet", "keys", "--format", "pem", "--kid", kid])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(format!("{:?}", cli.command).contains(kid));
    }
}
