//! Group commit with `fsync = always`: an append is answered only once the
//! fsync of its round has returned (and never if it failed), and a round
//! waits for announced appends only within its bound. The fsync is made
//! slow or failing with the sink's test hook, after the real one.

use std::{
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::{
    AuditConfig, AuditError, AuditLog, AuditRecord, Outcome, SinkConfig, sink::test_hooks,
};

fn rec(i: u64) -> AuditRecord {
    AuditRecord {
        kid: format!("k{i}"),
        ..AuditRecord::new("signet.v1.Signer/Sign", Outcome::Ok, "OK")
    }
}

async fn open(path: &std::path::Path, commit_wait: Duration) -> AuditLog {
    AuditLog::open(AuditConfig {
        timeout: Duration::from_secs(20),
        commit_wait,
        ..AuditConfig::new(vec![SinkConfig::file(path)])
    })
    .await
    .unwrap()
}

/// A gate the fsync hook waits at until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_append_is_answered_before_its_fsync_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let gate = Arc::new(Gate::default());
    // Rounds whose fsync (real one and hook) has returned.
    let synced = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(tokio::sync::Notify::new());
    {
        let (gate, synced, entered) = (gate.clone(), synced.clone(), entered.clone());
        test_hooks::on_sync(&path, move || {
            entered.notify_one();
            gate.wait();
            synced.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
    }
    let log = open(&path, Duration::from_millis(50)).await;
    // Announced appends (as the guard makes them), so the waiting path runs.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..8 {
        let (log, synced, done_tx) = (log.clone(), synced.clone(), done_tx.clone());
        let announced = log.announce();
        tokio::spawn(async move {
            drop(announced);
            let result = log.append(rec(i)).await;
            // Read at the moment of the answer: its round's fsync returned.
            let _ = done_tx.send((result.is_ok(), synced.load(Ordering::SeqCst)));
        });
    }
    drop(done_tx);
    tokio::time::timeout(Duration::from_secs(10), entered.notified())
        .await
        .expect("the first round reaches its fsync");
    // The fsync is held: nothing may be answered however long it takes.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), done_rx.recv())
            .await
            .is_err(),
        "an append was answered while its fsync had not returned"
    );
    gate.open();
    let mut answered = 0;
    while let Some((ok, synced_then)) = done_rx.recv().await {
        assert!(ok);
        assert!(synced_then >= 1, "answered before any fsync returned");
        answered += 1;
    }
    assert_eq!(answered, 8);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 8, "{text}");
    // The held fsync (300 ms at least) is in the rounds' write time that
    // `signet bench --audit` reports.
    let (rounds, _) = log.rounds();
    let total = log.mean_round_write() * u32::try_from(rounds).unwrap();
    assert!(
        total >= Duration::from_millis(299),
        "{total:?} over {rounds} rounds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_answers_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    test_hooks::on_sync(&path, || {
        Err(std::io::Error::other("injected fsync failure"))
    });
    let log = open(&path, Duration::from_millis(1)).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let log = log.clone();
        let announced = log.announce();
        tasks.push(tokio::spawn(async move {
            drop(announced);
            log.append(rec(i)).await
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(AuditError::Unavailable)));
    }
}

/// Appends `rec(1)` while another append is announced, then (once a round
/// that did not wait would have been written) that other one: both must
/// share one round. `log` has written one round, of `rec(0)`.
async fn an_announced_append_shares_the_round(log: &AuditLog) {
    assert_eq!(log.rounds(), (1, 1));
    let second = log.announce();
    // The first append is queued (its first poll sends it) while the
    // second is announced, so the round that takes it waits.
    let mut first = std::pin::pin!(log.append(rec(1)));
    assert!(futures::poll!(first.as_mut()).is_pending());
    // Time for the writer to take it alone (the only timing here: were the
    // writer slower, both would be drained together and the test would
    // pass without showing the wait; it cannot fail because of it).
    tokio::time::sleep(Duration::from_millis(50)).await;
    // As the guard does: the record is sent, then its announcement ends
    // (the other order leaves a moment where the writer sees nothing on
    // its way and writes alone).
    let mut third = std::pin::pin!(log.append(rec(2)));
    assert!(futures::poll!(third.as_mut()).is_pending());
    drop(second);
    let (first, third) = tokio::join!(first, third);
    first.unwrap();
    third.unwrap();
    assert_eq!(log.rounds(), (2, 3), "both appends in one round");
}

/// An append that arrives while a round waits for it shares that round's
/// fsync; without the wait it would start a round of its own (the first
/// append's 400 ms fsync would have begun).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_waits_for_an_announced_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    // A slow disk: every fsync takes 400 ms.
    test_hooks::on_sync(&path, || {
        std::thread::sleep(Duration::from_millis(400));
        Ok(())
    });
    let log = open(&path, Duration::from_secs(1)).await;
    log.append(rec(0)).await.unwrap();
    an_announced_append_shares_the_round(&log).await;
}

/// A fast disk is no reason to write at once: a round costs its hand-offs
/// between threads as well as its fsync, so it waits for an announced
/// append whatever the last write took (it once waited at most half of
/// that, and on a fast disk rounds stayed small under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_waits_for_an_announced_append_on_a_fast_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open(&path, Duration::from_secs(5)).await;
    log.append(rec(0)).await.unwrap();
    an_announced_append_shares_the_round(&log).await;
}

/// A round does not wait for an announcement that never becomes an
/// append longer than its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = open(&path, Duration::from_millis(5)).await;
    let _never = log.announce();
    let start = std::time::Instant::now();
    for i in 0..20 {
        log.append(rec(i)).await.unwrap();
    }
    assert_eq!(log.rounds(), (20, 20));
    // 20 rounds of at most 5 ms of waiting each (plus their writes).
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
