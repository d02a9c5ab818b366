//! Key timelines and the states derived from them.
//!
//! A key stores when things happen to it, never a mutable state: its state
//! at any instant is [`Timeline::state_at`], a pure function. Every replica
//! that reads the same records computes the same states and the same JWKS.

use serde::{Deserialize, Serialize};

use super::Policy;
use crate::clock::UnixTime;

/// When each lifecycle step of a key happens (or happened).
///
/// `created_at <= publish_at <= activate_at <= retire_at <= remove_at`.
/// `retire_at` and `remove_at` stay unset until a successor exists, so a key
/// can never stop signing before another key is ready to take over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// The key was generated.
    pub created_at: UnixTime,
    /// The key enters the JWKS.
    pub publish_at: UnixTime,
    /// The key starts signing.
    pub activate_at: UnixTime,
    /// The key stops signing: its successor's `activate_at`.
    pub retire_at: Option<UnixTime>,
    /// The key leaves the JWKS and its material may be destroyed.
    pub remove_at: Option<UnixTime>,
    /// An operator revoked the key: out of the JWKS from this instant.
    pub revoked_at: Option<UnixTime>,
}

/// Where a key is in its life at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Generated, not yet published.
    Pending,
    /// In the JWKS, not yet signing.
    Published,
    /// Signs new tokens; in the JWKS.
    Active,
    /// No longer signs; in the JWKS until its tokens have expired.
    Retiring,
    /// Out of the JWKS after its grace period.
    Removed,
    /// Withdrawn early by an operator.
    Revoked,
}

impl KeyState {
    /// Whether keys in this state belong in the JWKS.
    pub fn is_published(self) -> bool {
        matches!(
            self,
            KeyState::Published | KeyState::Active | KeyState::Retiring
        )
    }

    /// Lower-case name for tables and logs.
    pub fn name(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Published => "published",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Removed => "removed",
            KeyState::Revoked => "revoked",
        }
    }
}

impl Timeline {
    /// A key that is published and signs from `now` on: a ring's first key,
    /// or the successor in an immediate rotation.
    pub fn immediate(now: UnixTime) -> Self {
        Self {
            created_at: now,
            publish_at: now,
            activate_at: now,
            retire_at: None,
            remove_at: None,
            revoked_at: None,
        }
    }

    /// The key's state at `now`. Later steps win: a key past `remove_at` is
    /// Removed even if `retire_at` also passed; revocation overrides all.
    pub fn state_at(&self, now: UnixTime) -> KeyState {
        let reached = |t: Option<UnixTime>| t.is_some_and(|t| t <= now);
        if reached(self.revoked_at) {
            KeyState::Revoked
        } else if reached(self.remove_at) {
            KeyState::Removed
        } else if reached(self.retire_at) {
            KeyState::Retiring
        } else if self.activate_at <= now {
            KeyState::Active
        } else if self.publish_at <= now {
            KeyState::Published
        } else {
            KeyState::Pending
        }
    }

    /// Whether the timestamps are in lifecycle order.
    pub fn is_ordered(&self) -> bool {
        let mut last = self.created_at;
        let steps = [
            Some(self.publish_at),
            Some(self.activate_at),
            self.retire_at,
            self.remove_at,
        ];
        for t in steps.into_iter().flatten() {
            if t < last {
                return false;
            }
            last = t;
        }
        // A removal time without a retirement time would skip Retiring.
        !(self.remove_at.is_some() && self.retire_at.is_none())
    }
}

/// The timelines the scheduler gives a ring under `policy`, starting from
/// the open-ended key `first`, for every successor published up to `until`.
///
/// The same arithmetic as the scheduler, ticking exactly on time: a
/// successor is published at `activate_at + rotation_period - publish_lead`
/// and signs `publish_lead` later; its predecessor retires at that instant
/// and leaves the JWKS `grace` after. The last timeline stays open-ended.
pub fn project(first: Timeline, policy: &Policy, until: UnixTime) -> Vec<Timeline> {
    let mut out = Vec::new();
    let mut cur = first;
    loop {
        let publish = cur
            .activate_at
            .saturating_add(policy.rotation_period)
            .saturating_sub(policy.publish_lead);
        if publish > until || out.len() > 10_000 {
            break;
        }
        let activate = publish.saturating_add(policy.publish_lead);
        cur.retire_at = Some(activate);
        cur.remove_at = Some(activate.saturating_add(policy.grace));
        out.push(cur);
        cur = Timeline {
            activate_at: activate,
            ..Timeline::immediate(publish)
        };
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> UnixTime {
        UnixTime::from_secs(s)
    }

    #[test]
    fn walks_every_state_in_order() {
        let tl = Timeline {
            created_at: t(0),
            publish_at: t(10),
            activate_at: t(20),
            retire_at: Some(t(30)),
            remove_at: Some(t(40)),
            revoked_at: None,
        };
        assert!(tl.is_ordered());
        let seen: Vec<_> = [0, 9, 10, 19, 20, 29, 30, 39, 40, 1000]
            .into_iter()
            .map(|s| tl.state_at(t(s)))
            .collect();
        use KeyState::*;
        assert_eq!(
            seen,
            [
                Pending, Pending, Published, Published, Active, Active, Retiring, Retiring,
                Removed, Removed
            ]
        );
    }

    #[test]
    fn open_ended_key_stays_active() {
        let tl = Timeline::immediate(t(5));
        assert_eq!(tl.state_at(t(5)), KeyState::Active);
        assert_eq!(tl.state_at(t(i64::MAX)), KeyState::Active);
        assert_eq!(tl.state_at(t(4)), KeyState::Pending);
    }

    #[test]
    fn revocation_overrides() {
        let tl = Timeline {
            revoked_at: Some(t(7)),
            ..Timeline::immediate(t(5))
        };
        assert_eq!(tl.state_at(t(6)), KeyState::Active);
        assert_eq!(tl.state_at(t(7)), KeyState::Revoked);
        assert!(!KeyState::Revoked.is_published());
    }

    #[test]
    fn unordered_timelines_detected() {
        let mut tl = Timeline::immediate(t(5));
        tl.remove_at = Some(t(9));
        assert!(!tl.is_ordered(), "remove without retire");
        tl.retire_at = Some(t(10));
        assert!(!tl.is_ordered(), "remove before retire");
    }
}

#[cfg(test)]
mod project_tests {
    use super::*;

    /// The practice's example: generate and publish on day 0 (of the new
    /// key's life), sign 6 days later, old key gone 7 days after that.
    #[test]
    fn defaults_follow_the_practice_example() {
        let day = 86_400;
        let p = Policy::default();
        let first = Timeline::immediate(UnixTime::from_secs(0));
        let tls = project(first, &p, UnixTime::from_secs(200 * day));
        assert_eq!(
            tls.len(),
            3,
            "key 1, and successors published on days 84 and 174"
        );
        let (k1, k2, k3) = (tls[0], tls[1], tls[2]);
        assert_eq!(k2.publish_at.as_secs(), 84 * day);
        assert_eq!(
            k2.activate_at.as_secs(),
            90 * day,
            "signs 6 days after publication"
        );
        assert_eq!(k1.retire_at, Some(k2.activate_at));
        assert_eq!(
            k1.remove_at.map(UnixTime::as_secs),
            Some(97 * day),
            "removed 7 days later"
        );
        assert_eq!(k3.publish_at.as_secs(), 174 * day);
        assert_eq!(k3.retire_at, None, "the last key is open-ended");
        for w in tls.windows(2) {
            assert!(w[0].is_ordered() && w[1].is_ordered());
        }
    }
}
