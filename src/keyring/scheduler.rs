//! The scheduler task: ticks the key manager at start and then at a fixed
//! interval, until shutdown. It only writes timelines (successors, destroyed
//! material); states follow from the clock.

use std::{future::Future, time::Duration};

use super::KeyManager;

/// Default time between scheduler ticks.
pub const DEFAULT_TICK: Duration = Duration::from_secs(30);

/// Runs [`KeyManager::tick`] now and every `every` until `shutdown`
/// completes. Failures are logged (and retried next tick), never fatal.
pub async fn run(keys: KeyManager, every: Duration, shutdown: impl Future<Output = ()>) {
    let mut interval = tokio::time::interval(every);
    // After a stall (suspend, long GC in a VM), tick once, not in a burst.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = interval.tick() => {}
        }
        let report = keys.tick().await;
        for (ring, kid) in &report.generated {
            tracing::debug!(%ring, %kid, "scheduler generated a successor");
        }
        if !report.failed.is_empty() {
            tracing::warn!(
                failed = report.failed.len(),
                "scheduler pass had failures; retrying next tick"
            );
        }
    }
}
