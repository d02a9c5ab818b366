//! `signet health`: one HTTP GET of a health endpoint, exit 0 on 200.
//!
//! The probe a container's HEALTHCHECK runs (the image has no curl): it
//! asks the server's own `/readyz` on loopback. Plain HTTP only: with
//! `[http_tls]` the listener speaks HTTPS and a container probe should use
//! a plain loopback listener or the orchestrator's own HTTPS probe.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// Options of `signet health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The URL to GET: http://HOST:PORT/PATH.
    #[arg(default_value = "http://127.0.0.1:8080/readyz")]
    url: String,
    /// Give up after this long.
    #[arg(long, value_parser = super::parse_duration, default_value = "5s")]
    timeout: Duration,
}

/// Longest body printed: a readiness answer is one line.
const MAX_BODY: usize = 4096;

/// GETs the URL; succeeds on status 200 and prints the body.
pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let uri: hyper::Uri = args
        .url
        .parse()
        .map_err(|e| super::UsageError(format!("{}: not a URL ({e})", args.url)))?;
    if uri.scheme_str() != Some("http") {
        return Err(super::UsageError(format!(
            "{}: only http:// URLs (a loopback probe of the server's own listener)",
            args.url
        ))
        .into());
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let url = &args.url;
    let fetch = async {
        let resp = client
            .get(uri)
            .await
            .with_context(|| format!("{url}: no answer"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(args.timeout, fetch)
        .await
        .with_context(|| {
            format!(
                "{url}: no answer within {}",
                humantime::format_duration(args.timeout)
            )
        })??;
    let text = String::from_utf8_lossy(&body);
    if status != hyper::StatusCode::OK {
        bail!("{url}: {status}: {}", text.trim());
    }
    print!("{text}");
    Ok(())
}
