//! [`KeyManager`]: the shared handle over store, clock, KEK and key snapshot.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    thread,
};

use arc_swap::ArcSwap;

use super::{
    KeyInfo, KeySet, Policy, Ring, RingName,
    keyset::{JwkSet, LoadedKey},
    manifest::{Generations, ManifestKey},
};
use crate::{
    Error,
    clock::{Clock, UnixTime},
    crypto::KeySpec,
    seal::{Kek, KekProvider},
    store::{KeyRecord, KeyStore},
};

/// A cheap-to-clone handle to the key rings.
///
/// Reads (Sign, GetJwks, ListKeys) load the current [`KeySet`] snapshot
/// through an atomic pointer and take no lock. Writes (create, rotate, seal,
/// unseal) are serialized by an async mutex within the process, go through
/// the store's generation compare-and-swap, and only then publish a new
/// snapshot.
#[derive(Clone)]
pub struct KeyManager {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) store: Arc<dyn KeyStore>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) kek_provider: Arc<dyn KekProvider>,
    /// The open KEK; `None` while sealed. A std mutex: only cloned in and
    /// out, never held across `.await`.
    pub(super) kek: Mutex<Option<Arc<dyn Kek>>>,
    pub(super) snapshot: ArcSwap<KeySet>,
    /// One writer at a time in this process, so local writers never lose the
    /// store's CAS to each other; other processes are still fenced by it.
    /// Held across `.await` (key generation, KEK and store I/O), hence
    /// tokio's mutex.
    pub(super) writer: tokio::sync::Mutex<()>,
    /// Runs CPU-heavy signing (RSA) off the async reactor.
    pool: rayon::ThreadPool,
    /// Smallest publish_lead a policy may have, in seconds: replicas must
    /// all publish a key long before any signs with it (set from the
    /// refresh interval; 0 for a single process).
    min_publish_lead: std::sync::atomic::AtomicU64,
    /// Bumped whenever a new snapshot is installed, so watchers (WatchJwks,
    /// the HTTP JWKS cache) learn of writes at once.
    changes: tokio::sync::watch::Sender<u64>,
    /// How current the snapshot is, for a replica of a shared store.
    freshness: Freshness,
    /// The key ring manifests are tagged with (see `manifest`): present
    /// exactly while the KEK is. A std mutex, as for `kek`.
    manifest_key: Mutex<Option<Arc<ManifestKey>>>,
    /// The highest manifest generation seen per ring, kept in the data
    /// directory once [`KeyManager::track_generations`] names the file.
    /// Only touched with the writer lock held.
    pub(super) generations: Mutex<Generations>,
    /// Where an earlier version kept the audit key (one per data
    /// directory), to move into the store at Unseal before anything is
    /// derived from the store's key.
    legacy_audit_key: Mutex<Option<std::path::PathBuf>>,
}

/// When this process last read the whole store, and how old that may get
/// before it stops signing (`store.max_staleness`). Atomics, not a lock:
/// Sign reads them on every call.
struct Freshness {
    /// The zero of the two clocks below; monotonic, so a wall-clock jump
    /// neither hides nor fakes an outage.
    base: std::time::Instant,
    /// Milliseconds since `base` of the last successful refresh.
    last_ok_ms: std::sync::atomic::AtomicU64,
    /// The bound in milliseconds; 0 = never stale (a single process that
    /// is its own store).
    max_ms: std::sync::atomic::AtomicU64,
}

impl Freshness {
    fn new() -> Self {
        Self {
            base: std::time::Instant::now(),
            last_ok_ms: std::sync::atomic::AtomicU64::new(0),
            max_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
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
    /// Loads every ring's public records from `store`. The manager starts
    /// sealed: call [`KeyManager::unseal`] to open the KEK and the keys.
    pub async fn open(
        store: Arc<dyn KeyStore>,
        clock: Arc<dyn Clock>,
        kek_provider: Arc<dyn KekProvider>,
    ) -> Result<Self, Error> {
        let records = store.load().await?;
        let rings = records
            .into_iter()
            .map(|record| {
                let ring = Ring {
                    record,
                    loaded: HashMap::new(),
                    verified: HashSet::new(),
                    broken: HashSet::new(),
                    refused: None,
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
                kek_provider,
                kek: Mutex::new(None),
                snapshot: ArcSwap::from_pointee(KeySet { rings }),
                writer: tokio::sync::Mutex::new(()),
                pool,
                min_publish_lead: std::sync::atomic::AtomicU64::new(0),
                changes: tokio::sync::watch::Sender::new(0),
                freshness: Freshness::new(),
                manifest_key: Mutex::new(None),
                generations: Mutex::new(Generations::default()),
                legacy_audit_key: Mutex::new(None),
            }),
        })
    }

    /// An unsealed manager whose keys live only in this process: a memory
    /// store and an ephemeral KEK. For tests and the in-process benchmark.
    pub async fn ephemeral(clock: Arc<dyn Clock>) -> Result<Self, Error> {
        let kek = crate::seal::EphemeralKek::new().map_err(Error::Kek)?;
        let keys = Self::open(
            Arc::new(crate::store::MemoryStore::new()),
            clock,
            Arc::new(kek),
        )
        .await?;
        keys.unseal().await?;
        Ok(keys)
    }

    /// Requires every policy's `publish_lead` to be at least `lead` (set to
    /// a multiple of the replicas' refresh interval).
    pub fn set_min_publish_lead(&self, lead: std::time::Duration) {
        self.shared
            .min_publish_lead
            .store(lead.as_secs(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes this manager a replica of a shared store: once its last
    /// successful [`KeyManager::refresh`] (or unseal) is older than `max`,
    /// Sign and the JWKS answer [`Error::Stale`] until a refresh succeeds.
    /// `None` turns the bound off (a store only this process writes). The
    /// clock starts now: the records were just read by [`KeyManager::open`].
    pub fn set_max_staleness(&self, max: Option<std::time::Duration>) {
        use std::sync::atomic::Ordering::Relaxed;
        let f = &self.shared.freshness;
        f.last_ok_ms.store(f.now_ms(), Relaxed);
        let ms = max.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        f.max_ms.store(ms, Relaxed);
    }

    /// The configured staleness bound, if any.
    pub fn max_staleness(&self) -> Option<std::time::Duration> {
        match self
            .shared
            .freshness
            .max_ms
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        }
    }

    /// Records that the whole store was just read.
    pub(super) fn mark_fresh(&self) {
        let f = &self.shared.freshness;
        f.last_ok_ms
            .store(f.now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the store was last read in full.
    pub fn since_refresh(&self) -> std::time::Duration {
        let f = &self.shared.freshness;
        let last = f.last_ok_ms.load(std::sync::atomic::Ordering::Relaxed);
        std::time::Duration::from_millis(f.now_ms().saturating_sub(last))
    }

    /// `Err(Error::Stale)` once the last successful refresh is older than
    /// the bound: keys revoked on another replica since then may still be
    /// held here, so this replica must not sign or publish.
    pub fn check_fresh(&self) -> Result<(), Error> {
        match self.max_staleness() {
            Some(max) if self.since_refresh() > max => Err(Error::Stale(max)),
            _ => Ok(()),
        }
    }

    /// One line per ring whose `grace` or `publish_lead` is not longer than
    /// the staleness bound: a replica could then keep signing with, or keep
    /// publishing, a key past the point where the others dropped it.
    pub fn staleness_warnings(&self) -> Vec<String> {
        let Some(max) = self.max_staleness() else {
            return Vec::new();
        };
        let show = |d: std::time::Duration| humantime::format_duration(d).to_string();
        let mut out = Vec::new();
        for ring in self.snapshot().rings() {
            let p = &ring.record().policy;
            for (field, value) in [("grace", p.grace), ("publish_lead", p.publish_lead)] {
                if value <= max {
                    out.push(format!(
                        "ring {}: {field} {} is not longer than store.max_staleness {}: a \
                         replica cut off from the store could act on a key the others have \
                         already moved past; raise {field} with `signet policy set` or lower \
                         store.max_staleness",
                        ring.name(),
                        show(value),
                        show(max)
                    ));
                }
            }
        }
        out
    }

    /// The smallest publish_lead a policy may have.
    pub fn min_publish_lead(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.shared
                .min_publish_lead
                .load(std::sync::atomic::Ordering::Relaxed),
        )
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

    /// The configured KEK provider, e.g. `file:/etc/signet/kek`.
    pub fn kek_provider(&self) -> &dyn KekProvider {
        &*self.shared.kek_provider
    }

    /// Whether the service is sealed (no KEK and no private key in memory).
    pub fn is_sealed(&self) -> bool {
        self.kek().is_none()
    }

    /// The open KEK, if unsealed.
    pub(super) fn kek(&self) -> Option<Arc<dyn Kek>> {
        // A poisoned lock only means a panic elsewhere while cloning an Arc.
        self.shared
            .kek
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_kek(&self, kek: Option<Arc<dyn Kek>>) {
        *self.shared.kek.lock().unwrap_or_else(|p| p.into_inner()) = kek;
    }

    /// The manifest key, while unsealed.
    pub(super) fn manifest_key(&self) -> Option<Arc<ManifestKey>> {
        self.shared
            .manifest_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_manifest_key(&self, key: Option<Arc<ManifestKey>>) {
        *self
            .shared
            .manifest_key
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = key;
    }

    /// Moves the audit key file an earlier version left at `file` into the
    /// store at the next Unseal, if the store holds none yet (see
    /// [`adopt_legacy_audit_key`](super::adopt_legacy_audit_key)).
    pub fn set_legacy_audit_key_file(&self, file: std::path::PathBuf) {
        *self
            .shared
            .legacy_audit_key
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(file);
    }

    pub(super) fn legacy_audit_key_file(&self) -> Option<std::path::PathBuf> {
        self.shared
            .legacy_audit_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps the highest manifest generation seen per ring in `file` (in
    /// the data directory), so a store rolled back while this process was
    /// stopped is caught at its next start too. Call before unsealing.
    pub fn track_generations(&self, file: &std::path::Path) -> Result<(), String> {
        let loaded = Generations::open(file)?;
        *self
            .shared
            .generations
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    /// Records that each ring was trusted at its generation, and writes the
    /// marks down (once) if any rose. Writer lock held. A failed write is
    /// logged, not returned: the changes it follows are committed already.
    pub(super) fn saw_generations<'a>(&self, seen: impl IntoIterator<Item = (&'a RingName, u64)>) {
        let mut gens = self
            .shared
            .generations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut raised = false;
        for (ring, generation) in seen {
            raised |= gens.raise(ring.as_str(), generation);
        }
        if raised && let Err(e) = gens.save() {
            metrics::counter!("signet_generation_record_failures_total").increment(1);
            tracing::error!(
                error = %e,
                "cannot write the ring-generation record in the data directory; a rollback of \
                 the store across a restart would not be caught"
            );
        }
    }

    /// Whether the store answers (a cheap read).
    pub async fn store_ready(&self) -> Result<(), Error> {
        self.shared
            .store
            .kek_check()
            .await
            .map(|_| ())
            .map_err(Error::from)
    }

    /// The audit checkpoint anchored in the store for the audit file
    /// `log`: `(seq, line hash)`.
    pub async fn audit_anchor(&self, log: &str) -> Result<Option<(u64, String)>, Error> {
        let value = self.shared.store.audit_anchor(log).await?;
        Ok(value.and_then(|v| {
            let text = String::from_utf8(v).ok()?;
            let (seq, hash) = text.split_once(' ')?;
            Some((seq.parse().ok()?, hash.to_owned()))
        }))
    }

    /// Anchors the checkpoint `(seq, line hash)` of the audit file `log`
    /// in the store.
    pub async fn set_audit_anchor(&self, log: &str, seq: u64, hash: &str) -> Result<(), Error> {
        self.shared
            .store
            .set_audit_anchor(log, format!("{seq} {hash}").as_bytes())
            .await
            .map_err(Error::from)
    }

    /// Closes the store; call once at shutdown, after serving stopped.
    pub async fn close(&self) {
        self.shared.store.close().await;
    }

    /// The store behind this manager.
    pub(super) fn store(&self) -> &dyn KeyStore {
        &*self.shared.store
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

    /// Every ring's policy and keys, sorted by name.
    pub fn ring_infos(&self) -> Vec<RingInfo> {
        let now = self.now();
        self.snapshot()
            .rings()
            .into_iter()
            .map(|r| info(r, now))
            .collect()
    }

    /// The ring's JWKS and the keys in it.
    pub fn jwks(&self, name: &str, field: &str) -> Result<(JwkSet, Vec<KeyInfo>), Error> {
        let ring = self.ring(name, field)?;
        self.check_fresh()?;
        let now = self.now();
        let infos = ring
            .record
            .keys
            .iter()
            .filter(|k| ring.is_published(k, now))
            .map(|k| key_info(k, ring.record.spec, now))
            .collect();
        Ok((ring.jwks(now), infos))
    }

    /// Publishes a new snapshot with `ring` replacing its previous version.
    /// Only called with the writer lock held, so no update is lost.
    pub(super) fn install(&self, ring: Ring) {
        self.install_arc(Arc::new(ring));
    }

    fn changed(&self) {
        self.shared.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that is notified whenever the key set is written.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Publishes a new snapshot with `ring` (already shared) replacing its
    /// previous version. Writer lock held.
    pub(super) fn install_arc(&self, ring: Arc<Ring>) {
        let current = self.shared.snapshot.load();
        let mut rings = current.rings.clone();
        rings.insert(ring.record.name.clone(), ring);
        self.shared.snapshot.store(Arc::new(KeySet { rings }));
        self.changed();
    }

    /// Replaces the whole snapshot. Writer lock held.
    pub(super) fn install_all(&self, set: KeySet) {
        self.shared.snapshot.store(Arc::new(set));
        self.changed();
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

    /// Verifies `token` against the ring's keys at the service clock's now,
    /// allowing the ring's clock skew. `Ok(Err(_))` is a token that failed,
    /// with its reason; `Err(_)` is a bad request (unknown ring).
    pub fn verify(
        &self,
        ring: &str,
        token: &str,
    ) -> Result<Result<crate::crypto::verify::Verified, crate::crypto::verify::Rejected>, Error>
    {
        use crate::crypto::verify::{self, Lookup};
        let ring = self.ring(ring, "key_ring")?;
        // A stale replica may still hold a key revoked elsewhere: it does not
        // vouch for tokens any more than it signs them.
        self.check_fresh()?;
        let now = self.now();
        let leeway = i64::try_from(ring.record.policy.clock_skew.as_secs()).unwrap_or(0);
        Ok(verify::verify(
            token,
            |kid| match ring.record.keys.iter().find(|k| k.kid.as_str() == kid) {
                Some(k) if k.timeline.revoked_at.is_some() => Lookup::Revoked,
                Some(k) if ring.is_published(k, now) => Lookup::Key(&k.jwk),
                _ => Lookup::Unknown,
            },
            now.as_secs(),
            leeway,
        ))
    }

    /// Loads a fresh key of `spec` into a ring-to-be: generation off the
    /// reactor (RSA takes up to a second and must not stall signing).
    pub(super) async fn generate(&self, spec: KeySpec) -> Result<LoadedKey, Error> {
        crate::fault!("generate");
        tokio::task::spawn_blocking(move || crate::crypto::SigningKey::generate(spec))
            .await
            .map_err(|_| Error::ShuttingDown)?
            .map(LoadedKey::new)
            .map_err(Error::from)
    }
}

pub(super) fn key_info(k: &KeyRecord, spec: KeySpec, now: UnixTime) -> KeyInfo {
    KeyInfo {
        reason: k.reason.clone(),
        kid: k.kid.clone(),
        alg: spec.alg(),
        state: k.timeline.state_at(now),
        timeline: k.timeline,
    }
}

pub(super) fn info(ring: &Ring, now: UnixTime) -> RingInfo {
    RingInfo {
        name: ring.record.name.clone(),
        spec: ring.record.spec,
        policy: ring.record.policy.clone(),
        keys: ring.key_infos(now),
    }
}
