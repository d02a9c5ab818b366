//! Time, injected.
//!
//! Every decision that depends on time takes it from a [`Clock`] (or as a
//! `now` argument), so tests can run years of key rotations or token
//! lifetimes in milliseconds ([`ManualClock`]), and every Signet replica
//! computes the same key states from the same records.

use std::{
    fmt,
    sync::atomic::{AtomicI64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A point in time as whole seconds since the Unix epoch, the unit of JWT
/// NumericDate claims and of every key timeline.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct UnixTime(i64);

impl UnixTime {
    /// Wraps a number of seconds since the epoch.
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs)
    }

    /// Seconds since the epoch.
    pub const fn as_secs(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating at the end of representable time.
    pub fn saturating_add(self, d: Duration) -> Self {
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(secs))
    }

    /// `self - d`, saturating at the start of representable time.
    pub fn saturating_sub(self, d: Duration) -> Self {
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(secs))
    }
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RFC 3339 has four-digit years: instants before 1970 or after
        // 9999-12-31T23:59:59Z print as seconds (`@N`), never a panic.
        const LAST_RFC3339: i64 = 253_402_300_799;
        let t = u64::try_from(self.0)
            .ok()
            .filter(|_| self.0 <= LAST_RFC3339)
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)));
        match t {
            Some(t) => write!(f, "{}", humantime::format_rfc3339_seconds(t)),
            None => write!(f, "@{}", self.0),
        }
    }
}

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> UnixTime;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        // A system clock set before 1970 is a broken host; treat it as the epoch
        // rather than panicking on the signing path.
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        UnixTime(i64::try_from(secs).unwrap_or(i64::MAX))
    }
}

/// A clock that only moves when told to. For tests and simulations.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: UnixTime) -> Self {
        Self(AtomicI64::new(start.0))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        self.0.fetch_add(secs, Ordering::SeqCst);
    }

    /// Sets the clock to `t`, forward or back.
    pub fn set(&self, t: UnixTime) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        UnixTime(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_instant_displays() {
        assert_eq!(
            UnixTime::from_secs(253_402_300_799).to_string(),
            "9999-12-31T23:59:59Z"
        );
        assert_eq!(
            UnixTime::from_secs(253_402_300_800).to_string(),
            "@253402300800"
        );
        assert_eq!(
            UnixTime::from_secs(i64::MAX).to_string(),
            format!("@{}", i64::MAX)
        );
        assert_eq!(UnixTime::from_secs(-1).to_string(), "@-1");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(UnixTime::from_secs(1_000));
        assert_eq!(c.now().as_secs(), 1_000);
        c.advance(Duration::from_secs(60));
        assert_eq!(c.now().as_secs(), 1_060);
        c.set(UnixTime::from_secs(5));
        assert_eq!(c.now().as_secs(), 5);
    }

    #[test]
    fn displays_rfc3339() {
        assert_eq!(
            UnixTime::from_secs(86_400).to_string(),
            "1970-01-02T00:00:00Z"
        );
    }
}
