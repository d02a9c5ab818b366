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

use super::{
    checkpoint::{CheckpointKey, GAP_RPC, is_signed_kind},
    record::{AuditRecord, GENESIS_PREV, RESYNC_RPC, line_hash},
};

/// The first line that breaks the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainError {
    /// The file it is in, as named to the verifier (empty for a single
    /// reader).
    pub file: String,
    /// Its line number in that file, from 1.
    pub line: u64,
    /// What is wrong with it, and what that suggests (without the line
    /// number, which `line` holds).
    pub reason: String,
}

/// A declared gap: a resync marker where a sink resumed after missing lines,
/// or an accepted gap (`audit.gap`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResyncGap {
    /// The marker's line number, from 1.
    pub line: u64,
    /// The seq of the line before it.
    pub after_seq: u64,
    /// The marker's seq; the seqs in between are not in this file.
    pub seq: u64,
}

/// What [`verify_file`] or a [`Verifier`] found.
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
    /// Whether signatures were checked (a public key was given).
    pub signatures_checked: bool,
    /// The seq of the last record whose signature verified.
    pub last_signed_seq: Option<u64>,
    /// Lines after the last verified signed record: what no signature
    /// covers yet (all lines when no key was given).
    pub unsigned_tail: u64,
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

/// Verifies the audit file at `path`, without signatures; see the module
/// docs for the rules. Errors only if the file cannot be read.
pub fn verify_file(path: &Path) -> io::Result<VerifyReport> {
    verify_reader(BufReader::new(File::open(path)?))
}

/// Verifies audit lines read from `input`, without signatures.
pub fn verify_reader(input: impl BufRead) -> io::Result<VerifyReport> {
    let mut v = Verifier::new(None);
    v.feed("", input)?;
    Ok(v.finish(None))
}

/// Verifies one log across its files (oldest first: rotated files, then
/// the live one) and, with the audit public key, every signed record.
pub struct Verifier {
    key: Option<CheckpointKey>,
    report: VerifyReport,
    /// The previous line's hash and, if it parsed, its seq.
    prev: Option<(String, Option<u64>)>,
    /// The last signed record that verified: its hash.
    last_signed: Option<String>,
    /// Each line's (seq, hash) where the anchor may be, found while
    /// reading: the line with the anchor's seq.
    seen_anchor: Option<(u64, String, String, u64)>,
    anchor_seq: Option<u64>,
    /// The previous file's name, for messages at a file boundary.
    prev_file: Option<String>,
}

impl Verifier {
    /// A verifier that checks signatures when given `key`.
    pub fn new(key: Option<CheckpointKey>) -> Self {
        Self {
            report: VerifyReport {
                lines: 0,
                first_seq: None,
                first_prev: None,
                head_seq: 0,
                head_hash: GENESIS_PREV.to_owned(),
                resyncs: Vec::new(),
                signatures_checked: key.is_some(),
                last_signed_seq: None,
                unsigned_tail: 0,
                first_error: None,
            },
            key,
            prev: None,
            last_signed: None,
            seen_anchor: None,
            anchor_seq: None,
            prev_file: None,
        }
    }

    /// Looks out for the anchored checkpoint's seq while reading, so that
    /// [`Verifier::finish`] can compare it.
    pub fn expect_anchor(&mut self, seq: u64) {
        self.anchor_seq = Some(seq);
    }

    /// Reads the next file, named `name` in messages.
    pub fn feed(&mut self, name: &str, mut input: impl BufRead) -> io::Result<()> {
        let mut line = Vec::new();
        let mut n = 0;
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            n += 1;
            self.report.lines += 1;
            let hash = line_hash(&line);
            let problem = self.check_line(&line, &hash, n);
            if let Some(reason) = problem
                && self.report.first_error.is_none()
            {
                self.report.first_error = Some(ChainError {
                    file: name.to_owned(),
                    line: n,
                    reason,
                });
            }
            self.report.head_hash = hash.clone();
            let seq = parse(&line).map(|r| r.seq);
            if let Some(seq) = seq {
                self.report.head_seq = seq;
                if self.anchor_seq == Some(seq) {
                    self.seen_anchor = Some((seq, hash.clone(), name.to_owned(), n));
                }
            }
            self.prev = Some((hash, seq));
        }
        self.prev_file = Some(name.to_owned());
        Ok(())
    }

    /// The report; with `anchor = Some((seq, hash))` (the checkpoint the
    /// service anchored in its store), the log must hold that very line.
    pub fn finish(mut self, anchor: Option<(u64, String)>) -> VerifyReport {
        if let Some((seq, hash)) = anchor
            && self.report.first_error.is_none()
        {
            let problem = match &self.seen_anchor {
                Some((s, h, _, _)) if *s == seq && *h == hash => None,
                Some((_, _, file, line)) => Some((
                    file.clone(),
                    *line,
                    format!(
                        "seq {seq} is not the checkpoint the service anchored (hash {hash}): \
                         the log was rewritten"
                    ),
                )),
                None if self.report.head_seq < seq => Some((
                    self.prev_file.clone().unwrap_or_default(),
                    0,
                    format!(
                        "the log ends at seq {} but the service anchored a checkpoint at seq \
                         {seq}: seqs {}..{seq} were cut from the end (or a later file is \
                         missing)",
                        self.report.head_seq,
                        self.report.head_seq + 1
                    ),
                )),
                None => Some((
                    self.prev_file.clone().unwrap_or_default(),
                    0,
                    format!("the anchored checkpoint seq {seq} is not in these files"),
                )),
            };
            if let Some((file, line, reason)) = problem {
                self.report.first_error = Some(ChainError { file, line, reason });
            }
        }
        self.report
    }

    /// What is wrong with line `n` (hash `hash`) given the line before it.
    fn check_line(&mut self, line: &[u8], hash: &str, n: u64) -> Option<String> {
        let report = &mut self.report;
        if !line.ends_with(b"\n") {
            report.unsigned_tail += 1;
            return Some("it is incomplete (no newline at the end): a torn write".to_owned());
        }
        let Some(rec) = parse(line) else {
            report.unsigned_tail += 1;
            return Some("it is not an audit record".to_owned());
        };
        let mut problems = Vec::new();
        // Signed records: the signature, and the link to the signed one
        // before.
        let signed = is_signed_kind(&rec.rpc);
        let mut verified = false;
        if signed && let Some(key) = &self.key {
            if key.verify(&rec) {
                verified = true;
                if let (Some(cp), Some(last)) = (rec.checkpoint_prev.as_deref(), &self.last_signed)
                    && !cp.is_empty()
                    && cp != last
                {
                    problems.push(
                        "its checkpoint_prev is not the previous signed record: a signed \
                         record, or a whole rotated file, is missing"
                            .to_owned(),
                    );
                }
            } else {
                problems.push(format!(
                    "{} record whose signature does not verify under the audit public key: \
                     forged or altered",
                    rec.rpc
                ));
            }
        }
        if verified {
            self.last_signed = Some(hash.to_owned());
            report.last_signed_seq = Some(rec.seq);
            report.unsigned_tail = 0;
        } else {
            report.unsigned_tail += 1;
        }
        let Some((prev_hash, prev_seq)) = &self.prev else {
            report.first_seq = Some(rec.seq);
            report.first_prev = Some(rec.prev.clone());
            return (!problems.is_empty()).then(|| problems.join("; "));
        };
        let prev_ok = rec.prev == *prev_hash;
        if !prev_ok {
            if n == 1 {
                problems.push(format!(
                    "it does not continue {} (which ends at hash {prev_hash}): a rotated file \
                     between them is missing, or one was altered",
                    self.prev_file.as_deref().unwrap_or("the previous file")
                ));
            } else {
                problems.push(format!(
                    "its prev is not the hash of line {} (line {} was edited, or lines were \
                     removed, inserted or moved here)",
                    n - 1,
                    n - 1
                ));
            }
        }
        if let Some(p) = *prev_seq {
            if rec.seq <= p {
                problems.push(format!(
                    "its seq {} does not follow seq {p} (lines inserted, duplicated or reordered)",
                    rec.seq
                ));
            } else if rec.seq > p + 1 {
                // A jump only at a declared gap, signed when a key is given.
                let declared = (rec.rpc == RESYNC_RPC || rec.rpc == GAP_RPC)
                    && prev_ok
                    && (self.key.is_none() || verified);
                if declared {
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
}

fn parse(line: &[u8]) -> Option<AuditRecord> {
    let text = line.strip_suffix(b"\n")?;
    serde_json::from_slice(text).ok()
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
