//! Replays the committed fuzz corpora (`fuzz/corpus/TARGET/*`) and the
//! inputs that once crashed a target (`fuzz/regressions/TARGET/*`) through
//! the fuzz targets, in the normal test build: every input must return
//! normally. `scripts/fuzz` grows the corpora with libFuzzer.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

use std::path::Path;

/// Runs every file under `fuzz/KIND/TARGET/` through its target; returns
/// how many inputs ran.
fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind);
    let mut ran = 0;
    let mut failed = Vec::new();
    for (name, target) in targets::TARGETS {
        let Ok(dir) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        let mut files: Vec<_> = dir.map(|e| e.unwrap().path()).collect();
        files.sort();
        for path in files {
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                failed.push(path.display().to_string());
            }
            ran += 1;
        }
    }
    assert!(failed.is_empty(), "inputs that panic: {failed:#?}");
    ran
}

#[test]
fn fuzz_corpora_replay_without_a_panic() {
    let ran = replay("corpus");
    // Every target has a committed corpus.
    for (name, _) in targets::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name);
        assert!(
            std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()),
            "no corpus for fuzz target {name}"
        );
    }
    assert!(ran > 0);
}

#[test]
fn inputs_that_once_crashed_a_fuzz_target_pass() {
    replay("regressions");
}
