//! `signet audit ...`: verify an audit log offline as an auditor would, print
//! the audit signing key, digest a value, accept a declared gap.

use std::{io::BufReader, path::PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::{UsageError, client::connect};
use crate::{
    audit::{self, CheckpointKey},
    pb,
};

/// `signet audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check an audit log: its hash chain across its files, every signed
    /// checkpoint, and that it reaches the checkpoint the service anchored.
    ///
    /// Give the files oldest first (rotated files, then the live one). With
    /// --pubkey (or --addr, which fetches the key and the anchored
    /// checkpoint from a running server) every checkpoint, resync and gap
    /// record must carry a valid signature. Exit codes: 0 the log holds, 1
    /// it is broken (the first problem is named with its file and line), 2
    /// usage or unreadable input.
    #[command(verbatim_doc_comment)]
    Verify(VerifyArgs),
    /// Print the audit signing key (PEM, then JWK) of a running server.
    Pubkey(PubkeyArgs),
    /// Print the HMAC of a value under the service's audit key, as audit
    /// records carry it, to search the log for one subject (grant: admin).
    Hash(HashArgs),
    /// After an audit file was cut short while the server was stopped (it
    /// then refuses to start, naming the missing seqs): write a signed gap
    /// record declaring them, with your reason, so the server starts and
    /// the loss stays visible to every verifier. Offline: stop the server.
    AcceptGap(AcceptGapArgs),
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

/// Options of `signet audit pubkey`.
#[derive(Debug, Args)]
pub struct PubkeyArgs {
    #[command(flatten)]
    client: super::ClientArgs,
}

/// Options of `signet audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The log's files, oldest first.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The audit public key (PEM or JWK file), from `signet audit pubkey`.
    #[arg(long, value_name = "FILE")]
    pubkey: Option<PathBuf>,
    /// Fetch the public key and the anchored checkpoint from this server
    /// (needs the `read` grant on "*").
    #[arg(long)]
    addr: Option<String>,
    /// The anchored checkpoint as SEQ:HASH (from `signet status`), when not
    /// fetched with --addr: the log must hold that very line.
    #[arg(long, value_name = "SEQ:HASH")]
    anchor: Option<String>,
    /// The chain head (hash of the last line) the service reported; the
    /// files must end exactly there.
    #[arg(long)]
    head: Option<String>,
}

/// Options of `signet audit accept-gap`.
#[derive(Debug, Args)]
pub struct AcceptGapArgs {
    /// The server's configuration file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Why the loss is accepted (recorded, signed, in the gap record).
    #[arg(long)]
    reason: String,
    /// KEK provider spec, overriding seal.kek from the file.
    #[arg(long)]
    kek: Option<String>,
}

pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify(args) => verify(args).await,
        AuditCommand::Pubkey(args) => {
            let s = status(&args.client.addr).await?;
            if s.audit_public_key_pem.is_empty() {
                bail!("the server holds no audit signing key now (sealed): unseal it first");
            }
            print!("{}", s.audit_public_key_pem);
            println!("{}", s.audit_public_key_jwk);
            Ok(())
        }
        AuditCommand::Hash(args) => {
            let mut op =
                pb::operator_client::OperatorClient::new(connect(&args.client.addr).await?);
            let resp = op
                .audit_hash(pb::AuditHashRequest { value: args.value })
                .await
                .map_err(super::client::status_error)?
                .into_inner();
            println!("{}", resp.hmac);
            Ok(())
        }
        AuditCommand::AcceptGap(args) => accept_gap(args).await,
    }
}

async fn status(addr: &str) -> anyhow::Result<pb::StatusResponse> {
    let mut op = pb::operator_client::OperatorClient::new(connect(addr).await?);
    Ok(op
        .status(pb::StatusRequest {})
        .await
        .map_err(super::client::status_error)?
        .into_inner())
}

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(UsageError(e.to_string()))
}

async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let mut key = match &args.pubkey {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("--pubkey {}: {e}", path.display())))?;
            Some(
                CheckpointKey::parse(&text)
                    .map_err(|e| usage(format!("--pubkey {}: {e}", path.display())))?,
            )
        }
        None => None,
    };
    let mut anchor = match &args.anchor {
        Some(a) => {
            let (seq, hash) = a
                .split_once(':')
                .and_then(|(s, h)| Some((s.parse::<u64>().ok()?, h.to_owned())))
                .ok_or_else(|| usage(format!("--anchor {a:?}: expected SEQ:HASH")))?;
            Some((seq, hash))
        }
        None => None,
    };
    if let Some(addr) = &args.addr {
        let s = status(addr).await.map_err(usage)?;
        if key.is_none() && !s.audit_public_key_pem.is_empty() {
            key = Some(CheckpointKey::parse(&s.audit_public_key_pem).map_err(usage)?);
        }
        if anchor.is_none() && s.audit_checkpoint_seq > 0 {
            anchor = Some((s.audit_checkpoint_seq, s.audit_checkpoint_hash));
        }
    }
    let mut verifier = audit::Verifier::new(key);
    if let Some((seq, _)) = &anchor {
        verifier.expect_anchor(*seq);
    }
    for path in &args.files {
        let file = std::fs::File::open(path)
            .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
        verifier
            .feed(&path.display().to_string(), BufReader::new(file))
            .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    }
    let report = verifier.finish(anchor.clone());
    println!(
        "{} file(s), {} line(s), seq {}..{}, head {}",
        args.files.len(),
        report.lines,
        report.first_seq.unwrap_or(0),
        report.head_seq,
        report.head_hash
    );
    if !report.starts_log() {
        println!("note: the first line continues an earlier (rotated) file; give that file first");
    }
    for gap in &report.resyncs {
        println!(
            "note: line {}: declared gap (resync or accepted gap); seq {}..{} are not in the log",
            gap.line,
            gap.after_seq + 1,
            gap.seq - 1
        );
    }
    if report.signatures_checked {
        match report.last_signed_seq {
            Some(seq) => println!(
                "signed: up to seq {seq}; {} line(s) after it are not signed yet",
                report.unsigned_tail
            ),
            None => println!(
                "signed: nothing ({} line(s) carry no valid signature yet)",
                report.unsigned_tail
            ),
        }
    } else {
        println!("signatures: not checked (give --pubkey or --addr)");
    }
    if let Some((seq, hash)) = &anchor {
        println!("anchor: seq {seq} hash {hash}");
    }
    if let Some(e) = &report.first_error {
        if e.file.is_empty() || args.files.len() == 1 && e.line > 0 {
            bail!("line {}: {}", e.line, e.reason);
        }
        if e.line == 0 {
            bail!("{}: {}", e.file, e.reason);
        }
        bail!("{} line {}: {}", e.file, e.line, e.reason);
    }
    if let Some(head) = &args.head
        && head != &report.head_hash
    {
        bail!(
            "the chain holds, but the files end at {} and the service reported head {head}: \
             lines were removed from the end or a file was replaced",
            report.head_hash
        );
    }
    println!("OK: the chain holds");
    Ok(())
}

async fn accept_gap(args: AcceptGapArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    if args.reason.trim().is_empty() {
        return Err(usage("--reason: say why the loss is accepted"));
    }
    let checked = crate::config::Config::load(&args.config)?;
    let c = &checked.config;
    let kek = match &args.kek {
        Some(s) => s.parse().context("--kek")?,
        None => checked.kek.clone(),
    };
    crate::hardening::harden_process(c.seal.allow_unlocked_memory)?;
    let _lock = crate::server::lock_data_dir(&c.store.data_dir)
        .context("stop the server before accepting a gap in its audit log")?;
    let store = super::operator::open_store(
        &c.store.data_dir,
        c.store
            .url
            .as_ref()
            .map(|u| (u.clone(), c.store.schema.clone())),
    )
    .await?;
    let keys = crate::keyring::KeyManager::open(
        Arc::from(store),
        Arc::new(crate::clock::SystemClock),
        Arc::new(kek),
    )
    .await?;
    keys.set_legacy_audit_key_file(c.store.data_dir.join("audit.key"));
    keys.unseal().await.context("cannot unseal")?;
    let key = keys.load_audit_key().await?;
    let config = c
        .audit
        .audit_config(&c.store.data_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let Some(path) = config.sinks.first().and_then(|s| match &s.spec {
        audit::SinkSpec::File(p) => Some(p.clone()),
        audit::SinkSpec::Stdout => None,
    }) else {
        bail!("the first audit sink is not a file: nothing is anchored");
    };
    let log = audit::AuditLog::open(config).await?;
    let (head, _) = log.head();
    let name = crate::anchor::log_name(&path);
    let Some((anchored, _)) = keys.audit_anchor(&name).await? else {
        println!(
            "{}: no anchored checkpoint; nothing to accept",
            path.display()
        );
        return Ok(());
    };
    if head >= anchored {
        println!(
            "{}: ends at seq {head}, at or past the anchored checkpoint seq {anchored}; nothing to accept",
            path.display()
        );
        return Ok(());
    }
    log.set_signer(Some(Arc::new(key.checkpoint_signer())));
    log.skip_to(anchored + 1).await?;
    let mut rec = audit::AuditRecord::new(audit::GAP_RPC, audit::Outcome::Ok, "OK");
    rec.reason = Some(format!(
        "seqs {}..{anchored} are missing from {}; accepted by the operator: {}",
        head + 1,
        path.display(),
        args.reason
    ));
    let seq = log.append(rec).await?;
    log.checkpoint().await?;
    let latest = log.anchors().borrow().clone();
    if let Some((cp, hash)) = latest {
        keys.set_audit_anchor(&name, cp, &hash).await?;
    }
    keys.close().await;
    println!(
        "{}: signed gap record at seq {seq} declares seqs {}..{anchored} missing; the server \
         can start",
        path.display(),
        head + 1
    );
    Ok(())
}
