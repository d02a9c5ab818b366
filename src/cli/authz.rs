//! `signet authz check`: evaluates the access policy offline, as the server
//! would, and says which rule decided.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::parse_duration;
use rustls::pki_types::pem::PemObject;

use crate::authz::{Action, Authz};

/// `signet authz ...`
#[derive(Debug, Subcommand)]
pub enum AuthzCommand {
    /// Decide whether a caller may perform an action on a ring; exits 0 if
    /// allowed, 1 if denied (or if the policy is invalid).
    ///
    /// Give the caller as a typed identity (--identity uri:spiffe://...,
    /// dns:NAME, cn:NAME, unix:uid:N, unix:user:NAME) or as the client
    /// certificate it will present (--cert FILE): the command prints the
    /// identities Signet derives from it. For `sign`, --claims (and --ttl,
    /// --typ) check the ring's claim rules too.
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
}

/// Options of `signet authz check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy file (see signet.policy.example.toml).
    #[arg(long)]
    policy: PathBuf,
    /// The caller's typed identity, e.g. uri:spiffe://example.org/ns/a/sa/b.
    #[arg(long, required_unless_present = "cert", conflicts_with = "cert")]
    identity: Option<String>,
    /// A client certificate (PEM): check as the identities Signet derives
    /// from it.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// With --cert: count the subject CN as an identity, as the server does
    /// with `[tls] allow_cn_identity = true`.
    #[arg(long, requires = "cert")]
    allow_cn: bool,
    /// sign, verify, read, rotate, revoke, policy, seal, unseal or admin.
    #[arg(long)]
    action: Action,
    /// The ring, or "*" for a service-wide action such as seal or unseal.
    #[arg(long)]
    ring: String,
    /// For `sign`: the claims (JSON, or @FILE) to check against the claim
    /// rules of the caller's grants.
    #[arg(long, value_name = "JSON|@FILE")]
    claims: Option<String>,
    /// For `sign`: the requested lifetime (e.g. 10m); default: the rule's
    /// cap, else the ring's default (1h assumed offline).
    #[arg(long, value_parser = parse_duration, requires = "claims")]
    ttl: Option<Duration>,
    /// For `sign`: the header `typ` (default JWT).
    #[arg(long, default_value = "JWT", requires = "claims")]
    typ: String,
}

/// The ring default lifetime assumed offline, where the ring's own policy
/// is not at hand: Signet's default `default_token_ttl`.
const OFFLINE_DEFAULT_TTL: Duration = Duration::from_secs(3600);

pub fn run(cmd: AuthzCommand) -> anyhow::Result<()> {
    let AuthzCommand::Check(args) = cmd;
    let authz = Authz::load(&args.policy)?;
    let names: Vec<String> = match (&args.identity, &args.cert) {
        (Some(id), _) => vec![id.clone()],
        (None, Some(path)) => {
            let der = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .with_context(|| format!("--cert {}", path.display()))?
                .next()
                .with_context(|| format!("--cert {}: no PEM certificate in it", path.display()))?
                .with_context(|| format!("--cert {}", path.display()))?;
            let names = crate::tls::identities_of(der.as_ref(), args.allow_cn)
                .map_err(|e| anyhow::anyhow!("--cert {}: {e}", path.display()))?;
            let names: Vec<String> = names.iter().map(|n| n.as_str().to_owned()).collect();
            println!("identities: {}", names.join(", "));
            names
        }
        (None, None) => bail!("give --identity or --cert"),
    };
    let shown = names.first().cloned().unwrap_or_default();
    let decision = authz.check(&names[..], args.action, &args.ring);
    println!("{}", decision.explanation);
    if !decision.allowed {
        bail!("{shown} may not {} on {}", args.action, args.ring);
    }
    let Some(claims) = &args.claims else {
        return Ok(());
    };
    if args.action != Action::Sign {
        bail!("--claims: claim rules apply to the action sign only");
    }
    let text = match claims.strip_prefix('@') {
        Some(path) => std::fs::read(path).with_context(|| format!("--claims @{path}"))?,
        None => claims.as_bytes().to_vec(),
    };
    let claims = crate::crypto::claims::parse_object(
        &text,
        crate::crypto::claims::Limits::CLAIMS,
        "claims_json",
    )?;
    let Some(grant) = authz.sign_grant(&names[..], &args.ring) else {
        println!("claims: no claim rule applies (an unconstrained grant allows any claims)");
        return Ok(());
    };
    match grant.check(&claims, args.ttl, OFFLINE_DEFAULT_TTL, &args.typ) {
        Ok(accepted) => {
            println!(
                "claims: allowed by the claim rules of rule {}",
                accepted.rule
            );
            if let Some(iss) = accepted.iss {
                println!("  Signet sets iss = {iss:?}");
            }
            if let Some(ttl) = accepted.ttl {
                println!("  lifetime capped at {}", humantime::format_duration(ttl));
            }
            Ok(())
        }
        Err(v) => {
            println!("claims: refused: {}", v.message);
            bail!("{shown} may not sign these claims on {}", args.ring)
        }
    }
}
