//! `signet authz check`: evaluates the access policy offline, as the server
//! would, and says which rule decided.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::authz::{Action, Authz};

/// `signet authz ...`
#[derive(Debug, Subcommand)]
pub enum AuthzCommand {
    /// Decide whether an identity may perform an action on a ring; exits 0
    /// if allowed, 1 if denied (or if the policy is invalid).
    Check(CheckArgs),
}

/// Options of `signet authz check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy file (see signet.policy.example.toml).
    #[arg(long)]
    policy: PathBuf,
    /// The caller's identity: URI SAN (e.g. SPIFFE ID), DNS SAN or CN.
    #[arg(long)]
    identity: String,
    /// sign, verify, read, rotate, revoke, policy, seal, unseal or admin.
    #[arg(long)]
    action: Action,
    /// The ring, or "*" for a service-wide action such as seal or unseal.
    #[arg(long)]
    ring: String,
}

pub fn run(cmd: AuthzCommand) -> anyhow::Result<()> {
    let AuthzCommand::Check(args) = cmd;
    let authz = Authz::load(&args.policy)?;
    let decision = authz.check(&args.identity, args.action, &args.ring);
    println!("{}", decision.explanation);
    if !decision.allowed {
        bail!("{} may not {} on {}", args.identity, args.action, args.ring);
    }
    Ok(())
}
