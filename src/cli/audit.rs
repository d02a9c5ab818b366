//! `signet audit verify FILE [--head HASH]`: checks an audit log's hash
//! chain offline, as an auditor would.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::audit;

/// `signet audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check a log file's hash chain; report the first edited, deleted,
    /// inserted or reordered line, and whether the file ends at a head you
    /// anchored elsewhere.
    Verify(VerifyArgs),
    /// Print the HMAC of a value under the service's audit key, as audit
    /// records carry it, to search the log for one subject (grant: admin).
    Hash(HashArgs),
}

/// Options of `signet audit hash`.
#[derive(Debug, Args)]
pub struct HashArgs {
    /// The value, e.g. a subject.
    #[arg(long)]
    value: String,
    #[command(flatten)]
    client: super::ClientArgs,
}

/// Options of `signet audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The audit log file.
    file: PathBuf,
    /// The chain head (hash of the last line) the service reported; the
    /// file must end exactly there.
    #[arg(long)]
    head: Option<String>,
}

pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    let args = match cmd {
        AuditCommand::Verify(args) => args,
        AuditCommand::Hash(args) => {
            let mut op = crate::pb::operator_client::OperatorClient::new(
                super::client::connect(&args.client.addr).await?,
            );
            let resp = op
                .audit_hash(crate::pb::AuditHashRequest { value: args.value })
                .await
                .map_err(super::client::status_error)?
                .into_inner();
            println!("{}", resp.hmac);
            return Ok(());
        }
    };
    let report = audit::verify_file(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    println!(
        "{}: {} line(s), seq {}..{}, head {}",
        args.file.display(),
        report.lines,
        report.first_seq.unwrap_or(0),
        report.head_seq,
        report.head_hash
    );
    if !report.starts_log() {
        println!("note: the first line continues an earlier (rotated) file; verify that file too");
    }
    for gap in &report.resyncs {
        println!(
            "note: line {}: resync marker; seq {}..{} were not written to this file",
            gap.line,
            gap.after_seq + 1,
            gap.seq - 1
        );
    }
    if let Some(e) = &report.first_error {
        bail!("line {}: {}", e.line, e.reason);
    }
    if let Some(head) = &args.head
        && head != &report.head_hash
    {
        bail!(
            "the chain holds, but the file ends at {} and the service reported head {head}: \
             lines were removed from the end or the file was replaced",
            report.head_hash
        );
    }
    println!("OK: the chain holds");
    Ok(())
}
