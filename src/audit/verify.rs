//! Recomputing a file's hash chain: `signet audit verify FILE [--head HASH]`.
//!
//! Every line must be a complete audit record whose `prev` is the hash of
//! the line before it, with `seq` one more than that line's. The first line
//! of a file is taken as it is: its `prev` is [`GENESIS_PREV`] for the
//! first file of a log, or the head of the file it was rotated from
//! ([`VerifyReport::first_prev`], to compare with that file's
//! [`VerifyReport::head_hash`]). A `seq` jump is accepted only on an
//! [`RESYNC_RPC`] marker whose `prev` is right, and is listed in
//! [`VerifyReport::resyncs`].
//!
//! What this detects: an edited line (the next line's `prev` no longer
//! matches), a removed, inserted or moved line (`prev` and `seq` break where
//! it happened), a torn or foreign line. What it cannot: the chain is not
//! keyed, so someone who can write the file can rewrite everything after
//! the line they change, or drop lines from the end. Comparing the reported
//! head with the head the service reports (`Operator.Status`, or a copy
//! kept elsewhere) closes that gap; that is what `--head` is for.

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::Path,
};

use super::record::{AuditRecord, GENESIS_PREV, RESYNC_RPC, line_hash};

/// The first line that breaks the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainError {
    /// Its line number, from 1.
    pub line: u64,
    /// What is wrong with it, and what that suggests (without the line
    /// number, which `line` holds).
    pub reason: String,
}

/// A declared gap: a resync marker where a sink resumed after missing lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResyncGap {
    /// The marker's line number, from 1.
    pub line: u64,
    /// The seq of the line before it.
    pub after_seq: u64,
    /// The marker's seq; the seqs in between are not in this file.
    pub seq: u64,
}

/// What [`verify_file`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Lines read (a torn last line counts).
    pub lines: u64,
    /// The seq of the first line, if it parsed.
    pub first_seq: Option<u64>,
    /// The `prev` of the first line: [`GENESIS_PREV`] if the file starts a
    /// log, else the head hash of the file before it.
    pub first_prev: Option<String>,
    /// The seq of the last line that parsed (0 for an empty file).
    pub head_seq: u64,
    /// The hash of the last line ([`GENESIS_PREV`] for an empty file):
    /// compare it with the head the service reports.
    pub head_hash: String,
    /// Gaps declared by resync markers, in order.
    pub resyncs: Vec<ResyncGap>,
    /// The first line that breaks the chain; `None` if the chain holds.
    pub first_error: Option<ChainError>,
}

impl VerifyReport {
    /// Whether every line chains to the one before it.
    pub fn is_valid(&self) -> bool {
        self.first_error.is_none()
    }

    /// Whether the file starts a log (its first `prev` is the genesis value)
    /// rather than continuing a rotated one.
    pub fn starts_log(&self) -> bool {
        self.first_prev.as_deref() == Some(GENESIS_PREV)
    }
}

/// Verifies the audit file at `path`; see the module docs for the rules.
/// Errors only if the file cannot be read.
pub fn verify_file(path: &Path) -> io::Result<VerifyReport> {
    verify_reader(BufReader::new(File::open(path)?))
}

/// Verifies audit lines read from `input`.
pub fn verify_reader(mut input: impl BufRead) -> io::Result<VerifyReport> {
    let mut report = VerifyReport {
        lines: 0,
        first_seq: None,
        first_prev: None,
        head_seq: 0,
        head_hash: GENESIS_PREV.to_owned(),
        resyncs: Vec::new(),
        first_error: None,
    };
    // The previous line's hash and, if it parsed, its seq.
    let mut prev: Option<(String, Option<u64>)> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        report.lines += 1;
        let n = report.lines;
        let hash = line_hash(&line);
        let problem = check_line(&line, prev.as_ref(), n, &mut report);
        if let Some(reason) = problem
            && report.first_error.is_none()
        {
            report.first_error = Some(ChainError { line: n, reason });
        }
        report.head_hash = hash.clone();
        let seq = parse(&line).map(|r| r.seq);
        if let Some(seq) = seq {
            report.head_seq = seq;
        }
        prev = Some((hash, seq));
    }
    Ok(report)
}

fn parse(line: &[u8]) -> Option<AuditRecord> {
    let text = line.strip_suffix(b"\n")?;
    serde_json::from_slice(text).ok()
}

/// What is wrong with line `n`, given the line before it.
fn check_line(
    line: &[u8],
    prev: Option<&(String, Option<u64>)>,
    n: u64,
    report: &mut VerifyReport,
) -> Option<String> {
    if !line.ends_with(b"\n") {
        return Some("it is incomplete (no newline at the end): a torn write".to_owned());
    }
    let Some(rec) = parse(line) else {
        return Some("it is not an audit record".to_owned());
    };
    let Some((prev_hash, prev_seq)) = prev else {
        report.first_seq = Some(rec.seq);
        report.first_prev = Some(rec.prev);
        return None;
    };
    let mut problems = Vec::new();
    let prev_ok = rec.prev == *prev_hash;
    if !prev_ok {
        problems.push(format!(
            "its prev is not the hash of line {} (line {} was edited, or lines were \
             removed, inserted or moved here)",
            n - 1,
            n - 1
        ));
    }
    if let Some(p) = *prev_seq {
        if rec.seq <= p {
            problems.push(format!(
                "its seq {} does not follow seq {p} (lines inserted, duplicated or reordered)",
                rec.seq
            ));
        } else if rec.seq > p + 1 {
            if rec.rpc == RESYNC_RPC && prev_ok {
                report.resyncs.push(ResyncGap {
                    line: n,
                    after_seq: p,
                    seq: rec.seq,
                });
            } else {
                problems.push(format!(
                    "its seq jumps from {p} to {} (lines removed)",
                    rec.seq
                ));
            }
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;

    /// A clean chain of `n` lines, as the log writes it.
    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS_PREV.to_owned();
        (1..=n)
            .map(|seq| {
                let line = AuditRecord {
                    seq,
                    prev: prev.clone(),
                    kid: format!("k{seq}"),
                    ..AuditRecord::new("signet.v1.Signer/Sign", Outcome::Ok, "OK")
                }
                .to_line()
                .unwrap();
                prev = line_hash(&line);
                line
            })
            .collect()
    }

    fn verify(lines: &[Vec<u8>]) -> VerifyReport {
        verify_reader(&lines.concat()[..]).unwrap()
    }

    fn first_error(lines: &[Vec<u8>]) -> (u64, String) {
        let e = verify(lines).first_error.expect("tampering detected");
        (e.line, e.reason)
    }

    #[test]
    fn clean_chain_and_empty_file() {
        let lines = chain(5);
        let r = verify(&lines);
        assert!(r.is_valid(), "{r:?}");
        assert!(r.starts_log());
        assert_eq!((r.lines, r.first_seq, r.head_seq), (5, Some(1), 5));
        assert_eq!(r.head_hash, line_hash(&lines[4]));

        let r = verify(&[]);
        assert!(r.is_valid());
        assert_eq!(
            (r.lines, r.head_seq, r.head_hash.as_str()),
            (0, 0, GENESIS_PREV)
        );
    }

    #[test]
    fn edited_line_breaks_the_next() {
        let mut lines = chain(5);
        lines[2] = String::from_utf8(lines[2].clone())
            .unwrap()
            .replace("\"k3\"", "\"k9\"")
            .into_bytes();
        let (line, why) = first_error(&lines);
        assert_eq!(line, 4);
        assert!(why.contains("not the hash of line 3"), "{why}");
    }

    #[test]
    fn removed_inserted_and_swapped_lines() {
        let mut removed = chain(5);
        removed.remove(2);
        let (line, why) = first_error(&removed);
        assert_eq!(line, 3);
        assert!(why.contains("jumps from 2 to 4"), "{why}");

        let mut inserted = chain(5);
        let copy = inserted[1].clone();
        inserted.insert(3, copy);
        let (line, why) = first_error(&inserted);
        assert_eq!(line, 4);
        assert!(why.contains("does not follow seq 3"), "{why}");

        let mut swapped = chain(5);
        swapped.swap(1, 2);
        assert_eq!(first_error(&swapped).0, 2);
    }

    #[test]
    fn torn_and_foreign_lines() {
        let mut lines = chain(3);
        lines[2].pop();
        let (line, why) = first_error(&lines);
        assert_eq!(line, 3);
        assert!(why.contains("torn"), "{why}");

        let mut lines = chain(3);
        lines.insert(1, b"hello\n".to_vec());
        assert_eq!(first_error(&lines).0, 2);
    }

    #[test]
    fn declared_resync_gap_is_accepted_only_as_a_marker() {
        let mut lines = chain(2);
        let marker = AuditRecord {
            seq: 7,
            prev: line_hash(&lines[1]),
            ..AuditRecord::new(RESYNC_RPC, Outcome::Ok, "OK")
        };
        lines.push(marker.to_line().unwrap());
        let r = verify(&lines);
        assert!(r.is_valid(), "{r:?}");
        assert_eq!(
            r.resyncs,
            vec![ResyncGap {
                line: 3,
                after_seq: 2,
                seq: 7
            }]
        );

        let not_marker = AuditRecord {
            rpc: "signet.v1.Signer/Sign".into(),
            ..marker
        };
        lines[2] = not_marker.to_line().unwrap();
        assert_eq!(first_error(&lines).0, 3);
    }
}
