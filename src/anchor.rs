//! The audit anchor: the latest signed checkpoint of the audit file, kept
//! in the key store too, so that a file cut short while the server was
//! stopped is refused at the next start, and an auditor can compare the
//! file with what the service last signed (`signet audit verify --addr`).
//!
//! An anchor is per audit file and host (`HOST:PATH`): replicas sharing a
//! store each keep their own log.

use std::{future::Future, path::Path};

use anyhow::bail;
use tokio::sync::watch;

use crate::keyring::KeyManager;

/// The anchor name of the audit file at `path` on this host.
pub fn log_name(path: &Path) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    format!("{host}:{}", path.display())
}

/// Refuses a file whose last line comes before the anchored checkpoint:
/// lines were cut from its end (or it was replaced) while the server was
/// stopped. `head` is the file's last `(seq, hash)`.
pub async fn check(keys: &KeyManager, file: &Path, head: (u64, &str)) -> anyhow::Result<()> {
    let name = log_name(file);
    let Some((seq, _hash)) = keys.audit_anchor(&name).await? else {
        return Ok(());
    };
    if head.0 < seq {
        bail!(
            "audit log {} ends at seq {} but the key store's anchored checkpoint is seq {seq}: \
             seqs {}..{seq} are missing (the file was cut short or replaced). Check it with \
             `signet audit verify {} --pubkey KEY`; to accept the loss and start, run \
             `signet audit accept-gap --config FILE --reason TEXT` (it writes a signed gap \
             record)",
            file.display(),
            head.0,
            head.0 + 1,
            file.display()
        );
    }
    Ok(())
}

/// Writes each new checkpoint of `anchors` to the store, and one JSON line
/// to each of `sinks`, until `shutdown`; a failed write is logged and
/// retried with the next checkpoint.
pub async fn keep(
    keys: KeyManager,
    file: std::path::PathBuf,
    mut anchors: watch::Receiver<Option<(u64, String)>>,
    sinks: Vec<crate::audit::SinkSpec>,
    shutdown: impl Future<Output = ()>,
) {
    let name = log_name(&file);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            changed = anchors.changed() => if changed.is_err() { return },
        }
        let latest = anchors.borrow_and_update().clone();
        let Some((seq, hash)) = latest else { continue };
        if let Err(e) = keys.set_audit_anchor(&name, seq, &hash).await {
            tracing::warn!(error = %e, seq, "cannot anchor the audit checkpoint in the store; retrying with the next one");
        }
        if !sinks.is_empty() {
            let line = checkpoint_line(&name, seq, &hash);
            let sinks = sinks.clone();
            // Blocking file I/O, off the runtime's workers.
            let written = tokio::task::spawn_blocking(move || ship(&sinks, &line)).await;
            if let Ok(Err(e)) = written {
                tracing::warn!(error = %e, seq, "cannot ship the audit checkpoint to a checkpoint sink");
            }
        }
    }
}

/// `{"time":…,"log":"HOST:PATH","seq":N,"hash":"…"}` and a newline.
fn checkpoint_line(log: &str, seq: u64, hash: &str) -> String {
    let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let mut line =
        serde_json::json!({ "time": time, "log": log, "seq": seq, "hash": hash }).to_string();
    line.push('\n');
    line
}

/// Appends `line` to every sink (a file is opened, written, fsynced).
fn ship(sinks: &[crate::audit::SinkSpec], line: &str) -> std::io::Result<()> {
    use std::io::Write;
    for sink in sinks {
        match sink {
            crate::audit::SinkSpec::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes())?;
                out.flush()?;
            }
            crate::audit::SinkSpec::File(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(line.as_bytes())?;
                f.sync_data()?;
            }
        }
    }
    Ok(())
}

/// Signs what is unsigned (a final checkpoint), anchors it and ships it to
/// `sinks`: at shutdown.
pub async fn finish(
    keys: &KeyManager,
    file: &Path,
    audit: &crate::audit::AuditLog,
    sinks: &[crate::audit::SinkSpec],
) {
    if let Err(e) = audit.checkpoint().await {
        tracing::warn!(error = %e, "no final audit checkpoint");
    }
    let latest = audit.anchors().borrow().clone();
    let Some((seq, hash)) = latest else { return };
    let name = log_name(file);
    if let Err(e) = keys.set_audit_anchor(&name, seq, &hash).await {
        tracing::warn!(error = %e, seq, "cannot anchor the final audit checkpoint");
    }
    if let Err(e) = ship(sinks, &checkpoint_line(&name, seq, &hash)) {
        tracing::warn!(error = %e, seq, "cannot ship the final audit checkpoint");
    }
}
