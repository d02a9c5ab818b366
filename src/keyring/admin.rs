//! Writes: creating rings, rotating, revoking, changing policy, and the
//! scheduler's tick. Every write is planned as a list of [`Change`]s and
//! committed by [`KeyManager::commit`]: keys sealed for their new timelines,
//! then one store transaction guarded by the ring's generation, then a new
//! snapshot.

use std::{collections::HashSet, sync::Arc};

use super::{
    KeyInfo, KeyManager, KeyState, Policy, RequestId, Ring, RingInfo, RingName, Timeline, Warning,
    keyset::LoadedKey,
    manager::{info, key_info},
};
use crate::{
    Error,
    clock::UnixTime,
    crypto::{KeySpec, Kid},
    seal::{Kek, KeyContext, envelope},
    store::{KeyRecord, RingRecord, RingUpdate},
};

/// One change to one key of a ring.
pub(super) enum Change {
    /// A freshly generated key with its timeline (and the id of the Rotate
    /// request that created it, if any).
    Insert {
        key: Box<LoadedKey>,
        timeline: Timeline,
        reason: Option<String>,
        request_id: Option<RequestId>,
    },
    /// An existing key gets a new timeline (and is re-sealed for it), and,
    /// if given, its stored request ids replaced (see [`StoredIds`]).
    Retime {
        kid: Kid,
        timeline: Timeline,
        reason: Option<String>,
        request_id: Option<String>,
    },
    /// An existing key's material is destroyed; its kid stays as a tombstone
    /// with this timeline.
    Destroy {
        kid: Kid,
        timeline: Timeline,
        reason: Option<String>,
    },
}

/// What one scheduler pass did to one ring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Successors generated, as `(ring, kid)`.
    pub generated: Vec<(RingName, Kid)>,
    /// Keys whose material was destroyed, as `(ring, kid)`.
    pub destroyed: Vec<(RingName, Kid)>,
    /// Rings that could not be processed, with the error.
    pub failed: Vec<(RingName, String)>,
}

impl KeyManager {
    /// Creates a ring with one key that is published and active at once.
    pub async fn create_ring(&self, name: &str, spec: KeySpec) -> Result<RingInfo, Error> {
        self.create_ring_from(name, spec, Policy::default(), None)
            .await
    }

    /// [`KeyManager::create_ring`] with an issuer: every token of the ring
    /// gets it as `iss`, and its discovery document names it.
    pub async fn create_ring_with_issuer(
        &self,
        name: &str,
        spec: KeySpec,
        issuer: Option<super::Issuer>,
    ) -> Result<RingInfo, Error> {
        let policy = Policy {
            issuer,
            ..Policy::default()
        };
        self.create_ring_from(name, spec, policy, None).await
    }

    /// Creates a ring whose first key is `key`, imported rather than
    /// generated. Only for tests that must know a key's bytes (the memory
    /// test's canary key); not part of the service's API: a ring's keys are
    /// generated inside the process, never brought in.
    #[doc(hidden)]
    pub async fn create_ring_with_key(
        &self,
        name: &str,
        spec: KeySpec,
        key: crate::crypto::SigningKey,
    ) -> Result<RingInfo, Error> {
        if key.alg() != spec.alg() {
            return Err(crate::crypto::CryptoError.into());
        }
        self.create_ring_from(name, spec, Policy::default(), Some(LoadedKey::new(key)))
            .await
    }

    async fn create_ring_from(
        &self,
        name: &str,
        spec: KeySpec,
        policy: Policy,
        key: Option<LoadedKey>,
    ) -> Result<RingInfo, Error> {
        let name = RingName::parse(name, "name")?;
        let _writer = self.shared.writer.lock().await;
        let kek = self.kek().ok_or(Error::Sealed)?;
        if self.shared.snapshot.load().ring(&name).is_some() {
            return Err(Error::RingExists(name));
        }
        let loaded = match key {
            Some(key) => key,
            None => self.generate(spec).await?,
        };
        let now = self.now();
        let record = sealed_record(&*kek, &name, &loaded, Timeline::immediate(now), None).await?;
        let mut ring = RingRecord {
            name: name.clone(),
            spec,
            policy,
            generation: 1,
            keys: vec![record],
            manifest: None,
        };
        let manifest_key = self.manifest_key().ok_or(Error::Sealed)?;
        ring.manifest = Some(manifest_key.seal(&ring));
        self.store().create_ring(&ring).await?;
        self.saw_generations([(&name, 1)]);
        let kid = loaded.key.kid();
        tracing::info!(ring = %name, alg = %spec, kid = %kid, "key ring created");
        let ring = Ring {
            record: ring,
            verified: HashSet::from([kid.clone()]),
            loaded: [(kid, Arc::new(loaded))].into_iter().collect(),
            broken: HashSet::new(),
            refused: None,
            held: HashSet::new(),
        };
        let out = info(&ring, now);
        self.install(ring);
        Ok(out)
    }

    /// Rotates a ring.
    ///
    /// Scheduled (`immediate == false`): generates the successor now on the
    /// normal timeline (published now, signs `publish_lead` later, when the
    /// Active key retires). If a successor is already waiting, returns it
    /// and changes nothing.
    ///
    /// Immediate (emergency): a new key is published and signs now; the
    /// Active key retires now and keeps its grace period; a successor that
    /// was waiting is withdrawn (it never signed). Verifiers with a cached
    /// JWKS refetch on the unknown kid.
    ///
    /// With a `request_id`, the rotation is idempotent: if a key of the ring
    /// was already created by a Rotate with that id (a retry after a lost
    /// answer, or the same call sent to another replica), that key is
    /// returned and nothing changes; a concurrent call with the same id that
    /// loses the race answers the winner's result instead of ABORTED. Reusing
    /// an id for the other kind of rotation (immediate vs scheduled) is
    /// refused.
    ///
    /// Returns the key that signs next and the key it replaces.
    pub async fn rotate(
        &self,
        name: &str,
        immediate: bool,
        reason: &str,
        request_id: Option<&RequestId>,
    ) -> Result<(KeyInfo, Option<KeyInfo>), Error> {
        self.rotate_with(name, immediate, false, reason, request_id)
            .await
    }

    /// [`KeyManager::rotate`]; an immediate rotation with `fresh` always
    /// generates a new key (and withdraws a waiting successor) instead of
    /// promoting a successor verifiers already hold.
    pub async fn rotate_with(
        &self,
        name: &str,
        immediate: bool,
        fresh: bool,
        reason: &str,
        request_id: Option<&RequestId>,
    ) -> Result<(KeyInfo, Option<KeyInfo>), Error> {
        let name = RingName::parse(name, "key_ring")?;
        if let Some(id) = request_id
            && self
                .current(&name)
                .is_ok_and(|ring| ring.record.keys.iter().any(|k| carries(k, id)))
        {
            // A retry: answer it from the store as it is now, not from this
            // replica's snapshot, which another replica may have moved on
            // from (promoted the key, or revoked it).
            self.refresh().await?;
        }
        match self
            .rotate_once(&name, immediate, fresh, reason, request_id)
            .await
        {
            Err(Error::Conflict(ring)) if let Some(id) = request_id => {
                // Another writer changed the ring first: perhaps another
                // replica serving this very request. Read what it wrote.
                self.refresh().await?;
                let current = self.current(&name)?;
                replay(&current, id, immediate, self.now())?.ok_or(Error::Conflict(ring))
            }
            other => other,
        }
    }

    async fn rotate_once(
        &self,
        name: &RingName,
        immediate: bool,
        fresh: bool,
        reason: &str,
        request_id: Option<&RequestId>,
    ) -> Result<(KeyInfo, Option<KeyInfo>), Error> {
        let _writer = self.shared.writer.lock().await;
        let kek = self.kek().ok_or(Error::Sealed)?;
        let ring = self.current(name)?;
        let now = self.now();
        if let Some(id) = request_id
            && let Some(done) = replay(&ring, id, immediate, now)?
        {
            return Ok(done);
        }
        let spec = ring.record.spec;
        let reason = Some(reason.to_owned()).filter(|r| !r.is_empty());
        if !immediate
            && let Some(active) = ring.active_at(now)
            && active.timeline.retire_at.is_some()
            && let Some(next) = successor_of(&ring, active, now)
        {
            return Ok((key_info(next, spec, now), Some(key_info(active, spec, now))));
        }
        // An emergency rotation promotes a successor that verifiers already
        // hold (published at least jwks_max_age + clock_skew ago), so no
        // token it signs meets an unknown kid; a fresh key only when there
        // is none, or when asked (the successor may be compromised too).
        if immediate
            && !fresh
            && let Some(active) = ring.active_at(now)
            && let Some(next) = promotable(&ring, now)
        {
            let policy = &ring.record.policy;
            let mut retired = active.timeline;
            retired.retire_at = Some(now);
            retired.remove_at = Some(now.saturating_add(policy.grace));
            let mut promoted = next.timeline;
            promoted.activate_at = now;
            let changes = vec![
                Change::Retime {
                    kid: next.kid.clone(),
                    timeline: promoted,
                    reason: Some(format!(
                        "promoted by an immediate rotation{}",
                        reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )),
                    // Both calls stay answerable: a late retry of the
                    // Rotate that created the successor gets it back
                    // instead of making another.
                    request_id: Some(
                        StoredIds::parse(next.request_id.as_deref()).promoted_by(request_id),
                    ),
                },
                Change::Retime {
                    kid: active.kid.clone(),
                    timeline: retired,
                    reason: None,
                    request_id: None,
                },
            ];
            let (new_kid, old_kid) = (next.kid.clone(), active.kid.clone());
            let written = self.commit(&ring, &*kek, changes, None).await?;
            let find = |kid: &Kid| written.record.keys.iter().find(|k| &k.kid == kid);
            let new_info = find(&new_kid)
                .map(|k| key_info(k, spec, now))
                .ok_or(Error::ShuttingDown)?;
            let old_info = find(&old_kid).map(|k| key_info(k, spec, now));
            tracing::info!(
                ring = %name,
                new_kid = %new_kid,
                old_kid = %old_kid,
                reason = reason.as_deref().unwrap_or(""),
                "immediate rotation promoted the published successor"
            );
            return Ok((new_info, old_info));
        }
        let loaded = self.generate(spec).await?;
        // Read the clock after generation, which can take a while for RSA.
        let now = self.now();
        let new_kid = loaded.key.kid();
        let request_id = request_id.cloned();
        let changes = if immediate {
            immediate_changes(&ring, loaded, now, reason.as_deref(), request_id)
        } else {
            scheduled_changes(&ring, loaded, now, reason.clone(), request_id)
        };
        let old = ring.active_at(now).map(|k| k.kid.clone());
        let next = self.commit(&ring, &*kek, changes, None).await?;
        let find = |kid: &Kid| next.record.keys.iter().find(|k| &k.kid == kid);
        let new_info = find(&new_kid)
            .map(|k| key_info(k, spec, now))
            .ok_or(Error::ShuttingDown)?;
        let old_info = old.as_ref().and_then(find).map(|k| key_info(k, spec, now));
        tracing::info!(
            ring = %name,
            new_kid = %new_kid,
            old_kid = old.as_ref().map_or("-", |k| k.as_str()),
            immediate,
            reason = reason.as_deref().unwrap_or(""),
            activate_at = %new_info.timeline.activate_at,
            "key ring rotated"
        );
        Ok((new_info, old_info))
    }

    /// Revokes a key: it leaves the JWKS now and its material is destroyed.
    /// Revoking the Active key first rotates immediately (in the same
    /// write), so the ring always keeps a key that signs. Revoking a waiting
    /// successor reopens the Active key's timeline; the scheduler plans a
    /// new successor.
    pub async fn revoke(&self, name: &str, kid: &str, reason: &str) -> Result<KeyInfo, Error> {
        let name = RingName::parse(name, "key_ring")?;
        let _writer = self.shared.writer.lock().await;
        let kek = self.kek().ok_or(Error::Sealed)?;
        let ring = self.current(&name)?;
        let now = self.now();
        let key = ring
            .record
            .keys
            .iter()
            .find(|k| k.kid.as_str() == kid)
            .ok_or_else(|| Error::KidNotFound {
                ring: name.clone(),
                kid: kid.to_owned(),
            })?;
        if key.sealed.is_none() {
            let state = if key.timeline.revoked_at.is_some() {
                "revoked"
            } else {
                "removed"
            };
            return Err(Error::AlreadyGone {
                ring: name,
                kid: key.kid.clone(),
                state,
            });
        }
        let reason = Some(reason.to_owned()).filter(|r| !r.is_empty());
        let mut revoked = key.timeline;
        revoked.revoked_at = Some(now);
        let mut changes = Vec::new();
        let state = key.timeline.state_at(now);
        let is_active = ring.active_at(now).is_some_and(|a| a.kid == key.kid);
        if is_active {
            let loaded = self.generate(ring.record.spec).await?;
            let rotation_reason = format!("revocation of {}", key.kid);
            changes = immediate_changes(&ring, loaded, now, Some(&rotation_reason), None);
            // The immediate rotation retired this key; revoke on top of that.
            changes.retain(|c| !matches!(c, Change::Retime { kid, .. } if kid == &key.kid));
        } else if key.timeline.activate_at > now
            && let Some(active) = ring.active_at(now)
            && active.timeline.retire_at == Some(key.timeline.activate_at)
        {
            // A waiting successor: the Active key keeps signing, open-ended.
            let mut reopened = active.timeline;
            reopened.retire_at = None;
            reopened.remove_at = None;
            changes.push(Change::Retime {
                kid: active.kid.clone(),
                timeline: reopened,
                reason: None,
                request_id: None,
            });
        }
        changes.push(Change::Destroy {
            kid: key.kid.clone(),
            timeline: revoked,
            reason: reason.clone(),
        });
        let kid = key.kid.clone();
        let spec = ring.record.spec;
        let next = self.commit(&ring, &*kek, changes, None).await?;
        tracing::warn!(
            ring = %name,
            kid = %kid,
            was = state.name(),
            reason = reason.as_deref().unwrap_or(""),
            "key revoked: removed from the JWKS and destroyed"
        );
        next.record
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| key_info(k, spec, now))
            .ok_or(Error::ShuttingDown)
    }

    /// Validates and stores a ring's new policy. Existing timelines keep
    /// their times; the next successor follows the new policy. Returns the
    /// advice for the accepted policy.
    pub async fn update_policy(&self, name: &str, policy: Policy) -> Result<Vec<Warning>, Error> {
        let warnings = policy.validate()?;
        let min = self.min_publish_lead();
        if policy.publish_lead < min {
            return Err(super::PolicyError(format!(
                "publish_lead ({}) must be >= {} (10 x the replicas' refresh interval), so every \
                 replica publishes a key long before any replica signs with it",
                super::Short(policy.publish_lead),
                super::Short(min)
            ))
            .into());
        }
        let name = RingName::parse(name, "key_ring")?;
        let _writer = self.shared.writer.lock().await;
        let kek = self.kek().ok_or(Error::Sealed)?;
        let ring = self.current(&name)?;
        self.commit(&ring, &*kek, Vec::new(), Some(policy.clone()))
            .await?;
        tracing::info!(ring = %name, ?policy, "policy updated");
        for w in &warnings {
            tracing::warn!(ring = %name, "policy advice: {w}");
        }
        Ok(warnings)
    }

    /// One scheduler pass over every ring at the service clock's now:
    /// generates successors that are due and destroys the material of
    /// removed keys. Never blocks signing (writes swap in a new snapshot).
    pub async fn tick(&self) -> TickReport {
        self.tick_audited(None).await
    }

    /// [`KeyManager::tick`], writing to `audit` an intent record for each
    /// action (generate, destroy) before it is committed: a ring whose
    /// intent cannot be recorded is left as it is this pass (reported as
    /// failed) and tried again at the next.
    pub async fn tick_audited(&self, audit: Option<&crate::audit::AuditLog>) -> TickReport {
        self.tick_holding(audit, &|_| false).await
    }

    /// [`KeyManager::tick_audited`], keeping the material of every removed
    /// key for which `hold` says so (the scheduler's rule after a clock
    /// jump forwards).
    pub async fn tick_holding(
        &self,
        audit: Option<&crate::audit::AuditLog>,
        hold: &(dyn Fn(&KeyRecord) -> bool + Sync),
    ) -> TickReport {
        let mut report = TickReport::default();
        let names: Vec<RingName> = self
            .snapshot()
            .rings()
            .iter()
            .map(|r| r.name().clone())
            .collect();
        for name in names {
            match self.tick_ring(&name, &mut report, audit, hold).await {
                Ok(()) => {}
                // Another replica's scheduler wrote first: nothing to do but
                // take in its change.
                Err(Error::Conflict(_)) => {
                    tracing::info!(ring = %name, "another replica updated the ring first; refreshing");
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "refresh after a lost compare-and-swap failed");
                    }
                }
                Err(e) => {
                    tracing::error!(ring = %name, error = %e, "scheduler failed on ring");
                    report.failed.push((name, e.to_string()));
                }
            }
        }
        report
    }

    async fn tick_ring(
        &self,
        name: &RingName,
        report: &mut TickReport,
        audit: Option<&crate::audit::AuditLog>,
        hold: &(dyn Fn(&KeyRecord) -> bool + Sync),
    ) -> Result<(), Error> {
        let _writer = self.shared.writer.lock().await;
        let Some(kek) = self.kek() else {
            return Ok(()); // sealed: nothing can be generated or re-sealed
        };
        let ring = self.current(name)?;
        if ring.refused.is_some() {
            // Refused rings change nothing; the refusal was logged and
            // counted when it was found.
            return Ok(());
        }
        let now = self.now();
        let policy = &ring.record.policy;
        let mut changes = Vec::new();
        let mut generated = None;
        match ring.active_at(now) {
            Some(active) => {
                let due = active
                    .timeline
                    .activate_at
                    .saturating_add(policy.rotation_period)
                    .saturating_sub(policy.publish_lead);
                if active.timeline.retire_at.is_none() && now >= due {
                    let loaded = self.generate(ring.record.spec).await?;
                    generated = Some(loaded.key.kid());
                    changes = scheduled_changes(
                        &ring,
                        loaded,
                        now,
                        Some("scheduled rotation".into()),
                        None,
                    );
                }
            }
            None => tracing::warn!(
                ring = %name,
                %now,
                "no active key at this time (was the clock set back?); not rotating"
            ),
        }
        let mut destroyed = Vec::new();
        for key in &ring.record.keys {
            let state = key.timeline.state_at(now);
            let held = state == KeyState::Removed && hold(key);
            if key.sealed.is_some()
                && matches!(state, KeyState::Removed | KeyState::Revoked)
                && !held
            {
                changes.push(Change::Destroy {
                    kid: key.kid.clone(),
                    timeline: key.timeline,
                    reason: None,
                });
                destroyed.push(key.kid.clone());
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        // Intent before action: nothing is committed that the audit log
        // does not know is about to happen.
        if let Some(log) = audit {
            let intents = generated
                .iter()
                .map(|kid| ("scheduler/generate", kid))
                .chain(destroyed.iter().map(|kid| ("scheduler/destroy", kid)));
            for (action, kid) in intents {
                let mut rec =
                    crate::audit::AuditRecord::new(action, crate::audit::Outcome::Intent, "INTENT");
                (rec.ring, rec.kid) = (name.to_string(), kid.to_string());
                if log.append(rec).await.is_err() {
                    return Err(Error::AuditUnavailable);
                }
            }
        }
        if !destroyed.is_empty() {
            crate::fault!("scheduler-destroy");
        }
        self.commit(&ring, &*kek, changes, None).await?;
        for kid in destroyed {
            tracing::info!(ring = %name, kid = %kid, "removed key destroyed (kid kept as a tombstone)");
            report.destroyed.push((name.clone(), kid));
        }
        if let Some(kid) = generated {
            tracing::info!(
                ring = %name,
                kid = %kid,
                activates_in = %super::Short(policy.publish_lead),
                "successor generated and published"
            );
            report.generated.push((name.clone(), kid));
        }
        Ok(())
    }

    /// The ring as of the current snapshot (writer lock held).
    fn current(&self, name: &RingName) -> Result<Arc<Ring>, Error> {
        self.shared
            .snapshot
            .load()
            .ring(name)
            .cloned()
            .ok_or_else(|| Error::RingNotFound(name.to_string()))
    }

    /// Seals, writes in one CAS-guarded transaction, and installs `changes`
    /// (and a new policy) for `ring`. Writer lock held.
    pub(super) async fn commit(
        &self,
        ring: &Ring,
        kek: &dyn Kek,
        changes: Vec<Change>,
        policy: Option<Policy>,
    ) -> Result<Arc<Ring>, Error> {
        let name = &ring.record.name;
        if let Some(refusal) = &ring.refused {
            return Err(Error::RingRefused {
                ring: name.clone(),
                reason: refusal.to_string(),
            });
        }
        let mut insert = Vec::new();
        let mut update = Vec::new();
        let mut new_loaded = Vec::new();
        let mut destroyed = HashSet::new();
        for change in changes {
            match change {
                Change::Insert {
                    key,
                    timeline,
                    reason,
                    request_id,
                } => {
                    let mut rec = sealed_record(kek, name, &key, timeline, reason).await?;
                    rec.request_id = request_id.map(|id| id.as_str().to_owned());
                    insert.push(rec);
                    new_loaded.push(*key);
                }
                Change::Retime {
                    kid,
                    timeline,
                    reason,
                    request_id,
                } => {
                    let old = stored(ring, &kid)?;
                    let key = ring.loaded(&kid).ok_or_else(|| unavailable(ring, &kid))?;
                    let mut rec = sealed_record(kek, name, key, timeline, None).await?;
                    rec.reason = reason.or_else(|| old.reason.clone());
                    rec.request_id = request_id.or_else(|| old.request_id.clone());
                    update.push(rec);
                }
                Change::Destroy {
                    kid,
                    timeline,
                    reason,
                } => {
                    let old = stored(ring, &kid)?;
                    update.push(KeyRecord {
                        kid: kid.clone(),
                        jwk: old.jwk.clone(),
                        timeline,
                        sealed: None,
                        reason: reason.or_else(|| old.reason.clone()),
                        request_id: old.request_id.clone(),
                    });
                    destroyed.insert(kid);
                }
            }
        }
        let manifest_key = self.manifest_key().ok_or(Error::Sealed)?;
        // The ring as it will be, so its manifest goes in the same write.
        let mut record = ring.record.clone();
        record.generation = ring.record.generation + 1;
        if let Some(policy) = &policy {
            record.policy = policy.clone();
        }
        for changed in &update {
            if let Some(k) = record.keys.iter_mut().find(|k| k.kid == changed.kid) {
                *k = changed.clone();
                if changed.request_id.is_none() {
                    // The store keeps the stored id when none is given.
                    k.request_id
                        .clone_from(&stored(ring, &changed.kid)?.request_id);
                }
            }
        }
        record.keys.extend(insert.iter().cloned());
        let manifest = manifest_key.seal(&record);
        record.manifest = Some(manifest.clone());
        let write = RingUpdate {
            ring: name.clone(),
            expected_generation: ring.record.generation,
            insert,
            update,
            policy,
            manifest: Some(manifest),
        };
        let generation = self.store().update_ring(&write).await?;
        debug_assert_eq!(generation, record.generation);
        record.generation = generation;
        self.saw_generations([(name, generation)]);
        let mut next = Ring {
            record,
            loaded: ring.loaded.clone(),
            verified: ring.verified.clone(),
            broken: ring.broken.clone(),
            refused: None,
            held: ring.held.clone(),
        };
        for kid in &destroyed {
            // The last Arc (after any in-flight Sign) drops and wipes it.
            next.loaded.remove(kid);
        }
        for key in new_loaded {
            let kid = key.key.kid();
            next.verified.insert(kid.clone());
            next.loaded.insert(kid, Arc::new(key));
        }
        let next = Arc::new(next);
        self.install_arc(next.clone());
        Ok(next)
    }
}

fn stored<'a>(ring: &'a Ring, kid: &Kid) -> Result<&'a KeyRecord, Error> {
    ring.record
        .keys
        .iter()
        .find(|k| &k.kid == kid)
        .ok_or_else(|| Error::KidNotFound {
            ring: ring.record.name.clone(),
            kid: kid.to_string(),
        })
}

fn unavailable(ring: &Ring, kid: &Kid) -> Error {
    if ring.is_broken(kid) {
        Error::DataLoss {
            ring: ring.record.name.clone(),
            kid: kid.clone(),
        }
    } else {
        Error::KeyUnavailable {
            ring: ring.record.name.clone(),
            kid: kid.clone(),
        }
    }
}

/// The key waiting to take over from `active`, if any.
fn successor_of<'a>(ring: &'a Ring, active: &KeyRecord, now: UnixTime) -> Option<&'a KeyRecord> {
    let at = active.timeline.retire_at?;
    ring.record.keys.iter().find(|k| {
        k.sealed.is_some()
            && k.timeline.activate_at == at
            && k.timeline.state_at(now) != KeyState::Revoked
    })
}

/// The answer a Rotate with request id `id` already got on `ring`: the key
/// it created and the key that one replaced (whose retirement is the new
/// key's activation). `None` if no key of the ring carries the id; an error
/// if the id was used for the other kind of rotation.
fn replay(
    ring: &Ring,
    id: &RequestId,
    immediate: bool,
    now: UnixTime,
) -> Result<Option<(KeyInfo, Option<KeyInfo>)>, Error> {
    let keys = &ring.record.keys;
    let Some((made, was_immediate)) = keys.iter().find_map(|k| {
        let ids = StoredIds::parse(k.request_id.as_deref());
        match ids.role_of(id)? {
            // The immediate rotation that promoted this successor.
            Role::Promoted => Some((k, true)),
            // Only a waiting successor is ever promoted, so a promoted key
            // was made by a scheduled rotation. Otherwise (and for keys
            // stored before promotions kept both ids) the timeline tells: an
            // immediate rotation's key signs as soon as it is published, or
            // (a promoted successor) sooner than publish_lead after it.
            Role::Created => {
                let timeline = &k.timeline;
                let immediate = ids.promoted.is_none()
                    && (timeline.activate_at <= timeline.publish_at
                        || timeline.activate_at
                            < timeline
                                .publish_at
                                .saturating_add(ring.record.policy.publish_lead));
                Some((k, immediate))
            }
        }
    }) else {
        return Ok(None);
    };
    if was_immediate != immediate {
        let (used, asked) = if was_immediate {
            ("an immediate", "a scheduled")
        } else {
            ("a scheduled", "an immediate")
        };
        return Err(Error::InvalidArgument(
            crate::crypto::claims::InputError::new(
                "request_id",
                format!(
                    "was used for {used} rotation of ring {} (key {}); this is {asked} one: \
                 a retry must repeat the request, a new rotation needs a new request_id",
                    ring.record.name, made.kid
                ),
            ),
        ));
    }
    let spec = ring.record.spec;
    let replaced = keys
        .iter()
        .find(|k| k.kid != made.kid && k.timeline.retire_at == Some(made.timeline.activate_at));
    Ok(Some((
        key_info(made, spec, now),
        replaced.map(|k| key_info(k, spec, now)),
    )))
}

/// The request ids stored on a key (the `request_id` column): the Rotate
/// that created it and, once an immediate rotation has promoted it, that
/// call's too, as `created>promoted` (either side may be empty; a request id
/// cannot contain `>`). Keeping both lets a late retry of either call be
/// answered with this key instead of starting another rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoredIds<'a> {
    created: Option<&'a str>,
    /// `Some` once promoted; `Some(None)` if the promoting call had no id.
    promoted: Option<Option<&'a str>>,
}

impl<'a> StoredIds<'a> {
    fn parse(stored: Option<&'a str>) -> Self {
        let non_empty = |s: &'a str| Some(s).filter(|s| !s.is_empty());
        match stored.map(|s| s.split_once('>').ok_or(s)) {
            None => Self {
                created: None,
                promoted: None,
            },
            Some(Ok((created, promoted))) => Self {
                created: non_empty(created),
                promoted: Some(non_empty(promoted)),
            },
            Some(Err(created)) => Self {
                created: non_empty(created),
                promoted: None,
            },
        }
    }

    /// Which of the two calls `id` was, if either.
    fn role_of(&self, id: &RequestId) -> Option<Role> {
        if self.promoted == Some(Some(id.as_str())) {
            Some(Role::Promoted)
        } else if self.created == Some(id.as_str()) {
            Some(Role::Created)
        } else {
            None
        }
    }

    /// The stored form after a promotion by the call with `id`.
    fn promoted_by(self, id: Option<&RequestId>) -> String {
        format!(
            "{}>{}",
            self.created.unwrap_or_default(),
            id.map(RequestId::as_str).unwrap_or_default()
        )
    }
}

/// What a Rotate did to the key whose [`StoredIds`] name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Created,
    Promoted,
}

/// Whether `key` was created or promoted by the Rotate with `id`.
fn carries(key: &KeyRecord, id: &RequestId) -> bool {
    StoredIds::parse(key.request_id.as_deref())
        .role_of(id)
        .is_some()
}

/// A successor on the normal timeline: published now, signing
/// `publish_lead` later, when the Active key retires (and stays published
/// for `grace` after that).
fn scheduled_changes(
    ring: &Ring,
    key: LoadedKey,
    now: UnixTime,
    reason: Option<String>,
    request_id: Option<RequestId>,
) -> Vec<Change> {
    let policy = &ring.record.policy;
    let activate = now.saturating_add(policy.publish_lead);
    let mut changes = vec![Change::Insert {
        key: Box::new(key),
        timeline: Timeline {
            activate_at: activate,
            ..Timeline::immediate(now)
        },
        reason,
        request_id,
    }];
    if let Some(active) = ring.active_at(now) {
        let mut tl = active.timeline;
        tl.retire_at = Some(activate);
        tl.remove_at = Some(activate.saturating_add(policy.grace));
        changes.push(Change::Retime {
            kid: active.kid.clone(),
            timeline: tl,
            reason: None,
            request_id: None,
        });
    }
    changes
}

/// An emergency successor: published and signing now. The Active key
/// retires now and keeps its grace; waiting successors (which never signed)
/// are withdrawn.
/// The waiting successor an immediate rotation may promote: published, not
/// revoked, and in the JWKS for at least `jwks_max_age + clock_skew`, so
/// every verifier's cached set already holds it.
fn promotable(ring: &Ring, now: UnixTime) -> Option<&KeyRecord> {
    let policy = &ring.record.policy;
    let settled = policy.jwks_max_age.saturating_add(policy.clock_skew);
    ring.record.keys.iter().find(|k| {
        k.sealed.is_some()
            && k.timeline.revoked_at.is_none()
            && k.timeline.activate_at > now
            && k.timeline.publish_at.saturating_add(settled) <= now
            && ring.loaded(&k.kid).is_some()
    })
}

fn immediate_changes(
    ring: &Ring,
    key: LoadedKey,
    now: UnixTime,
    reason: Option<&str>,
    request_id: Option<RequestId>,
) -> Vec<Change> {
    let policy = &ring.record.policy;
    let mut changes = vec![Change::Insert {
        key: Box::new(key),
        timeline: Timeline::immediate(now),
        reason: reason.map(str::to_owned),
        request_id,
    }];
    if let Some(active) = ring.active_at(now) {
        let mut tl = active.timeline;
        tl.retire_at = Some(now);
        tl.remove_at = Some(now.saturating_add(policy.grace));
        changes.push(Change::Retime {
            kid: active.kid.clone(),
            timeline: tl,
            reason: None,
            request_id: None,
        });
    }
    for waiting in ring.record.keys.iter().filter(|k| {
        k.sealed.is_some() && k.timeline.activate_at > now && k.timeline.revoked_at.is_none()
    }) {
        let mut tl = waiting.timeline;
        tl.revoked_at = Some(now);
        changes.push(Change::Destroy {
            kid: waiting.kid.clone(),
            timeline: tl,
            reason: Some(format!(
                "withdrawn by an immediate rotation{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            )),
        });
    }
    changes
}

/// A store record for `key` with `timeline`, its private key sealed for
/// exactly that ring, kid, algorithm and timeline.
pub(super) async fn sealed_record(
    kek: &dyn Kek,
    ring: &RingName,
    key: &LoadedKey,
    timeline: Timeline,
    reason: Option<String>,
) -> Result<KeyRecord, Error> {
    let kid = key.key.kid();
    let ctx = KeyContext {
        ring,
        kid: &kid,
        alg: key.key.alg(),
        timeline: &timeline,
    };
    crate::fault!("seal");
    let sealed = envelope::seal(kek, ctx, &key.key)
        .await
        .map_err(|e| super::unseal::seal_error(e, ring, &kid))?;
    Ok(KeyRecord {
        jwk: key.key.jwk().clone(),
        kid,
        timeline,
        sealed: Some(sealed),
        reason,
        request_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::StoredIds;

    #[test]
    fn stored_ids_round_trip_a_promotion() {
        let id = |s| super::RequestId::parse_optional(s, "request_id").unwrap();
        let none = StoredIds::parse(None);
        assert_eq!(
            none,
            StoredIds {
                created: None,
                promoted: None
            }
        );
        let made = StoredIds::parse(Some("planned-1"));
        assert_eq!(made.created, Some("planned-1"));
        assert_eq!(made.promoted, None);

        let both = made.promoted_by(id("drill-1").as_ref());
        assert_eq!(both, "planned-1>drill-1");
        let both = StoredIds::parse(Some(&both));
        assert_eq!(both.created, Some("planned-1"));
        assert_eq!(both.promoted, Some(Some("drill-1")));

        // Either call may have come without an id; the promotion still shows.
        let anonymous = made.promoted_by(None);
        assert_eq!(
            StoredIds::parse(Some(&anonymous)).promoted,
            Some(None),
            "{anonymous}"
        );
        let only_promoter = none.promoted_by(id("drill-2").as_ref());
        let parsed = StoredIds::parse(Some(&only_promoter));
        assert_eq!(parsed.created, None);
        assert_eq!(parsed.promoted, Some(Some("drill-2")));
    }
}
