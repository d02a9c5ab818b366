//! Named fault points for the fault-injection tests.
//!
//! [`fault!`](crate::fault!) marks a step (key generation, sealing, a store
//! insert or commit, an audit write, a scheduler destroy, a rekey) where a
//! test can make the process fail. With the `fault-injection` feature the
//! points are the `fail` crate's, configured by the `FAIL_POINTS`
//! environment variable at start (`name=action;...`), or at any time by
//! writing the same syntax to the file named by `SIGNET_FAULTS_FILE` (polled;
//! `faults applied: ...` is printed on stderr once it is in force). Without
//! the feature every point expands to nothing and this module only holds
//! the names.
//!
//! Actions, in `fail`'s syntax (a count such as `1*` limits how often):
//! - `return`: the step fails with the error written at the point (each
//!   point's error is the one a real failure there gives: a store point an
//!   unavailable store, the seal point an unavailable KEK, and so on);
//! - `return(crash)`: the process aborts at once (SIGABRT: no destructor
//!   runs, no buffer is flushed, no transaction is committed), as a power
//!   cut or a kill would leave it;
//! - `off`: disabled.

/// Every fault point, in the order its steps run; the tests cover each.
pub const POINTS: &[&str] = &[
    "generate",
    "seal",
    "store-insert",
    "store-commit",
    "store-committed",
    "audit-write",
    "scheduler-destroy",
    "rekey-rewrap",
    "store-rekey-commit",
    "store-rekey-committed",
];

/// A fault point: `fault!("name")` returns `Err(Injected("name").into())`
/// from the enclosing function when the point is set to `return`, and
/// aborts the process when it is set to `return(crash)`. Without the
/// `fault-injection` feature it is nothing at all.
#[macro_export]
macro_rules! fault {
    ($name:literal) => {
        #[cfg(feature = "fault-injection")]
        ::fail::fail_point!($name, |arg: Option<String>| {
            $crate::fault::hit($name, arg.as_deref());
            Err($crate::fault::Injected($name).into())
        });
    };
}

/// The error a fault point injects, converted into the error a real failure
/// at that step gives.
#[derive(Clone, Copy, Debug)]
pub struct Injected(pub &'static str);

impl From<Injected> for crate::store::StoreError {
    fn from(i: Injected) -> Self {
        Self::Unavailable(format!("fault injected at {}", i.0))
    }
}

impl From<Injected> for std::io::Error {
    fn from(i: Injected) -> Self {
        std::io::Error::other(format!("fault injected at {}", i.0))
    }
}

impl From<Injected> for crate::Error {
    /// Key generation fails as a crypto error would; sealing and re-wrapping
    /// as an unreachable KEK; every other step as an unavailable store.
    fn from(i: Injected) -> Self {
        match i.0 {
            "generate" => Self::Crypto(crate::crypto::CryptoError),
            "seal" | "rekey-rewrap" => Self::Kek(crate::seal::KekError::Unavailable(format!(
                "fault injected at {}",
                i.0
            ))),
            _ => Self::Store(i.into()),
        }
    }
}

/// Called when a point fires: aborts for `crash`, else logs the injected
/// error (which the point then returns).
#[cfg(feature = "fault-injection")]
pub fn hit(name: &str, arg: Option<&str>) {
    if arg == Some("crash") {
        eprintln!("fault point {name}: crashing (abort)");
        std::process::abort();
    }
    tracing::warn!(point = name, "fault point: injected error");
}

/// Applies `FAIL_POINTS`, and follows `SIGNET_FAULTS_FILE` if set. (The
/// `fail` crate's own variable is `FAILPOINTS`; `FAIL_POINTS` is read here,
/// with the same syntax.)
#[cfg(feature = "fault-injection")]
pub fn setup() {
    if let Ok(text) = std::env::var("FAIL_POINTS") {
        apply(&text);
    }
    if let Some(path) = std::env::var_os("SIGNET_FAULTS_FILE") {
        let path = std::path::PathBuf::from(path);
        std::thread::spawn(move || follow(&path));
    }
}

/// Replaces every configured point with those of `text`
/// (`name=actions;...`); says on stderr what is in force.
#[cfg(feature = "fault-injection")]
fn apply(text: &str) {
    for (name, _) in fail::list() {
        fail::remove(name);
    }
    let mut ok = true;
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, actions)) = entry.split_once('=') else {
            eprintln!("faults: {entry:?} is not NAME=ACTIONS");
            ok = false;
            continue;
        };
        if let Err(e) = fail::cfg(name.trim(), actions.trim()) {
            eprintln!("faults: {entry:?}: {e}");
            ok = false;
        }
    }
    if ok {
        eprintln!("faults applied: {}", text.trim());
    }
}

/// Polls `path` and applies its content whenever it changes: a test arms a
/// point once the server is up, right before the step it means to break.
#[cfg(feature = "fault-injection")]
fn follow(path: &std::path::Path) {
    let mut applied: Option<String> = None;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && applied.as_deref() != Some(text.as_str())
        {
            apply(&text);
            applied = Some(text);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
