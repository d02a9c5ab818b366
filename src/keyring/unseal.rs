//! Sealing and unsealing: the KEK check value, opening every sealed key,
//! dropping every key from memory, and re-wrapping under a new KEK.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::{KeyManager, KeySet, Ring, RingName, keyset::LoadedKey, vet::Vetted};
use crate::{
    Error,
    crypto::Kid,
    seal::{Kek, KeyContext, SealError, envelope},
    store::{KeyStore, StoreError},
};

/// What Operator.Status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// No KEK and no private key in memory.
    pub sealed: bool,
    /// KEK provider kind (`file`, `env`, `pkcs11`, `ephemeral`).
    pub kek_kind: &'static str,
    /// KEK provider description, without secrets.
    pub kek_provider: String,
    /// Store kind (`sqlite`, `memory`, ...).
    pub store_kind: &'static str,
    /// Number of rings.
    pub rings: usize,
    /// Keys with sealed material (not destroyed).
    pub keys: usize,
    /// Keys loaded in memory, ready to sign.
    pub loaded_keys: usize,
    /// Keys whose sealed record failed its integrity check.
    pub broken_keys: usize,
}

/// What [`open_ring`] does when the KEK itself fails on a key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum OnKekError {
    /// Fail the whole ring (unseal: all or nothing, the service stays sealed).
    Abort,
    /// Leave that key unopened and go on (refresh: the ring's tombstones and
    /// timeline changes must apply even while the KEK hiccups; the key is
    /// retried on the next refresh).
    Skip,
}

/// Builds a ring from its stored record, opening every sealed key under
/// `kek` (`None` while sealed: nothing is opened). Keys whose record is
/// unchanged from `previous` are reused, not opened again. A record that
/// fails its integrity check is marked broken (never loaded or published).
/// A KEK failure aborts or skips that key, as `on_kek_error` says; a key
/// left unopened is neither loaded nor broken, so Sign answers UNAVAILABLE
/// for it, and it stays published only if this process verified the same
/// public key before.
pub(super) async fn open_ring(
    kek: Option<&dyn Kek>,
    record: crate::store::RingRecord,
    previous: Option<&Ring>,
    on_kek_error: OnKekError,
) -> Result<Ring, Error> {
    let mut ring = Ring {
        record,
        loaded: HashMap::new(),
        verified: HashSet::new(),
        broken: HashSet::new(),
        refused: None,
    };
    for key in &ring.record.keys {
        let Some(blob) = &key.sealed else {
            continue; // destroyed: a tombstone
        };
        let old = previous.and_then(|p| p.record.keys.iter().find(|k| k.kid == key.kid));
        if let (Some(prev), Some(old)) = (previous, old)
            && old.sealed.as_ref() == Some(blob)
            && old.timeline == key.timeline
        {
            if let Some(loaded) = prev.loaded.get(&key.kid) {
                ring.loaded.insert(key.kid.clone(), loaded.clone());
                ring.verified.insert(key.kid.clone());
                continue;
            }
            if prev.broken.contains(&key.kid) {
                ring.broken.insert(key.kid.clone());
                continue;
            }
        }
        // The public key was proven by opening its sealed record before.
        let verified_before = previous.is_some_and(|p| p.verified.contains(&key.kid))
            && old.is_some_and(|o| o.jwk == key.jwk);
        let Some(kek) = kek else {
            if verified_before {
                ring.verified.insert(key.kid.clone());
            }
            continue;
        };
        let ctx = KeyContext {
            ring: &ring.record.name,
            kid: &key.kid,
            alg: ring.record.spec.alg(),
            timeline: &key.timeline,
        };
        match envelope::open(kek, ctx, blob).await {
            Ok(opened) if opened.jwk() == &key.jwk => {
                ring.verified.insert(key.kid.clone());
                ring.loaded
                    .insert(key.kid.clone(), Arc::new(LoadedKey::new(opened)));
            }
            Ok(_) | Err(SealError::Integrity) => {
                tracing::error!(
                    ring = %ring.record.name,
                    kid = %key.kid,
                    "sealed record failed its integrity check; the key is not loaded or published"
                );
                ring.broken.insert(key.kid.clone());
            }
            Err(SealError::Kek(e)) if on_kek_error == OnKekError::Abort => {
                return Err(Error::Kek(e));
            }
            Err(SealError::Kek(e)) => {
                tracing::warn!(
                    ring = %ring.record.name,
                    kid = %key.kid,
                    error = %e,
                    "cannot open this key now (KEK unavailable); the ring's other changes apply, \
                     and the key is retried on the next refresh"
                );
                if verified_before {
                    ring.verified.insert(key.kid.clone());
                }
            }
        }
    }
    Ok(ring)
}

/// Whether `ring` holds a sealed key that is neither loaded nor broken: one
/// a KEK failure left unopened, to retry.
fn has_unopened(ring: &Ring) -> bool {
    ring.record.keys.iter().any(|k| {
        k.sealed.is_some() && !ring.loaded.contains_key(&k.kid) && !ring.broken.contains(&k.kid)
    })
}

/// Maps a sealing failure for one key to the service error.
pub(super) fn seal_error(e: SealError, ring: &RingName, kid: &Kid) -> Error {
    match e {
        SealError::Kek(e) => Error::Kek(e),
        SealError::Integrity => Error::DataLoss {
            ring: ring.clone(),
            kid: kid.clone(),
        },
    }
}

/// Checks that `kek` is this store's KEK, initialising the check value of a
/// store that has none yet. Nothing is written unless the store is new.
async fn check_kek(store: &dyn KeyStore, kek: &dyn Kek, describe: &str) -> Result<(), Error> {
    let check = match store.kek_check().await? {
        Some(check) => check,
        None => {
            // A store that holds sealed keys but no check value has lost it;
            // refuse rather than adopt whatever KEK arrives first.
            let rings = store.load().await?;
            if let Some((ring, key)) = rings
                .iter()
                .find_map(|r| r.keys.iter().find(|k| k.sealed.is_some()).map(|k| (r, k)))
            {
                return Err(Error::DataLoss {
                    ring: ring.name.clone(),
                    kid: key.kid.clone(),
                });
            }
            let check = envelope::make_check(kek).await.map_err(Error::Kek)?;
            match store.init_kek_check(&check).await {
                Ok(()) => return Ok(()),
                // Another process initialised it first: verify against theirs.
                Err(StoreError::KekCheckExists) => store
                    .kek_check()
                    .await?
                    .ok_or(Error::WrongKek(describe.into()))?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    if envelope::verify_check(kek, &check)
        .await
        .map_err(Error::Kek)?
    {
        Ok(())
    } else {
        Err(Error::WrongKek(describe.into()))
    }
}

impl KeyManager {
    /// Opens the KEK through the configured provider, checks it against the
    /// store's check value before touching any key, and opens every sealed
    /// key. A record that fails its integrity check is marked broken (Sign
    /// on its ring answers DATA_LOSS while it is the Active key) and the
    /// other rings keep working. On any KEK failure nothing changes and the
    /// service stays sealed.
    pub async fn unseal(&self) -> Result<Status, Error> {
        let _writer = self.shared.writer.lock().await;
        if self.kek().is_some() {
            return Ok(self.status());
        }
        let describe = self.shared.kek_provider.describe();
        let kek = self.shared.kek_provider.open().await.map_err(Error::Kek)?;
        check_kek(self.store(), &*kek, &describe).await?;

        if let Some(file) = self.legacy_audit_key_file() {
            adopt_legacy_audit_key(self.store(), &*kek, &file).await?;
        }
        let manifest_key = Arc::new(store_secret(self.store(), &*kek).await?.manifest_key());
        let mut rings = HashMap::new();
        let mut trusted = Vec::new();
        for record in self.store().load().await? {
            let ring = match self.vet(&manifest_key, record, None).await? {
                Vetted::Trusted(record) => {
                    trusted.push((record.name.clone(), record.generation));
                    open_ring(Some(&*kek), record, None, OnKekError::Abort).await?
                }
                Vetted::Refused(ring) => ring,
            };
            rings.insert(ring.record.name.clone(), Arc::new(ring));
        }
        self.saw_generations(trusted.iter().map(|(n, g)| (n, *g)));
        self.install_all(KeySet { rings });
        self.set_manifest_key(Some(manifest_key));
        self.set_kek(Some(kek));
        self.mark_fresh();
        let status = self.status();
        tracing::info!(
            kek = %describe,
            keys = status.loaded_keys,
            broken = status.broken_keys,
            "unsealed"
        );
        Ok(status)
    }

    /// Drops the KEK and every private key from memory now. Sign answers
    /// UNAVAILABLE until [`KeyManager::unseal`]. Keys that were verified stay
    /// published, so verifiers keep working.
    pub async fn seal(&self) -> Status {
        let _writer = self.shared.writer.lock().await;
        self.set_kek(None);
        self.set_manifest_key(None);
        let current = self.snapshot();
        let rings = current
            .rings
            .iter()
            .map(|(name, r)| {
                let ring = Ring {
                    record: r.record.clone(),
                    loaded: HashMap::new(),
                    verified: r.verified.clone(),
                    broken: r.broken.clone(),
                    refused: r.refused.clone(),
                };
                (name.clone(), Arc::new(ring))
            })
            .collect();
        // Each key is wiped when its last user (an in-flight Sign) lets go.
        self.install_all(KeySet { rings });
        tracing::warn!("sealed: the KEK and every private key were dropped from memory");
        self.status()
    }

    /// The service's seal state and inventory.
    pub fn status(&self) -> Status {
        let set = self.snapshot();
        let rings = set.rings();
        Status {
            sealed: self.is_sealed(),
            kek_kind: self.shared.kek_provider.kind(),
            kek_provider: self.shared.kek_provider.describe(),
            store_kind: self.store_kind(),
            rings: rings.len(),
            keys: rings
                .iter()
                .map(|r| r.record.keys.iter().filter(|k| k.sealed.is_some()).count())
                .sum(),
            loaded_keys: rings.iter().map(|r| r.loaded.len()).sum(),
            broken_keys: rings.iter().map(|r| r.broken.len()).sum(),
        }
    }
}

impl KeyManager {
    /// The audit HMAC key: kept in the store, wrapped by the KEK, one per
    /// store so that every replica digests the same value the same way.
    /// Made on first use; of replicas starting together, the first to store
    /// one wins and all use it. An audit key file left at `legacy_file` by
    /// an earlier version (one per data directory) is moved into the store
    /// if the store has none yet, then removed. Needs the service unsealed.
    pub async fn audit_key(
        &self,
        legacy_file: &std::path::Path,
    ) -> Result<crate::audit::AuditKey, Error> {
        let kek = self.kek().ok_or(Error::Sealed)?;
        adopt_legacy_audit_key(self.store(), &*kek, legacy_file).await?;
        self.load_audit_key().await
    }

    /// The store's audit HMAC key (made on first use, see
    /// [`KeyManager::audit_key`]), without looking for a legacy file: what
    /// Unseal loads again. Needs the service unsealed.
    pub async fn load_audit_key(&self) -> Result<crate::audit::AuditKey, Error> {
        let kek = self.kek().ok_or(Error::Sealed)?;
        store_secret(self.store(), &*kek).await
    }
}

/// The store's audit key (32 random bytes wrapped by the KEK, made on first
/// use: of replicas starting together the first to store one wins), opened
/// under `kek`. It digests audit records and is the root the checkpoint
/// signer and the ring manifest key are derived from.
async fn store_secret(
    store: &dyn KeyStore,
    kek: &dyn Kek,
) -> Result<crate::audit::AuditKey, Error> {
    use crate::audit::AuditKey;
    let wrapped = match store.audit_key().await? {
        Some(wrapped) => wrapped,
        None => {
            let key = zeroize::Zeroizing::new(
                crate::crypto::random_bytes::<32>()
                    .map_err(|_| kek_unavailable("audit key: no randomness".into()))?,
            );
            let wrapped = kek
                .wrap(&key, AuditKey::WRAP_AAD)
                .await
                .map_err(Error::Kek)?;
            store.init_audit_key(&wrapped).await?
        }
    };
    let key = kek
        .unwrap(&wrapped, AuditKey::WRAP_AAD)
        .await
        .map_err(|_| {
            kek_unavailable("the store's audit key does not open under this KEK".into())
        })?;
    Ok(AuditKey::from_bytes(key))
}

fn kek_unavailable(what: String) -> Error {
    Error::Kek(crate::seal::KekError::Unavailable(what))
}

/// Moves an audit key file written by an earlier version (wrapped by `kek`)
/// into `store`, unless the store holds one already, and removes the file.
/// A file that does not open under `kek` is left alone and refused.
pub async fn adopt_legacy_audit_key(
    store: &dyn KeyStore,
    kek: &dyn Kek,
    file: &std::path::Path,
) -> Result<(), Error> {
    use crate::audit::AuditKey;
    let Ok(wrapped) = std::fs::read(file) else {
        return Ok(());
    };
    kek.unwrap(&wrapped, AuditKey::WRAP_AAD)
        .await
        .map_err(|_| {
            kek_unavailable(format!(
                "audit key file {}: does not open under this KEK",
                file.display()
            ))
        })?;
    let stored = store.init_audit_key(&wrapped).await?;
    if stored == wrapped {
        tracing::info!(file = %file.display(), "audit key moved from its file into the store");
    } else {
        tracing::warn!(
            file = %file.display(),
            "the store holds an audit key already (another replica's); this data directory's \
             is dropped, so digests written here before differ from those written from now on"
        );
    }
    std::fs::remove_file(file).map_err(|e| {
        kek_unavailable(format!(
            "audit key file {}: in the store now, but cannot remove the file: {e}",
            file.display()
        ))
    })
}

impl KeyManager {
    /// Re-reads the store and takes in whatever other writers (replicas
    /// sharing the store) changed: new keys, new timelines, destroyed
    /// material, new rings. Unchanged rings and keys are kept as they are.
    /// A key whose sealed record cannot be opened now (the KEK fails) is
    /// left unopened and retried on the next refresh, and every other
    /// change, tombstones and timelines included, applies regardless. While
    /// sealed, public records are still taken in (a revoked key leaves the
    /// JWKS) and nothing is opened. Returns how many rings changed; a
    /// successful read resets the staleness clock.
    pub async fn refresh(&self) -> Result<usize, Error> {
        let _writer = self.shared.writer.lock().await;
        let kek = self.kek();
        let manifest_key = self.manifest_key();
        let current = self.snapshot();
        let mut rings = current.rings.clone();
        let mut changed = 0;
        let mut trusted = Vec::new();
        for record in self.store().load().await? {
            let prev = current.ring(&record.name);
            if prev.is_some_and(|p| {
                p.record.generation == record.generation
                    && p.refused.is_none()
                    && (kek.is_none() || !has_unopened(p))
            }) {
                continue;
            }
            let ring = match (&kek, &manifest_key) {
                (Some(kek), Some(key)) => match self.vet(key, record, prev.map(|p| &**p)).await? {
                    Vetted::Trusted(record) => {
                        trusted.push((record.name.clone(), record.generation));
                        open_ring(Some(&**kek), record, prev.map(|p| &**p), OnKekError::Skip)
                            .await?
                    }
                    Vetted::Refused(ring) => ring,
                },
                _ => match self.sealed_view(record, prev.map(|p| &**p)) {
                    Some(record) => {
                        open_ring(None, record, prev.map(|p| &**p), OnKekError::Skip).await?
                    }
                    None => continue,
                },
            };
            if ring.refused.is_none() {
                tracing::info!(ring = %ring.record.name, generation = ring.record.generation, "ring refreshed from the store");
            }
            rings.insert(ring.record.name.clone(), Arc::new(ring));
            changed += 1;
        }
        self.saw_generations(trusted.iter().map(|(n, g)| (n, *g)));
        if changed > 0 {
            self.install_all(KeySet { rings });
        }
        self.mark_fresh();
        Ok(changed)
    }
}

/// Re-wraps every data key in `store` and its audit key from `old` to `new`
/// and replaces the KEK check value, in one store transaction. Afterwards only `new` opens
/// the store. Refuses (changing nothing) if `old` is not the store's KEK or
/// any sealed record fails to open. Returns the number of keys re-wrapped.
pub async fn rekey(
    store: &dyn KeyStore,
    old: &dyn Kek,
    old_describe: &str,
    new: &dyn Kek,
) -> Result<usize, Error> {
    check_kek(store, old, old_describe).await?;
    // Only what the manifests vouch for is re-wrapped, and each ring gets
    // the manifest of its next generation (the one the rekey writes). A
    // store without an audit key has no manifests yet: the next Unseal
    // writes them.
    let manifest_key = match store.audit_key().await? {
        Some(_) => Some(store_secret(store, old).await?.manifest_key()),
        None => None,
    };
    let mut rings = Vec::new();
    for record in store.load().await? {
        let record = match (&manifest_key, &record.manifest) {
            (Some(key), Some(_)) => {
                key.check(record.clone())
                    .map_err(|refusal| Error::RingRefused {
                        ring: record.name.clone(),
                        reason: refusal.to_string(),
                    })?
                    .record
            }
            _ => record,
        };
        rings.push(record);
    }
    let mut count = 0;
    for ring in &mut rings {
        let alg = ring.spec.alg();
        for key in &mut ring.keys {
            let Some(blob) = &key.sealed else { continue };
            let ctx = KeyContext {
                ring: &ring.name,
                kid: &key.kid,
                alg,
                timeline: &key.timeline,
            };
            let rewrapped = envelope::rewrap(old, new, ctx, blob)
                .await
                .map_err(|e| seal_error(e, &ring.name, &key.kid))?;
            crate::fault!("rekey-rewrap");
            key.sealed = Some(rewrapped);
            count += 1;
        }
        if let Some(key) = &manifest_key {
            let mut next = ring.clone();
            next.generation += 1;
            ring.manifest = Some(key.seal(&next));
        }
    }
    // The audit key goes over to the new KEK in the same transaction.
    let audit_key = match store.audit_key().await? {
        Some(wrapped) => {
            use crate::audit::AuditKey;
            let key = old
                .unwrap(&wrapped, AuditKey::WRAP_AAD)
                .await
                .map_err(|_| {
                    kek_unavailable(
                        "the store's audit key does not open under the current KEK".into(),
                    )
                })?;
            Some(
                new.wrap(&key, AuditKey::WRAP_AAD)
                    .await
                    .map_err(Error::Kek)?,
            )
        }
        None => None,
    };
    let check = envelope::make_check(new).await.map_err(Error::Kek)?;
    store.rekey(&check, audit_key.as_deref(), &rings).await?;
    Ok(count)
}
