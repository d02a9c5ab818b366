//! Deciding how far to trust what the store says about a ring: its sealed
//! manifest (see `manifest`) while unsealed, and a conservative merge while
//! sealed.

use std::collections::{HashMap, HashSet};

use super::{
    KeyManager, Ring,
    manifest::{ManifestKey, Refusal},
};
use crate::{
    Error,
    store::{RingRecord, RingUpdate, StoreError},
};

/// What the manager makes of a stored ring.
pub(super) enum Vetted {
    /// The record as its manifest vouches for it (rows it does not list
    /// removed), to open and serve.
    Trusted(RingRecord),
    /// The ring as it is served while refused: it neither signs nor
    /// changes.
    Refused(Ring),
}

impl KeyManager {
    /// Checks `record` against its manifest and the generation marks.
    /// `prev` is the ring as this process serves it now, if it does.
    ///
    /// A ring without a manifest that this data directory never saw with
    /// one was written before manifests existed: it is adopted (its first
    /// manifest written, describing it as it is) if its policy passes the
    /// hard rules. A ring seen before has a manifest to lose, so a missing
    /// one is refused. Writer lock held.
    pub(super) async fn vet(
        &self,
        key: &ManifestKey,
        record: RingRecord,
        prev: Option<&Ring>,
    ) -> Result<Vetted, Error> {
        let seen = self.generation_seen(record.name.as_str());
        if record.manifest.is_none() && seen.is_none() {
            if let Err(e) = record.policy.validate() {
                let refusal = Refusal::Differs(format!("the policy breaks a hard rule: {e}"));
                return Ok(self.refuse(record, prev, refusal));
            }
            return match self.adopt(key, &record).await {
                Ok(record) => Ok(Vetted::Trusted(record)),
                // Another replica adopted it first: check theirs.
                Err(Error::Conflict(_)) => {
                    let stored = self
                        .store()
                        .load()
                        .await?
                        .into_iter()
                        .find(|r| r.name == record.name)
                        .ok_or_else(|| Error::RingNotFound(record.name.to_string()))?;
                    Ok(self.check(key, stored, prev))
                }
                Err(e) => Err(e),
            };
        }
        let rollback = self
            .shared
            .generations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(record.name.as_str(), record.generation);
        if let Err(refusal) = rollback {
            return Ok(self.refuse(record, prev, refusal));
        }
        Ok(self.check(key, record, prev))
    }

    fn check(&self, key: &ManifestKey, record: RingRecord, prev: Option<&Ring>) -> Vetted {
        match key.check(record.clone()) {
            Ok(vetted) => {
                for kid in &vetted.ignored {
                    metrics::counter!("signet_manifest_ignored_rows_total").increment(1);
                    tracing::warn!(
                        ring = %record.name,
                        kid = %kid,
                        "a key row the ring's manifest does not list is ignored (written to the \
                         store without Signet)"
                    );
                }
                if prev.is_some_and(|p| p.refused.is_some()) {
                    tracing::warn!(ring = %record.name, "the ring's stored state matches its manifest again; serving it");
                }
                Vetted::Trusted(vetted.record)
            }
            Err(refusal) => self.refuse(record, prev, refusal),
        }
    }

    /// Writes the first manifest of a ring stored before manifests existed.
    async fn adopt(&self, key: &ManifestKey, record: &RingRecord) -> Result<RingRecord, Error> {
        let mut next = record.clone();
        next.generation = record.generation + 1;
        let manifest = key.seal(&next);
        next.generation = self
            .store()
            .update_ring(&RingUpdate {
                ring: record.name.clone(),
                expected_generation: record.generation,
                insert: vec![],
                update: vec![],
                policy: None,
                manifest: Some(manifest.clone()),
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(ring) => Error::Conflict(ring),
                other => other.into(),
            })?;
        next.manifest = Some(manifest);
        tracing::warn!(
            ring = %record.name,
            generation = next.generation,
            "the ring had no manifest (stored by an earlier version); its current state is \
             now sealed in one"
        );
        Ok(next)
    }

    /// The ring served while refused: the last state this process trusted
    /// (so verifiers keep the keys they had), or nothing published if it
    /// never trusted one; no private key loaded either way.
    fn refuse(&self, record: RingRecord, prev: Option<&Ring>, refusal: Refusal) -> Vetted {
        let repeated = prev.is_some_and(|p| p.refused.as_ref() == Some(&refusal));
        if !repeated {
            metrics::counter!("signet_ring_refusals_total", "reason" => refusal.label())
                .increment(1);
            tracing::error!(
                ring = %record.name,
                reason = %refusal,
                "key ring refused: the store holds a state Signet did not write; the ring \
                 neither signs nor changes until the store is restored (docs/threat-model.md)"
            );
        }
        let ring = match prev {
            Some(p) => Ring {
                record: p.record.clone(),
                loaded: HashMap::new(),
                verified: p.verified.clone(),
                broken: p.broken.clone(),
                refused: Some(refusal),
            },
            None => Ring {
                record,
                loaded: HashMap::new(),
                verified: HashSet::new(),
                broken: HashSet::new(),
                refused: Some(refusal),
            },
        };
        Vetted::Refused(ring)
    }

    /// What a sealed process (no manifest key) takes in from a changed
    /// ring: only what can make it publish less. Keys it knows as destroyed
    /// or revoked stay so whatever the row says now, its policy stays, and
    /// a generation older than one seen is not taken in at all (`None`).
    /// Everything else is checked against the manifest at Unseal.
    pub(super) fn sealed_view(
        &self,
        mut record: RingRecord,
        prev: Option<&Ring>,
    ) -> Option<RingRecord> {
        if prev.is_some_and(|p| p.refused.is_some()) {
            return None;
        }
        if self
            .generation_seen(record.name.as_str())
            .is_some_and(|seen| record.generation < seen)
        {
            tracing::warn!(ring = %record.name, generation = record.generation, "an older generation of the ring is in the store; not taken in");
            return None;
        }
        if let Some(prev) = prev {
            record.policy = prev.record.policy.clone();
            for key in &mut record.keys {
                if let Some(old) = prev.record.keys.iter().find(|k| k.kid == key.kid)
                    && (old.sealed.is_none() || old.timeline.revoked_at.is_some())
                {
                    *key = old.clone();
                }
            }
        }
        Some(record)
    }

    fn generation_seen(&self, ring: &str) -> Option<u64> {
        self.shared
            .generations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen(ring)
    }
}
