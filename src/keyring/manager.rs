//! [`KeyManager`]: the shared handle over store, clock and key snapshot.

use std::{collections::HashMap, sync::Arc, thread};

use arc_swap::ArcSwap;

use super::{
    KeyInfo, KeySet, Policy, Ring, RingName, Timeline,
    keyset::{JwkSet, LoadedKey},
};
use crate::{
    Error,
    clock::{Clock, UnixTime},
    crypto::{KeySpec, SigningKey},
    store::{KeyRecord, KeyStore, RingRecord, RingUpdate},
};

/// A cheap-to-clone handle to the key rings.
///
/// Reads (Sign, GetJwks, ListKeys) load the current [`KeySet`] snapshot
/// through an atomic pointer and take no lock. Writes (create, rotate) are
/// serialized by an async mutex within the process, go through the store's
/// generation compare-and-swap, and only then publish a new snapshot.
#[derive(Clone)]
pub struct KeyManager {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    snapshot: ArcSwap<KeySet>,
    /// One writer at a time in this process, so local writers never lose the
    /// store's CAS to each other; other processes are still fenced by it.
    /// Held across `.await` (key generation, store I/O), hence tokio's mutex.
    writer: tokio::sync::Mutex<()>,
    /// Runs CPU-heavy signing (RSA) off the async reactor.
    pool: rayon::ThreadPool,
}

/// The public view of a ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingInfo {
    /// Ring name.
    pub name: RingName,
    /// Algorithm and key size.
    pub spec: KeySpec,
    /// Token lifetimes and grace period.
    pub policy: Policy,
    /// Every key with its state.
    pub keys: Vec<KeyInfo>,
}

impl KeyManager {
    /// Loads every ring from `store`. Private material is not in the store
    /// yet, so keys loaded here can be published but not used to sign.
    pub async fn open(store: Arc<dyn KeyStore>, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        let records = store.load().await?;
        let rings = records
            .into_iter()
            .map(|record| {
                let ring = Ring {
                    record,
                    loaded: HashMap::new(),
                };
                (ring.record.name.clone(), Arc::new(ring))
            })
            .collect();
        let threads = thread::available_parallelism().map_or(2, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("signet-sign-{i}"))
            .build()
            .map_err(|_| Error::ShuttingDown)?;
        Ok(Self {
            shared: Arc::new(Shared {
                store,
                clock,
                snapshot: ArcSwap::from_pointee(KeySet { rings }),
                writer: tokio::sync::Mutex::new(()),
                pool,
            }),
        })
    }

    /// The current snapshot of every ring.
    pub fn snapshot(&self) -> Arc<KeySet> {
        self.shared.snapshot.load_full()
    }

    /// The service clock's current time.
    pub fn now(&self) -> UnixTime {
        self.shared.clock.now()
    }

    /// The kind of store behind this manager.
    pub fn store_kind(&self) -> &'static str {
        self.shared.store.kind()
    }

    /// The ring named `name`; `field` names the request field in errors.
    pub fn ring(&self, name: &str, field: &str) -> Result<Arc<Ring>, Error> {
        let name = RingName::parse(name, field)?;
        self.shared
            .snapshot
            .load()
            .ring(&name)
            .cloned()
            .ok_or_else(|| Error::RingNotFound(name.to_string()))
    }

    /// The ring's policy and keys.
    pub fn ring_info(&self, name: &str, field: &str) -> Result<RingInfo, Error> {
        let ring = self.ring(name, field)?;
        Ok(info(&ring, self.now()))
    }

    /// The ring's JWKS and the keys in it.
    pub fn jwks(&self, name: &str, field: &str) -> Result<(JwkSet, Vec<KeyInfo>), Error> {
        let ring = self.ring(name, field)?;
        let now = self.now();
        let infos = ring
            .key_infos(now)
            .into_iter()
            .filter(|k| k.state.is_published())
            .collect();
        Ok((ring.jwks(now), infos))
    }

    /// Creates a ring with one key that is published and active at once.
    pub async fn create_ring(&self, name: &str, spec: KeySpec) -> Result<RingInfo, Error> {
        let name = RingName::parse(name, "name")?;
        let _writer = self.shared.writer.lock().await;
        if self.shared.snapshot.load().ring(&name).is_some() {
            return Err(Error::RingExists(name));
        }
        let key = self.generate(spec).await?;
        let now = self.now();
        let record = RingRecord {
            name: name.clone(),
            spec,
            policy: Policy::default(),
            generation: 1,
            keys: vec![KeyRecord {
                kid: key.kid(),
                jwk: key.jwk().clone(),
                timeline: Timeline::immediate(now),
                sealed: None,
            }],
        };
        self.shared.store.create_ring(&record).await?;
        tracing::info!(ring = %name, alg = %spec, kid = %key.kid(), "key ring created");
        let ring = Ring {
            loaded: HashMap::from([(key.kid(), Arc::new(LoadedKey::new(key)))]),
            record,
        };
        let out = info(&ring, now);
        self.install(ring);
        Ok(out)
    }

    /// Generates a new key that is published and signs from now on. The key
    /// that was Active retires now and stays in the JWKS for the ring's grace
    /// period. Returns the new key and the one it replaced, if any.
    pub async fn rotate(&self, name: &str) -> Result<(KeyInfo, Option<KeyInfo>), Error> {
        let name = RingName::parse(name, "key_ring")?;
        let _writer = self.shared.writer.lock().await;
        let ring = self
            .shared
            .snapshot
            .load()
            .ring(&name)
            .cloned()
            .ok_or_else(|| Error::RingNotFound(name.to_string()))?;
        let key = self.generate(ring.record.spec).await?;
        // Read the clock after generation, which can take a while for RSA.
        let now = self.now();
        let new = KeyRecord {
            kid: key.kid(),
            jwk: key.jwk().clone(),
            timeline: Timeline::immediate(now),
            sealed: None,
        };
        let retired = ring.active_at(now).map(|old| {
            let mut old = old.clone();
            old.timeline.retire_at = Some(now);
            old.timeline.remove_at = Some(now.saturating_add(ring.record.policy.grace));
            old
        });
        let update = RingUpdate {
            ring: name.clone(),
            expected_generation: ring.record.generation,
            insert: vec![new.clone()],
            update: retired.iter().cloned().collect(),
        };
        let generation = self.shared.store.update_ring(&update).await?;

        let mut record = ring.record.clone();
        record.generation = generation;
        let mut old_info = None;
        if let Some(changed) = &retired
            && let Some(k) = record.keys.iter_mut().find(|k| k.kid == changed.kid)
        {
            *k = changed.clone();
            old_info = Some(key_info(k, record.spec, now));
        }
        let new_info = key_info(&new, record.spec, now);
        record.keys.push(new);
        let mut loaded = ring.loaded.clone();
        loaded.insert(key.kid(), Arc::new(LoadedKey::new(key)));
        tracing::info!(
            ring = %name,
            new_kid = %new_info.kid,
            old_kid = old_info.as_ref().map_or("-", |k| k.kid.as_str()),
            "key ring rotated"
        );
        self.install(Ring { record, loaded });
        Ok((new_info, old_info))
    }

    /// Generates a key off the reactor: RSA generation takes up to a second
    /// and must not stall signing.
    async fn generate(&self, spec: KeySpec) -> Result<SigningKey, Error> {
        tokio::task::spawn_blocking(move || SigningKey::generate(spec))
            .await
            .map_err(|_| Error::ShuttingDown)?
            .map_err(Error::from)
    }

    /// Publishes a new snapshot with `ring` replacing its previous version.
    /// Only called with the writer lock held, so no update is lost.
    fn install(&self, ring: Ring) {
        let current = self.shared.snapshot.load();
        let mut rings = current.rings.clone();
        rings.insert(ring.record.name.clone(), Arc::new(ring));
        self.shared.snapshot.store(Arc::new(KeySet { rings }));
    }

    /// Runs `f` on the signing pool and waits for its result.
    pub(crate) async fn on_pool<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.pool.spawn(move || {
            // The receiver is gone only if the request was cancelled.
            let _ = tx.send(f());
        });
        rx.await.map_err(|_| Error::ShuttingDown)
    }
}

fn key_info(k: &KeyRecord, spec: KeySpec, now: UnixTime) -> KeyInfo {
    KeyInfo {
        kid: k.kid.clone(),
        alg: spec.alg(),
        state: k.timeline.state_at(now),
        timeline: k.timeline,
    }
}

fn info(ring: &Ring, now: UnixTime) -> RingInfo {
    RingInfo {
        name: ring.record.name.clone(),
        spec: ring.record.spec,
        policy: ring.record.policy,
        keys: ring.key_infos(now),
    }
}

#[cfg(test)]
mod tests {
    use base64::{
        Engine,
        engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    };

    use super::*;
    use crate::{clock::ManualClock, crypto::Algorithm, keyring::SignParams, store::MemoryStore};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// 32 bytes that are private in a PKCS#8 key. Both the P-256 and the
    /// Ed25519 encodings end with the public key, so find the secret by its
    /// DER prefix: the ECPrivateKey's `version 1, OCTET STRING(32)`, or the
    /// seed's `OCTET STRING(34) { OCTET STRING(32) }`. RSA ends with the
    /// CRT coefficient, which is private.
    fn private_part(alg: Algorithm, der: &[u8]) -> &[u8] {
        let prefix: &[u8] = match alg {
            Algorithm::Es256 => &[0x02, 0x01, 0x01, 0x04, 0x20],
            Algorithm::EdDsa | Algorithm::Ed25519 => &[0x04, 0x22, 0x04, 0x20],
            _ => return &der[der.len() - 32..],
        };
        let at = der.windows(prefix.len()).position(|w| w == prefix).unwrap() + prefix.len();
        &der[at..at + 32]
    }

    /// Every way a private key (or its secret part) could be spelled in text.
    fn forms(alg: Algorithm, der: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for b in [der, private_part(alg, der)] {
            out.push(hex(b));
            out.push(hex(b).to_uppercase());
            out.push(STANDARD.encode(b));
            out.push(URL_SAFE_NO_PAD.encode(b));
            let dbg = format!("{:?}", &b[..12]);
            out.push(dbg.trim_matches(['[', ']']).to_owned());
        }
        out
    }

    /// Invariant 4: no Debug output or error message carries private key
    /// material, across every algorithm and every Sign failure path.
    #[tokio::test]
    async fn private_material_never_in_debug_or_errors() {
        let clock = Arc::new(ManualClock::new(UnixTime::from_secs(1_700_000_000)));
        let keys = KeyManager::open(Arc::new(MemoryStore::new()), clock.clone())
            .await
            .unwrap();
        let mut secrets = Vec::new();
        for (i, alg) in Algorithm::ALL.into_iter().enumerate() {
            let name = format!("r{i}");
            keys.create_ring(&name, KeySpec::new(alg, 0).unwrap())
                .await
                .unwrap();
            keys.rotate(&name).await.unwrap();
            let snap = keys.snapshot();
            let ring = snap.ring(&RingName::parse(&name, "n").unwrap()).unwrap();
            for loaded in ring.loaded.values() {
                secrets.push((alg, loaded.key.to_pkcs8().unwrap()));
            }
        }
        let mut texts = vec![format!("{:?}", keys.snapshot())];
        for ring in keys.snapshot().rings() {
            texts.push(format!("{ring:?}"));
            texts.push(format!("{:?}", ring.key_infos(keys.now())));
            texts.push(format!(
                "{:?}",
                keys.ring_info(ring.name().as_str(), "r").unwrap()
            ));
        }
        let bad_inputs: [(&str, &[u8], &[u8]); 5] = [
            ("r0", b"[]", b""),
            ("r0", br#"{"a":1,"a":2}"#, b""),
            ("r1", b"{}", br#"{"alg":"none"}"#),
            ("nope", b"{}", b""),
            ("Bad", b"{}", b""),
        ];
        for (ring, claims, header) in bad_inputs {
            let e = keys
                .sign(SignParams {
                    ring,
                    claims_json: claims,
                    ttl: None,
                    header_json: header,
                })
                .await
                .unwrap_err();
            texts.push(format!("{e} {e:?}"));
            let status = tonic::Status::from(e);
            texts.push(format!("{} {status:?}", status.message()));
        }
        texts.push(format!("{:?}", crate::crypto::CryptoError));
        assert!(secrets.len() >= 10);
        for (alg, der) in &secrets {
            for form in forms(*alg, der) {
                for text in &texts {
                    assert!(
                        !text.contains(&form),
                        "{alg} private key material {form:?} in output"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn rotation_uses_the_clock() {
        let clock = Arc::new(ManualClock::new(UnixTime::from_secs(1_000_000)));
        let keys = KeyManager::open(Arc::new(MemoryStore::new()), clock.clone())
            .await
            .unwrap();
        keys.create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
            .await
            .unwrap();
        clock.advance(std::time::Duration::from_secs(100));
        let (new, old) = keys.rotate("r").await.unwrap();
        let old = old.unwrap();
        assert_eq!(new.timeline.activate_at.as_secs(), 1_000_100);
        assert_eq!(
            old.timeline.retire_at.map(UnixTime::as_secs),
            Some(1_000_100)
        );
        assert_eq!(
            old.timeline.remove_at.map(UnixTime::as_secs),
            Some(1_000_100 + 7 * 86_400)
        );
        // After the grace period the old key leaves the JWKS.
        clock.advance(std::time::Duration::from_secs(7 * 86_400));
        let (set, infos) = keys.jwks("r", "r").unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(infos[0].kid, new.kid);
    }
}
