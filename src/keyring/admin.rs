//! Writes: creating rings and rotating keys. Each is one store transaction
//! guarded by the ring's generation, with every key sealed before it is
//! written.

use std::{collections::HashSet, sync::Arc};

use super::{
    KeyInfo, KeyManager, Policy, Ring, RingInfo, RingName, Timeline,
    keyset::LoadedKey,
    manager::{info, key_info},
};
use crate::{
    Error,
    crypto::KeySpec,
    seal::{Kek, KeyContext, envelope},
    store::{KeyRecord, RingRecord, RingUpdate},
};

impl KeyManager {
    /// Creates a ring with one key that is published and active at once.
    pub async fn create_ring(&self, name: &str, spec: KeySpec) -> Result<RingInfo, Error> {
        let name = RingName::parse(name, "name")?;
        let _writer = self.shared.writer.lock().await;
        let kek = self.kek().ok_or(Error::Sealed)?;
        if self.shared.snapshot.load().ring(&name).is_some() {
            return Err(Error::RingExists(name));
        }
        let loaded = self.generate(spec).await?;
        let now = self.now();
        let record = sealed_record(&*kek, &name, &loaded, Timeline::immediate(now)).await?;
        let ring = RingRecord {
            name: name.clone(),
            spec,
            policy: Policy::default(),
            generation: 1,
            keys: vec![record],
        };
        self.store().create_ring(&ring).await?;
        let kid = loaded.key.kid();
        tracing::info!(ring = %name, alg = %spec, kid = %kid, "key ring created");
        let ring = Ring {
            record: ring,
            verified: HashSet::from([kid.clone()]),
            loaded: [(kid, Arc::new(loaded))].into_iter().collect(),
            broken: HashSet::new(),
        };
        let out = info(&ring, now);
        self.install(ring);
        Ok(out)
    }

    /// Generates a new key that is published and signs from now on. The key
    /// that was Active retires now and stays in the JWKS for the ring's grace
    /// period. Returns the new key and the one it replaced, if any.
    ///
    /// The new key and the re-sealed old key (its timeline is bound into its
    /// seal) are written in one store transaction: a crash leaves either the
    /// old ring or the new one.
    pub async fn rotate(&self, name: &str) -> Result<(KeyInfo, Option<KeyInfo>), Error> {
        let name = RingName::parse(name, "key_ring")?;
        let _writer = self.shared.writer.lock().await;
        let kek = self.kek().ok_or(Error::Sealed)?;
        let ring = self
            .shared
            .snapshot
            .load()
            .ring(&name)
            .cloned()
            .ok_or_else(|| Error::RingNotFound(name.to_string()))?;
        let spec = ring.record.spec;
        let loaded = self.generate(spec).await?;
        // Read the clock after generation, which can take a while for RSA.
        let now = self.now();
        let new = sealed_record(&*kek, &name, &loaded, Timeline::immediate(now)).await?;

        let mut retired = None;
        if let Some(old) = ring.active_at(now) {
            let mut timeline = old.timeline;
            timeline.retire_at = Some(now);
            timeline.remove_at = Some(now.saturating_add(ring.record.policy.grace));
            let old_key = ring
                .loaded(&old.kid)
                .ok_or_else(|| match ring.is_broken(&old.kid) {
                    true => Error::DataLoss {
                        ring: name.clone(),
                        kid: old.kid.clone(),
                    },
                    false => Error::KeyUnavailable {
                        ring: name.clone(),
                        kid: old.kid.clone(),
                    },
                })?;
            retired = Some(sealed_record(&*kek, &name, old_key, timeline).await?);
        }
        let update = RingUpdate {
            ring: name.clone(),
            expected_generation: ring.record.generation,
            insert: vec![new.clone()],
            update: retired.iter().cloned().collect(),
        };
        let generation = self.store().update_ring(&update).await?;

        let mut record = ring.record.clone();
        record.generation = generation;
        let mut old_info = None;
        if let Some(changed) = &retired
            && let Some(k) = record.keys.iter_mut().find(|k| k.kid == changed.kid)
        {
            *k = changed.clone();
            old_info = Some(key_info(k, spec, now));
        }
        let new_info = key_info(&new, spec, now);
        record.keys.push(new);
        let mut next = Ring {
            record,
            loaded: ring.loaded.clone(),
            verified: ring.verified.clone(),
            broken: ring.broken.clone(),
        };
        next.verified.insert(new_info.kid.clone());
        next.loaded.insert(new_info.kid.clone(), Arc::new(loaded));
        tracing::info!(
            ring = %name,
            new_kid = %new_info.kid,
            old_kid = old_info.as_ref().map_or("-", |k| k.kid.as_str()),
            "key ring rotated"
        );
        self.install(next);
        Ok((new_info, old_info))
    }
}

/// A store record for `key` with `timeline`, its private key sealed for
/// exactly that ring, kid, algorithm and timeline.
pub(super) async fn sealed_record(
    kek: &dyn Kek,
    ring: &RingName,
    key: &LoadedKey,
    timeline: Timeline,
) -> Result<KeyRecord, Error> {
    let kid = key.key.kid();
    let ctx = KeyContext {
        ring,
        kid: &kid,
        alg: key.key.alg(),
        timeline: &timeline,
    };
    let sealed = envelope::seal(kek, ctx, &key.key)
        .await
        .map_err(|e| super::unseal::seal_error(e, ring, &kid))?;
    Ok(KeyRecord {
        jwk: key.key.jwk().clone(),
        kid,
        timeline,
        sealed: Some(sealed),
    })
}
