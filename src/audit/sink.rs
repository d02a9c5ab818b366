//! Audit sinks: their configuration and the thread that writes each one.
//!
//! Every sink has its own writer thread (see `writer.rs` for why). The
//! thread owns the sink's file handle and its chain head (the seq and hash
//! of the last line it wrote), computes each line's `prev` from that head,
//! and reports back after every job. It never decides whether a record
//! counts as written: the sequencer does, from these reports.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use super::{
    AuditError,
    checkpoint::{CheckpointSigner, is_signed_kind},
    record::{AuditRecord, line_hash},
};

/// Where audit lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    /// `file:PATH`: appended to, created with mode 0600, reopened by
    /// [`AuditLog::reopen`](super::AuditLog::reopen) after rotation.
    File(PathBuf),
    /// `stdout`: the process's standard output (for a log collector).
    Stdout,
}

impl FromStr for SinkSpec {
    type Err = AuditError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            _ if s == "stdout" => Ok(Self::Stdout),
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(path.into())),
            _ => Err(AuditError::Config(format!(
                "audit sink {s:?}: expected `file:PATH` or `stdout`"
            ))),
        }
    }
}

impl fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Stdout => f.write_str("stdout"),
        }
    }
}

/// When a file sink forces written lines to stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `always`: `fdatasync` before the append returns. A line whose RPC
    /// succeeded survives a power cut.
    Always,
    /// `never`: leave it to the OS; the line is in the page cache when the
    /// append returns (survives a crash of Signet, not of the host).
    Never,
    /// `interval:DURATION` (e.g. `interval:1s`): at most this long after a
    /// write, whether or not more lines follow.
    Interval(Duration),
}

impl FromStr for FsyncPolicy {
    type Err = AuditError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            AuditError::Config(format!(
                "audit fsync policy {s:?}: expected `always`, `never` or `interval:DURATION`"
            ))
        };
        match s {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => {
                let d = s.strip_prefix("interval:").ok_or_else(bad)?;
                let d = humantime::parse_duration(d).map_err(|_| bad())?;
                if d.is_zero() {
                    return Err(bad());
                }
                Ok(Self::Interval(d))
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Never => f.write_str("never"),
            Self::Interval(d) => write!(f, "interval:{}", humantime::format_duration(*d)),
        }
    }
}

/// One configured sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    /// Where the lines go.
    pub spec: SinkSpec,
    /// Whether an append needs this sink (see [`AuditLog`](super::AuditLog)
    /// for the exact rule).
    pub required: bool,
    /// When lines are forced to disk (file sinks only; ignored for stdout).
    pub fsync: FsyncPolicy,
}

impl SinkConfig {
    /// A required file sink that fsyncs every append: the default for the
    /// file auditors verify.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            spec: SinkSpec::File(path.into()),
            required: true,
            fsync: FsyncPolicy::Always,
        }
    }

    /// A best-effort stdout sink.
    pub fn stdout() -> Self {
        Self {
            spec: SinkSpec::Stdout,
            required: false,
            fsync: FsyncPolicy::Never,
        }
    }
}

/// The last line a sink holds: its seq and [`line_hash`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) hash: String,
}

/// Work for a sink thread.
pub(super) enum Job {
    /// Close the sink if open, open it again (a file: create it if missing,
    /// read back its last line, cut a torn tail). Answers the sink's head.
    Open,
    /// Append these records (seq and time set). `base` is the `prev` of the
    /// first line if the sink has no history of its own (a new file or
    /// stdout): it joins the log's chain there.
    Write {
        base: String,
        records: Arc<Vec<AuditRecord>>,
        /// Signs the checkpoint, resync and gap records among `records`;
        /// without it they are written unsigned (sealed service).
        signer: Option<Arc<CheckpointSigner>>,
    },
}

/// A sink thread's answer to job `job`: its head afterwards (`None`: no
/// history yet), or what failed.
pub(super) struct Done {
    pub(super) sink: usize,
    pub(super) job: u64,
    pub(super) result: Result<Option<Head>, String>,
}

/// The longest line read back from a file; a longer one is not ours.
const MAX_LINE: u64 = 1 << 20;

/// The state of one sink, owned by its thread.
pub(super) struct SinkWorker {
    pub(super) index: usize,
    pub(super) config: SinkConfig,
    out: Option<Output>,
    head: Option<Head>,
    /// Bytes written since the last fsync (interval policy).
    unsynced: bool,
    last_sync: Instant,
    /// A write to a stream failed part way: the next write starts a new
    /// line so the fragment stands alone (and `verify` reports it).
    torn: bool,
    /// The hash of the last signed record this sink holds, for the next
    /// one's `checkpoint_prev`.
    last_signed: Option<String>,
}

enum Output {
    /// A regular file: its tail is read back, and it is fsynced by policy.
    File(File),
    /// A FIFO or a device opened by path: written like stdout.
    Stream(File),
    Stdout,
}

impl SinkWorker {
    pub(super) fn new(index: usize, config: SinkConfig) -> Self {
        Self {
            index,
            config,
            out: None,
            head: None,
            unsynced: false,
            last_sync: Instant::now(),
            torn: false,
            last_signed: None,
        }
    }

    /// The thread body: one job at a time until the sequencer goes away.
    pub(super) fn run(mut self, jobs: mpsc::Receiver<(u64, Job)>, done: mpsc::Sender<Done>) {
        loop {
            let next = match (self.unsynced, self.config.fsync) {
                (true, FsyncPolicy::Interval(every)) => {
                    let wait = every.saturating_sub(self.last_sync.elapsed());
                    match jobs.recv_timeout(wait) {
                        Ok(job) => Some(job),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            self.sync_now();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => None,
                    }
                }
                _ => jobs.recv().ok(),
            };
            let Some((job, work)) = next else {
                self.sync_now();
                return;
            };
            let result = match work {
                Job::Open => self.open(),
                Job::Write {
                    base,
                    records,
                    signer,
                } => self.write(&base, &records, signer.as_deref()),
            };
            let result = result.map_err(|e| {
                // Whatever state the handle is in, the next use reopens it.
                self.out = None;
                e.to_string()
            });
            if done
                .send(Done {
                    sink: self.index,
                    job,
                    result,
                })
                .is_err()
            {
                self.sync_now();
                return;
            }
        }
    }

    fn open(&mut self) -> io::Result<Option<Head>> {
        self.sync_now();
        self.out = None;
        match self.config.spec.clone() {
            SinkSpec::Stdout => self.out = Some(Output::Stdout),
            SinkSpec::File(path) => {
                let file = open_append(&path, self.config.fsync == FsyncPolicy::Always)?;
                // A new or rotated (empty) file, or a device: keep the head we
                // have, so the chain continues across files.
                if let Some(head) = read_tail(&file, &path)? {
                    self.head = Some(head);
                    if let Some(signed) = last_signed_line(&path)? {
                        self.last_signed = Some(signed);
                    }
                }
                self.out = Some(if file.metadata()?.is_file() {
                    Output::File(file)
                } else {
                    Output::Stream(file)
                });
            }
        }
        Ok(self.head.clone())
    }

    fn write(
        &mut self,
        base: &str,
        records: &[AuditRecord],
        signer: Option<&CheckpointSigner>,
    ) -> io::Result<Option<Head>> {
        let mut prev = self.head.as_ref().map_or(base, |h| &h.hash).to_owned();
        let mut buf = Vec::with_capacity(records.len() * 600 + 1);
        if self.torn {
            buf.push(b'\n');
        }
        let mut last = None;
        let mut last_signed = self.last_signed.clone();
        for rec in records {
            let start = buf.len();
            match signer {
                Some(signer) if is_signed_kind(&rec.rpc) => {
                    let mut rec = AuditRecord {
                        prev,
                        checkpoint_prev: Some(last_signed.clone().unwrap_or_default()),
                        ..rec.clone()
                    };
                    rec.sig = Some(signer.sign(&rec));
                    rec.write_line(&rec.prev, &mut buf)
                        .map_err(io::Error::other)?;
                    prev = line_hash(&buf[start..]);
                    last_signed = Some(prev.clone());
                }
                // Every other line is written from the shared record as it
                // is, with this sink's `prev`.
                _ => {
                    rec.write_line(&prev, &mut buf).map_err(io::Error::other)?;
                    prev = line_hash(&buf[start..]);
                }
            }
            last = Some(rec.seq);
        }
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("sink is not open"))?;
        match out {
            Output::Stdout => write_stream(&mut io::stdout().lock(), &buf, &mut self.torn)?,
            Output::Stream(stream) => write_stream(stream, &buf, &mut self.torn)?,
            Output::File(file) => {
                crate::fault!("audit-write");
                file.write_all(&buf)?;
                match self.config.fsync {
                    FsyncPolicy::Always => sync_data(file, &self.config.spec)?,
                    FsyncPolicy::Never => {}
                    FsyncPolicy::Interval(every) => {
                        self.unsynced = true;
                        if self.last_sync.elapsed() >= every {
                            self.sync_now();
                        }
                    }
                }
            }
        }
        if let Some(seq) = last {
            self.head = Some(Head { seq, hash: prev });
        }
        self.last_signed = last_signed;
        Ok(self.head.clone())
    }

    fn sync_now(&mut self) {
        if let Some(Output::File(file)) = &self.out
            && self.unsynced
            && let Err(e) = file.sync_data()
        {
            tracing::warn!(sink = %self.config.spec, error = %e, "audit sink fsync failed");
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
    }
}

/// `fdatasync`s a file sink's lines. In unit tests a hook registered for
/// the sink's path runs once the real fsync has returned, to make it slow
/// or fail.
fn sync_data(file: &File, spec: &SinkSpec) -> io::Result<()> {
    file.sync_data()?;
    #[cfg(test)]
    if let SinkSpec::File(path) = spec {
        test_hooks::after_sync(path)?;
    }
    #[cfg(not(test))]
    let _ = spec;
    Ok(())
}

/// Hooks run after a file sink's fsync, per path (unit tests only).
#[cfg(test)]
pub(crate) mod test_hooks {
    use std::{
        collections::HashMap,
        io,
        path::{Path, PathBuf},
        sync::{Arc, Mutex},
    };

    type Hook = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

    static HOOKS: Mutex<Option<HashMap<PathBuf, Hook>>> = Mutex::new(None);

    /// Runs `hook` after every fsync of the file sink at `path`; its error
    /// is the fsync's.
    pub(crate) fn on_sync(path: &Path, hook: impl Fn() -> io::Result<()> + Send + Sync + 'static) {
        HOOKS
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(path.to_owned(), Arc::new(hook));
    }

    pub(super) fn after_sync(path: &Path) -> io::Result<()> {
        let hook = HOOKS
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|h| h.get(path).cloned());
        hook.map_or(Ok(()), |hook| hook())
    }
}

/// Writes to a stream nobody can read back or cut. `torn` is set if the
/// write stopped part way, so the next write starts a new line.
fn write_stream(w: &mut impl Write, buf: &[u8], torn: &mut bool) -> io::Result<()> {
    let mut written = 0;
    let result = write_counting(w, buf, &mut written).and_then(|()| w.flush());
    // Nothing written: whatever was torn before still is.
    if written > 0 {
        *torn = result.is_err();
    }
    result
}

fn write_counting(w: &mut impl Write, mut buf: &[u8], written: &mut usize) -> io::Result<()> {
    while !buf.is_empty() {
        match w.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                *written += n;
                buf = &buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens `path` for appending, creating it with mode 0600.
///
/// Write-only on purpose: opening a FIFO for writing blocks until it has a
/// reader (read-write would not block, and would fill a pipe nobody reads),
/// which is why this runs on the sink's thread, under the sequencer's
/// timeout.
fn open_append(path: &Path, sync_dir: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).mode(0o600);
    match options.clone().create_new(true).open(path) {
        Ok(file) => {
            // The new name must survive a power cut as well as the lines.
            if sync_dir && let Some(dir) = path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                File::open(dir)?.sync_all()?;
            }
            Ok(file)
        }
        // It exists, or it is a symlink (an exclusive create never follows
        // one): open what is there, creating a symlink's missing target.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => options.create(true).open(path),
        Err(e) => Err(e),
    }
}

/// The last complete line of a regular file as a [`Head`]; `None` for an
/// empty file or one that is not a regular file (a device, a FIFO).
///
/// A torn tail (bytes after the last newline, left by a crash or a failed
/// write) is cut off, with a warning: it was never acknowledged, because an
/// append returns only after its whole write succeeded, so no RPC that
/// succeeded loses its line. Keeping it would break the chain for every
/// later line. A last complete line that is not an audit record is an
/// error: the file was edited or is not an audit log, and an operator has to
/// look (`signet audit verify`) before anything is appended to it.
pub(super) fn read_tail(writer: &File, path: &Path) -> io::Result<Option<Head>> {
    let meta = writer.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let mut len = meta.len();
    if len == 0 {
        return Ok(None);
    }
    // `writer` is write-only: read through a second handle to the same file.
    let reader = File::open(path)?;
    let same = reader.metadata()?;
    if (same.dev(), same.ino()) != (meta.dev(), meta.ino()) {
        return Err(io::Error::other(format!(
            "audit file {} was replaced while being opened",
            path.display()
        )));
    }
    let mut last = [0u8; 1];
    reader.read_exact_at(&mut last, len - 1)?;
    if last[0] != b'\n' {
        let keep = last_newline(&reader, len)?.map_or(0, |p| p + 1);
        tracing::warn!(
            path = %path.display(),
            bytes = len - keep,
            "audit file ends in a torn (incomplete) line; cutting it off"
        );
        writer.set_len(keep)?;
        writer.sync_all()?;
        len = keep;
        if len == 0 {
            return Ok(None);
        }
    }
    let start = last_newline(&reader, len - 1)?.map_or(0, |p| p + 1);
    let size = len - start;
    if size > MAX_LINE {
        return Err(invalid(
            path,
            "its last line is too long to be an audit record",
        ));
    }
    let mut line = vec![0u8; usize::try_from(size).map_err(io::Error::other)?];
    reader.read_exact_at(&mut line, start)?;
    let text = line.strip_suffix(b"\n").unwrap_or(&line);
    let rec: AuditRecord = serde_json::from_slice(text)
        .map_err(|_| invalid(path, "its last line is not an audit record"))?;
    Ok(Some(Head {
        seq: rec.seq,
        hash: line_hash(&line),
    }))
}

/// How far back from the end of a file the last signed record is looked
/// for: with a checkpoint at least every 1,000 records, it is within about
/// 600 KiB unless the service sat sealed (nothing signed) for long.
const SIGNED_WINDOW: u64 = 16 << 20;

/// The hash of the last signed record (checkpoint, resync, gap) in the
/// last [`SIGNED_WINDOW`] bytes of the file at `path`, if any.
fn last_signed_line(path: &Path) -> io::Result<Option<String>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(SIGNED_WINDOW);
    let mut buf = vec![0u8; usize::try_from(len - start).map_err(io::Error::other)?];
    file.read_exact_at(&mut buf, start)?;
    // From the window's first line boundary on (the first may be partial).
    let from = if start == 0 {
        0
    } else {
        buf.iter()
            .position(|b| *b == b'\n')
            .map_or(buf.len(), |i| i + 1)
    };
    let lines = buf[from..].split_inclusive(|b| *b == b'\n');
    Ok(lines
        .rev()
        .filter(|line| line.ends_with(b"\n") && line.windows(7).any(|w| w == b"\"sig\":\""))
        .find(|line| {
            serde_json::from_slice::<AuditRecord>(&line[..line.len() - 1])
                .is_ok_and(|r| is_signed_kind(&r.rpc) && r.sig.is_some())
        })
        .map(line_hash))
}

fn invalid(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "audit file {}: {what}; run `signet audit verify` on it and move it aside",
            path.display()
        ),
    )
}

/// The offset of the last `\n` before `end`, reading backwards in chunks.
fn last_newline(file: &File, end: u64) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 8192;
    let mut buf = vec![0u8; 8192];
    let mut hi = end;
    while hi > 0 {
        let lo = hi.saturating_sub(CHUNK);
        let chunk = &mut buf[..usize::try_from(hi - lo).map_err(io::Error::other)?];
        file.read_exact_at(chunk, lo)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::audit::{Outcome, record::GENESIS_PREV};

    fn line(seq: u64, prev: &str) -> Vec<u8> {
        AuditRecord {
            seq,
            prev: prev.into(),
            ..AuditRecord::new("t", Outcome::Ok, "OK")
        }
        .to_line()
        .unwrap()
    }

    #[test]
    fn specs_parse_and_print() {
        for s in ["stdout", "file:/var/log/signet/audit.log"] {
            assert_eq!(s.parse::<SinkSpec>().unwrap().to_string(), s);
        }
        for s in ["file:", "syslog", ""] {
            assert!(s.parse::<SinkSpec>().is_err(), "{s}");
        }
        for s in ["always", "never", "interval:1s", "interval:250ms"] {
            assert_eq!(s.parse::<FsyncPolicy>().unwrap().to_string(), s);
        }
        for s in ["sometimes", "interval:", "interval:0s"] {
            assert!(s.parse::<FsyncPolicy>().is_err(), "{s}");
        }
    }

    #[test]
    fn tail_of_empty_and_complete_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let file = open_append(&path, true).unwrap();
        let mode = file.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_tail(&file, &path).unwrap(), None);

        let l1 = line(1, GENESIS_PREV);
        let l2 = line(2, &line_hash(&l1));
        std::fs::write(&path, [l1, l2.clone()].concat()).unwrap();
        let head = read_tail(&file, &path).unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                seq: 2,
                hash: line_hash(&l2)
            }
        );
    }

    #[test]
    fn torn_tail_is_cut_and_garbage_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let l1 = line(1, GENESIS_PREV);
        let torn = &line(2, &line_hash(&l1))[..40];
        std::fs::write(&path, [&l1[..], torn].concat()).unwrap();
        let file = open_append(&path, false).unwrap();
        let head = read_tail(&file, &path).unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                seq: 1,
                hash: line_hash(&l1)
            }
        );
        assert_eq!(std::fs::read(&path).unwrap(), l1, "torn bytes cut off");

        // Only a torn line: the file becomes empty.
        std::fs::write(&path, torn).unwrap();
        assert_eq!(read_tail(&file, &path).unwrap(), None);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);

        std::fs::write(&path, [&l1[..], b"not json\n"].concat()).unwrap();
        let e = read_tail(&file, &path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("not an audit record"), "{e}");
    }

    #[test]
    fn long_lines_are_found_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let big = AuditRecord {
            seq: 9,
            reason: Some("x".repeat(20_000)),
            ..AuditRecord::new("t", Outcome::Ok, "OK")
        }
        .to_line()
        .unwrap();
        std::fs::write(&path, [line(8, GENESIS_PREV), big.clone()].concat()).unwrap();
        let file = open_append(&path, false).unwrap();
        let head = read_tail(&file, &path).unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                seq: 9,
                hash: line_hash(&big)
            }
        );
    }
}
