//! What the host and the plugin agree on before any gRPC: the magic
//! cookie, the protocol version, the handshake line on stdout, and logs on
//! stderr in hclog's JSON so they appear in OpenBao's own log.

use std::io::Write;

use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{Layer, layer::Context, prelude::*};

/// The environment variable holding the cookie of a secrets/auth backend
/// plugin (the same in Vault and OpenBao).
pub const COOKIE_KEY: &str = "VAULT_BACKEND_PLUGIN";
/// Its value.
pub const COOKIE_VALUE: &str = "6669da05-b1c8-4f49-97d9-c8e5bed98e20";
/// The application protocol Signet speaks: 5 (AutoMTLS, broker, no
/// wrapping-token callback).
pub const APP_PROTOCOL: u32 = 5;

/// Whether this process was started by OpenBao or Vault as a backend
/// plugin (the cookie is set, whatever its value).
pub fn started_as_plugin() -> bool {
    std::env::var_os(COOKIE_KEY).is_some()
}

/// Checks the cookie and the protocol versions the host offers.
pub fn check_env() -> Result<(), String> {
    match std::env::var(COOKIE_KEY) {
        Ok(v) if v == COOKIE_VALUE => {}
        Ok(_) => {
            return Err(format!(
                "{COOKIE_KEY} does not hold the backend plugin cookie: this binary is a \
                 secrets-engine plugin, to be started by OpenBao or Vault \
                 (`bao plugin register` / `bao secrets enable`), not by hand"
            ));
        }
        Err(_) => {
            return Err(format!(
                "{COOKIE_KEY} is not set: `signet plugin` is started by OpenBao or Vault \
                 (`bao plugin register` / `bao secrets enable`), not by hand"
            ));
        }
    }
    if let Ok(offered) = std::env::var("PLUGIN_PROTOCOL_VERSIONS")
        && !offered
            .split(',')
            .any(|v| v.trim() == APP_PROTOCOL.to_string())
    {
        return Err(format!(
            "the host offers plugin protocol versions {offered}; Signet speaks {APP_PROTOCOL} \
             only (OpenBao 2 or Vault 1.12 and later)"
        ));
    }
    Ok(())
}

/// The line that tells the host where to connect:
/// `CORE|APP|NETWORK|ADDRESS|grpc|CERT`, the certificate as DER in base64
/// without padding.
pub fn line(network: &str, address: &str, cert_der: &[u8]) -> String {
    use base64::Engine;
    let cert = base64::engine::general_purpose::STANDARD_NO_PAD.encode(cert_der);
    format!("1|{APP_PROTOCOL}|{network}|{address}|grpc|{cert}")
}

/// Writes the handshake line to stdout and flushes it: nothing else is
/// ever written to stdout in plugin mode.
pub fn announce(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Logs to stderr as hclog JSON lines (`@level`, `@message`, `@timestamp`,
/// then the event's fields), which go-plugin reads and re-logs in the
/// host's log at the same level. `RUST_LOG` overrides the default `info`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(Hclog)
        .try_init();
}

struct Hclog;

impl<S: Subscriber> Layer<S> for Hclog {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields(serde_json::Map::new());
        event.record(&mut fields);
        let mut out = serde_json::Map::new();
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warn",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        };
        out.insert("@level".into(), level.into());
        let message = fields.0.remove("message").unwrap_or_default();
        out.insert("@message".into(), message);
        out.insert("@module".into(), event.metadata().target().into());
        out.insert(
            "@timestamp".into(),
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        out.extend(fields.0);
        if let Ok(line) = serde_json::to_string(&out) {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }
}

struct Fields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_line_has_six_fields_and_unpadded_base64() {
        let l = line("unix", "/tmp/p.sock", &[1, 2, 3, 4]);
        assert_eq!(l, "1|5|unix|/tmp/p.sock|grpc|AQIDBA");
        assert_eq!(l.split('|').count(), 6);
    }
}
