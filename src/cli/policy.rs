//! `signet policy show | set | check`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::{
    client::{RingArgs, connect, status_error},
    parse_duration,
};
use crate::{
    keyring::{Issuer, Policy, Short},
    pb::{self, key_admin_client::KeyAdminClient},
    rpc::{duration_to_proto, policy_from_proto},
};

/// `signet policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print a ring's policy and any advice about it.
    Show(RingArgs),
    /// Change fields of a ring's policy; the rest keep their values.
    Set(Change),
    /// Check a ring's policy with the given changes, without storing it.
    /// Exits non-zero if a hard rule is broken.
    Check(Change),
}

/// Policy fields to change (durations like 90d, 6d, 1h, 15m, 60s).
#[derive(Debug, Args)]
pub struct Change {
    #[command(flatten)]
    ring: RingArgs,
    /// How long a key signs before its successor takes over.
    #[arg(long, value_parser = parse_duration)]
    rotation_period: Option<Duration>,
    /// How long a new key is published before it signs.
    #[arg(long, value_parser = parse_duration)]
    publish_lead: Option<Duration>,
    /// How long a key stays published after it stops signing.
    #[arg(long, value_parser = parse_duration)]
    grace: Option<Duration>,
    /// Longest token lifetime Sign accepts.
    #[arg(long, value_parser = parse_duration)]
    max_token_ttl: Option<Duration>,
    /// Lifetime when a Sign request gives none.
    #[arg(long, value_parser = parse_duration)]
    default_token_ttl: Option<Duration>,
    /// Longest time verifiers may cache the JWKS.
    #[arg(long, value_parser = parse_duration)]
    jwks_max_age: Option<Duration>,
    /// Clock difference tolerated between Signet and verifiers.
    #[arg(long, value_parser = parse_duration)]
    clock_skew: Option<Duration>,
    /// Issuer URL: set as `iss` in every token of the ring, and served as
    /// OIDC discovery at ISSUER/.well-known/openid-configuration.
    #[arg(long, conflicts_with = "no_issuer")]
    issuer: Option<String>,
    /// Remove the ring's issuer: tokens get no `iss`, no discovery document.
    #[arg(long)]
    no_issuer: bool,
}

impl Change {
    fn apply(&self, mut p: Policy) -> Policy {
        let set = |field: &mut Duration, v: Option<Duration>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut p.rotation_period, self.rotation_period);
        set(&mut p.publish_lead, self.publish_lead);
        set(&mut p.grace, self.grace);
        set(&mut p.max_token_ttl, self.max_token_ttl);
        set(&mut p.default_token_ttl, self.default_token_ttl);
        set(&mut p.jwks_max_age, self.jwks_max_age);
        set(&mut p.clock_skew, self.clock_skew);
        p
    }

    /// The issuer to send: `None` keeps the ring's, `""` removes it.
    fn issuer(&self) -> Option<String> {
        if self.no_issuer {
            return Some(String::new());
        }
        self.issuer.clone()
    }
}

/// Prints `p` one field a line, then the issuer.
pub(super) fn print_policy(p: &Policy) {
    let rows = [
        ("rotation_period", p.rotation_period),
        ("publish_lead", p.publish_lead),
        ("grace", p.grace),
        ("max_token_ttl", p.max_token_ttl),
        ("default_token_ttl", p.default_token_ttl),
        ("jwks_max_age", p.jwks_max_age),
        ("clock_skew", p.clock_skew),
    ];
    for (name, d) in rows {
        println!("{name:<18} {}", Short(d));
    }
    match &p.issuer {
        Some(issuer) => println!("{:<18} {issuer}", "issuer"),
        None => println!(
            "{:<18} - (tokens get no iss; no discovery document)",
            "issuer"
        ),
    }
}

async fn current(
    client: &mut KeyAdminClient<tonic::transport::Channel>,
    ring: &str,
) -> anyhow::Result<Policy> {
    let resp = client
        .get_key_ring(pb::GetKeyRingRequest {
            key_ring: ring.to_owned(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let ring = resp.ring.context("the server sent no ring")?;
    let p = ring.policy.context("the server sent no policy")?;
    let mut policy = policy_from_proto(&p).map_err(status_error)?;
    policy.issuer = match ring.issuer.as_str() {
        "" => None,
        text => Some(Issuer::parse(text, "issuer")?),
    };
    Ok(policy)
}

pub async fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Show(ring) => {
            let mut client = KeyAdminClient::new(connect(&ring.client.addr).await?);
            let p = current(&mut client, &ring.ring).await?;
            println!("policy of ring {}:", ring.ring);
            print_policy(&p);
            for w in p.validate().unwrap_or_default() {
                println!("warning: {w}");
            }
            Ok(())
        }
        PolicyCommand::Check(change) => {
            let mut client = KeyAdminClient::new(connect(&change.ring.client.addr).await?);
            let mut p = change.apply(current(&mut client, &change.ring.ring).await?);
            if let Some(text) = change.issuer() {
                p.issuer = match text.as_str() {
                    "" => None,
                    text => Some(Issuer::parse(text, "--issuer")?),
                };
            }
            print_policy(&p);
            match p.validate() {
                Ok(warnings) => {
                    for w in &warnings {
                        println!("warning: {w}");
                    }
                    println!("OK: the policy keeps every valid token verifiable");
                    Ok(())
                }
                Err(e) => bail!("{e}"),
            }
        }
        PolicyCommand::Set(change) => {
            let mut client = KeyAdminClient::new(connect(&change.ring.client.addr).await?);
            let mut p = change.apply(current(&mut client, &change.ring.ring).await?);
            let resp = client
                .update_policy(pb::UpdatePolicyRequest {
                    key_ring: change.ring.ring.clone(),
                    policy: Some(pb::Policy {
                        rotation_period: Some(duration_to_proto(p.rotation_period)),
                        publish_lead: Some(duration_to_proto(p.publish_lead)),
                        grace: Some(duration_to_proto(p.grace)),
                        max_token_ttl: Some(duration_to_proto(p.max_token_ttl)),
                        default_token_ttl: Some(duration_to_proto(p.default_token_ttl)),
                        jwks_max_age: Some(duration_to_proto(p.jwks_max_age)),
                        clock_skew: Some(duration_to_proto(p.clock_skew)),
                    }),
                    issuer: change.issuer(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            p.issuer = match resp.issuer.as_str() {
                "" => None,
                text => Some(Issuer::parse(text, "issuer")?),
            };
            println!(
                "policy of ring {} updated (existing key timelines keep their times):",
                change.ring.ring
            );
            print_policy(&p);
            for w in resp.warnings {
                println!("warning: {w}");
            }
            Ok(())
        }
    }
}
