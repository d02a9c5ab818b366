//! Property test of the rotation lifecycle: random valid policies and random
//! sequences of events (ticks, scheduled and immediate rotations,
//! revocations, restarts, policy changes, clock jumps) across two simulated
//! years. After every step DESIGN.md's invariants 1, 2, 3 and 5 hold, and
//! every token signed verifies against the JWKS until it expires unless its
//! key was revoked.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use proptest::prelude::*;
use signet::{
    clock::{ManualClock, UnixTime},
    crypto::{Algorithm, KeySpec, Kid},
    keyring::{KeyManager, KeyState, Policy, SignParams},
    seal::{EphemeralKek, KekProvider},
    store::{KeyStore, MemoryStore},
};

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
const TWO_YEARS: u64 = 730 * DAY;

#[derive(Clone, Debug)]
enum Event {
    /// Let time pass; the scheduler ticks along the way.
    Advance(u64),
    Rotate,
    RotateNow,
    /// Revoke the n-th key (modulo the ring's size).
    Revoke(usize),
    Restart,
    SetPolicy(Policy),
    /// The service clock jumps forward (not a tick-by-tick passage).
    JumpForward(u64),
    /// The service clock is set back by up to a day.
    JumpBack(u64),
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        2 * DAY..=120 * DAY, // rotation_period
        5 * 60..=2 * HOUR,   // max_token_ttl
        5 * 60..=2 * HOUR,   // jwks_max_age
        0u64..=120,          // clock_skew
        0u64..=10 * DAY,     // extra grace
        0u64..=3 * DAY,      // extra lead
        1u64..=100,          // default ttl as % of max
    )
        .prop_map(
            |(rotation, max_ttl, max_age, skew, extra_grace, extra_lead, pct)| {
                let lead = max_age + skew + extra_lead;
                Policy {
                    rotation_period: Duration::from_secs(rotation.max(lead + HOUR)),
                    publish_lead: Duration::from_secs(lead),
                    grace: Duration::from_secs(max_ttl + max_age + skew + extra_grace),
                    max_token_ttl: Duration::from_secs(max_ttl),
                    default_token_ttl: Duration::from_secs((max_ttl * pct / 100).max(1)),
                    jwks_max_age: Duration::from_secs(max_age),
                    clock_skew: Duration::from_secs(skew),
                    issuer: None,
                }
            },
        )
        .prop_filter("valid", |p| p.validate().is_ok())
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        8 => (HOUR..=40 * DAY).prop_map(Event::Advance),
        2 => Just(Event::Rotate),
        1 => Just(Event::RotateNow),
        1 => (0usize..8).prop_map(Event::Revoke),
        1 => Just(Event::Restart),
        1 => policy().prop_map(Event::SetPolicy),
        1 => (DAY..=365 * DAY).prop_map(Event::JumpForward),
        1 => (60u64..=DAY).prop_map(Event::JumpBack),
    ]
}

struct Token {
    kid: Kid,
    iat: i64,
    exp: i64,
}

struct Model {
    clock: Arc<ManualClock>,
    store: Arc<dyn KeyStore>,
    kek: Arc<dyn KekProvider>,
    keys: KeyManager,
    /// Highest service time seen: invariant 2 is judged there (a clock set
    /// back shows verifiers' real time wrongly, not time itself).
    high_water: i64,
    tokens: Vec<Token>,
    /// Kids seen, with the publish_lead in force when they appeared, and
    /// whether they came from an emergency (immediate) action.
    kids: HashMap<Kid, (Duration, bool)>,
    destroyed: HashSet<Kid>,
    policy: Policy,
}

impl Model {
    fn now(&self) -> i64 {
        self.clock.now_secs()
    }

    fn ring(&self) -> Arc<signet::keyring::Ring> {
        self.keys.ring("p", "ring").unwrap()
    }

    /// Records kids that appeared since the last call.
    fn note_new_kids(&mut self, emergency: bool) {
        for k in &self.ring().record().keys {
            self.kids
                .entry(k.kid.clone())
                .or_insert((self.policy.publish_lead, emergency));
        }
    }

    async fn tick(&mut self) {
        let report = self.keys.tick().await;
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        self.note_new_kids(false);
        self.check();
    }

    async fn sign(&mut self) {
        let now = self.now();
        let signed = self
            .keys
            .sign(SignParams {
                ring: "p",
                claims_json: b"{}",
                ttl: None,
                header_json: b"",
                grant: None,
            })
            .await;
        let signed = match signed {
            Ok(s) => s,
            // Only after a clock was set back below every live key.
            Err(e) if now < self.high_water => {
                assert!(matches!(e, signet::Error::NoActiveKey(_)), "{e}");
                return;
            }
            Err(e) => panic!("sign failed at the high-water mark: {e}"),
        };
        // Invariant 1: publish before sign, unless an emergency key.
        let ring = self.ring();
        let key = ring
            .record()
            .keys
            .iter()
            .find(|k| k.kid == signed.kid)
            .unwrap();
        let (lead, emergency) = self.kids[&signed.kid];
        assert!(
            key.timeline.activate_at.as_secs() <= now,
            "signed by a key not yet active"
        );
        if !emergency {
            assert!(
                now - key.timeline.publish_at.as_secs() >= i64::try_from(lead.as_secs()).unwrap(),
                "invariant 1: key {} signed {}s after publication, lead {:?}",
                signed.kid,
                now - key.timeline.publish_at.as_secs(),
                lead
            );
        }
        // The token verifies against the JWKS it was signed under.
        let (set, _) = self.keys.jwks("p", "ring").unwrap();
        assert!(
            set.keys.iter().any(|j| j.kid == signed.kid.as_str()),
            "signing key not published"
        );
        self.tokens.push(Token {
            kid: signed.kid,
            iat: now,
            exp: signed.expires_at.as_secs(),
        });
    }

    fn check(&mut self) {
        let now = self.now();
        let at = UnixTime::from_secs(now);
        let ring = self.ring();
        let keys = &ring.record().keys;
        let (set, _) = self.keys.jwks("p", "ring").unwrap();
        let published: HashSet<&str> = set.keys.iter().map(|j| j.kid.as_str()).collect();

        // Invariant 5: a kid is unique forever.
        let unique: HashSet<&Kid> = keys.iter().map(|k| &k.kid).collect();
        assert_eq!(unique.len(), keys.len(), "invariant 5: a kid repeats");

        // Destroyed material never comes back, and never in the JWKS.
        for k in keys {
            if k.sealed.is_none() {
                self.destroyed.insert(k.kid.clone());
            } else {
                assert!(
                    !self.destroyed.contains(&k.kid),
                    "destroyed key {} revived",
                    k.kid
                );
            }
        }
        for kid in &self.destroyed {
            assert!(
                !published.contains(kid.as_str()),
                "destroyed key {kid} published"
            );
        }

        // Invariant 3: at most one Active key; exactly one, and published,
        // at the high-water mark.
        let active: Vec<_> = keys
            .iter()
            .filter(|k| k.sealed.is_some() && k.timeline.state_at(at) == KeyState::Active)
            .collect();
        assert!(
            active.len() <= 1,
            "invariant 3: {} active keys",
            active.len()
        );
        if now >= self.high_water {
            assert_eq!(active.len(), 1, "invariant 3: no active key at {at}");
            assert!(
                published.contains(active[0].kid.as_str()),
                "invariant 3: active key not published"
            );

            // Invariant 2: every unexpired token of an unrevoked key verifies.
            for t in &self.tokens {
                let revoked = keys
                    .iter()
                    .find(|k| k.kid == t.kid)
                    .is_some_and(|k| k.timeline.revoked_at.is_some());
                if t.iat <= now && now < t.exp && !revoked {
                    assert!(
                        published.contains(t.kid.as_str()),
                        "invariant 2: token of {} (exp in {}s) no longer verifies",
                        t.kid,
                        t.exp - now
                    );
                }
            }
        }
    }

    async fn advance(&mut self, secs: u64) {
        // The real scheduler ticks every 30 s; tick at least four times per
        // publish lead so no deadline is overslept by much.
        let step = (self.policy.publish_lead.as_secs() / 4).clamp(60, 6 * HOUR);
        let mut left = secs;
        while left > 0 {
            let d = left.min(step);
            self.clock.advance(Duration::from_secs(d));
            left -= d;
            self.high_water = self.high_water.max(self.now());
            self.tick().await;
        }
    }

    async fn apply(&mut self, e: &Event) {
        match e {
            Event::Advance(s) => self.advance(*s).await,
            Event::Rotate => {
                if self.now() >= self.high_water {
                    self.keys.rotate("p", false, "prop", None).await.unwrap();
                    self.note_new_kids(false);
                }
            }
            Event::RotateNow => {
                if self.now() >= self.high_water {
                    let (new, _) = self.keys.rotate("p", true, "prop", None).await.unwrap();
                    let promoted = self.kids.contains_key(&new.kid);
                    self.note_new_kids(true);
                    if promoted {
                        // A promoted successor signs before publish_lead, but
                        // only once every verifier's cached set holds it.
                        let settled = self.policy.jwks_max_age + self.policy.clock_skew;
                        self.kids.insert(new.kid.clone(), (settled, false));
                    }
                }
            }
            Event::Revoke(n) => {
                let ring = self.ring();
                let keys = &ring.record().keys;
                let k = &keys[n % keys.len()];
                if k.sealed.is_some() && self.now() >= self.high_water {
                    self.keys.revoke("p", k.kid.as_str(), "prop").await.unwrap();
                    self.note_new_kids(true);
                }
            }
            Event::Restart => {
                self.keys =
                    KeyManager::open(self.store.clone(), self.clock.clone(), self.kek.clone())
                        .await
                        .unwrap();
                self.keys.unseal().await.unwrap();
            }
            Event::SetPolicy(p) => {
                self.keys.update_policy("p", p.clone()).await.unwrap();
                self.policy = p.clone();
            }
            Event::JumpForward(s) => {
                self.clock.advance(Duration::from_secs(*s));
                self.high_water = self.high_water.max(self.now());
                self.tick().await;
            }
            Event::JumpBack(s) => {
                self.clock
                    .set(UnixTime::from_secs(self.now() - i64::try_from(*s).unwrap()));
                self.tick().await;
            }
        }
        self.check();
        self.sign().await;
    }
}

trait NowSecs {
    fn now_secs(&self) -> i64;
}

impl NowSecs for ManualClock {
    fn now_secs(&self) -> i64 {
        signet::clock::Clock::now(self).as_secs()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_across_two_years(p in policy(), events in proptest::collection::vec(event(), 10..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let clock = Arc::new(ManualClock::new(UnixTime::from_secs(1_767_225_600)));
            let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
            let kek: Arc<dyn KekProvider> = Arc::new(EphemeralKek::new().unwrap());
            let keys = KeyManager::open(store.clone(), clock.clone(), kek.clone()).await.unwrap();
            keys.unseal().await.unwrap();
            keys.create_ring("p", KeySpec::new(Algorithm::EdDsa, 0).unwrap()).await.unwrap();
            keys.update_policy("p", p.clone()).await.unwrap();
            let start = signet::clock::Clock::now(&*clock).as_secs();
            let mut m = Model {
                clock,
                store,
                kek,
                keys,
                high_water: start,
                tokens: Vec::new(),
                kids: HashMap::new(),
                destroyed: HashSet::new(),
                policy: p,
            };
            m.note_new_kids(true);
            m.sign().await;
            for e in &events {
                m.apply(e).await;
            }
            // Run out the rest of two years with ticks, checking throughout.
            let elapsed = u64::try_from(m.high_water - start).unwrap_or(0);
            if elapsed < TWO_YEARS {
                m.advance(TWO_YEARS - elapsed).await;
            }
            m.sign().await;
        });
    }
}
