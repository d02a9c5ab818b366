//! The immutable snapshot of every ring that the signing path reads.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::Arc,
};

use super::{KeyState, RingName, Timeline};
use crate::{
    clock::UnixTime,
    crypto::{Algorithm, Kid, SigningKey, jws},
    store::{KeyRecord, RingRecord},
};

/// A private key ready to sign, with its default protected header already
/// encoded (the header is the same for every token the key signs).
pub(crate) struct LoadedKey {
    pub(crate) key: SigningKey,
    pub(crate) header_b64: String,
}

impl LoadedKey {
    pub(crate) fn new(key: SigningKey) -> Self {
        let header_b64 =
            jws::encode_header(key.alg(), key.kid().as_str(), &jws::ExtraHeader::default());
        Self { key, header_b64 }
    }
}

/// One ring as of a snapshot: its stored record and its loaded keys.
pub struct Ring {
    pub(crate) record: RingRecord,
    /// Private keys ready to sign. Empty while sealed.
    pub(crate) loaded: HashMap<Kid, Arc<LoadedKey>>,
    /// Keys whose sealed record opened and matched its public key when the
    /// service last unsealed (or that it generated itself). Only these are
    /// published: a record someone wrote into the store without the KEK
    /// never reaches the JWKS. Kept while sealed.
    pub(crate) verified: HashSet<Kid>,
    /// Keys whose sealed record failed its integrity check.
    pub(crate) broken: HashSet<Kid>,
    /// Why the ring's stored state is not trusted (see `manifest`): it
    /// neither signs nor changes while set.
    pub(crate) refused: Option<super::manifest::Refusal>,
}

// Hand-written so private keys can never reach a log through `{:?}`.
impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut loaded: Vec<_> = self.loaded.keys().collect();
        loaded.sort();
        f.debug_struct("Ring")
            .field("record", &self.record)
            .field("loaded_kids", &loaded)
            .field("broken_kids", &self.broken)
            .field("refused", &self.refused)
            .finish()
    }
}

/// The public view of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// Why the last admin action on the key was taken.
    pub reason: Option<String>,
    /// The key id.
    pub kid: Kid,
    /// Its algorithm.
    pub alg: Algorithm,
    /// Its state at the time the view was taken.
    pub state: KeyState,
    /// Its timeline.
    pub timeline: Timeline,
}

pub use signet_verifier::JwkSet;

impl Ring {
    /// The ring's name.
    pub fn name(&self) -> &RingName {
        &self.record.name
    }

    /// The stored record.
    pub fn record(&self) -> &RingRecord {
        &self.record
    }

    /// The key that signs at `now`, if any. By construction at most one key
    /// is Active at any instant (a successor activates exactly when its
    /// predecessor retires). A key whose material was destroyed never signs,
    /// even if a clock set back makes its timeline look Active again.
    pub fn active_at(&self, now: UnixTime) -> Option<&KeyRecord> {
        self.record
            .keys
            .iter()
            .find(|k| k.sealed.is_some() && k.timeline.state_at(now) == KeyState::Active)
    }

    pub(crate) fn loaded(&self, kid: &Kid) -> Option<&Arc<LoadedKey>> {
        self.loaded.get(kid)
    }

    /// Every key with its state at `now`, oldest first.
    pub fn key_infos(&self, now: UnixTime) -> Vec<KeyInfo> {
        let alg = self.record.spec.alg();
        self.record
            .keys
            .iter()
            .map(|k| KeyInfo {
                reason: k.reason.clone(),
                kid: k.kid.clone(),
                alg,
                state: k.timeline.state_at(now),
                timeline: k.timeline,
            })
            .collect()
    }

    /// The keys a verifier needs at `now`: Published, Active and Retiring
    /// keys whose sealed record was verified.
    pub fn jwks(&self, now: UnixTime) -> JwkSet {
        JwkSet {
            keys: self
                .record
                .keys
                .iter()
                .filter(|k| self.is_published(k, now))
                .map(|k| k.jwk.clone())
                .collect(),
        }
    }

    /// Whether `key` belongs in the JWKS at `now`.
    pub fn is_published(&self, key: &KeyRecord, now: UnixTime) -> bool {
        key.timeline.state_at(now).is_published()
            && key.sealed.is_some()
            && self.verified.contains(&key.kid)
    }

    /// The next instant after `now` at which the ring's JWKS or signing key
    /// changes on its own: a key's publication, activation, retirement,
    /// removal or revocation, or the generation of a successor that is due
    /// for the Active key. `None` if nothing is planned.
    pub fn next_change(&self, now: UnixTime) -> Option<UnixTime> {
        let mut next: Option<UnixTime> = None;
        let mut consider = |t: Option<UnixTime>| {
            if let Some(t) = t.filter(|t| *t > now) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for k in self.record.keys.iter().filter(|k| k.sealed.is_some()) {
            let t = &k.timeline;
            for at in [
                Some(t.publish_at),
                Some(t.activate_at),
                t.retire_at,
                t.remove_at,
                t.revoked_at,
            ] {
                consider(at);
            }
        }
        if let Some(active) = self.active_at(now)
            && active.timeline.retire_at.is_none()
        {
            let p = &self.record.policy;
            consider(Some(
                active
                    .timeline
                    .activate_at
                    .saturating_add(p.rotation_period)
                    .saturating_sub(p.publish_lead),
            ));
        }
        next
    }

    /// Whether the ring is refused (its stored state differs from its
    /// sealed manifest, or rolled back): it neither signs nor changes.
    pub fn is_refused(&self) -> bool {
        self.refused.is_some()
    }

    /// Whether the key's sealed record failed its integrity check.
    pub fn is_broken(&self, kid: &Kid) -> bool {
        self.broken.contains(kid)
    }
}

/// Every ring, as of one instant of the store. Immutable: writers build a
/// new one and swap it in.
#[derive(Default)]
pub struct KeySet {
    pub(crate) rings: HashMap<RingName, Arc<Ring>>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rings: Vec<_> = self.rings.values().collect();
        rings.sort_by(|a, b| a.name().cmp(b.name()));
        f.debug_list().entries(rings).finish()
    }
}

impl KeySet {
    /// The ring named `name`.
    pub fn ring(&self, name: &RingName) -> Option<&Arc<Ring>> {
        self.rings.get(name)
    }

    /// Every ring, sorted by name.
    pub fn rings(&self) -> Vec<&Arc<Ring>> {
        let mut rings: Vec<_> = self.rings.values().collect();
        rings.sort_by(|a, b| a.name().cmp(b.name()));
        rings
    }
}
