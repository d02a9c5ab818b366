//! Key memory proven clean: no block of memory the process frees still
//! holds key material.
//!
//! This binary's global allocator ([`signet_scan_alloc`]) scans every block
//! as it is freed or reallocated for registered byte strings: a canary
//! Ed25519 key's seed, its PKCS#8 form and private scalar, both KEKs, and
//! every data key (registered the moment it is wrapped, by a KEK wrapper
//! around the real file KEK). The test drives create, sign, rotate, seal,
//! unseal, rekey and revoke in-process on a real SQLite store and asserts
//! that no freed block held any of them.
//!
//! What it cannot see: memory allocated by C code (AWS-LC's heap, which
//! cleanses what it frees; SQLite's), stack frames, and memory still held
//! when the process exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use signet::{
    clock::{ManualClock, UnixTime},
    crypto::{Algorithm, KeySpec, SigningKey},
    keyring::{KeyManager, SignParams},
    seal::{DataKey, Kek, KekError, KekProvider, LocalKek},
    store::{KeyStore, SqliteStore},
};
use signet_scan_alloc as scan;

#[global_allocator]
static ALLOC: scan::ScanningAllocator = scan::ScanningAllocator;

/// The canary key's seed: distinctive, so a hit can only be a copy.
const SEED: [u8; 32] = *b"signet-memory-canary-ed25519-sd!";
/// The canary's RFC 8410 PKCS#8 (v1): a fixed prefix, then the seed. A
/// static, so no copy of it is made on the heap by the test itself.
static PKCS8: [u8; 48] = {
    let prefix = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut out = [0u8; 48];
    let mut i = 0;
    while i < 48 {
        out[i] = if i < 16 { prefix[i] } else { SEED[i - 16] };
        i += 1;
    }
    out
};
/// Ends in bytes whose URL-safe base64 has `-` and `_`, late in the text:
/// an env KEK in that alphabet is decoded most of the way by the standard
/// alphabet before it fails.
const KEK1: [u8; 32] = {
    let mut k = *b"signet-memory-test-KEK-one!!!...";
    k[29] = 0xfb;
    k[30] = 0xff;
    k[31] = 0xbf;
    k
};
const KEK2: [u8; 32] = *b"signet-memory-test-KEK-number-2!";
/// The store's KEK check value is a public constant, wrapped like a data
/// key; it is no secret, so it is not registered.
const CHECK_VALUE: [u8; 32] = *b"signet KEK check value, v1 .....";

/// The real KEK, with every data key it wraps or unwraps registered as a
/// canary before (wrap) or as soon as (unwrap) the real code sees it.
struct Recording(Arc<dyn Kek>);

#[async_trait::async_trait]
impl Kek for Recording {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    async fn wrap(&self, dek: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>, KekError> {
        if *dek != CHECK_VALUE {
            scan::register(dek).unwrap();
        }
        self.0.wrap(dek, aad).await
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, KekError> {
        let dek = self.0.unwrap(wrapped, aad).await?;
        if *dek != CHECK_VALUE {
            scan::register(&*dek).unwrap();
        }
        Ok(dek)
    }
}

struct Provider(Arc<dyn Kek>);

#[async_trait::async_trait]
impl KekProvider for Provider {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn describe(&self) -> String {
        "file:test".into()
    }

    async fn open(&self) -> Result<Arc<dyn Kek>, KekError> {
        Ok(self.0.clone())
    }
}

/// A KEK file holding `bytes`, mode 0600, read by the real file provider.
fn file_kek(dir: &std::path::Path, name: &str, bytes: &[u8; 32]) -> Arc<dyn Kek> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
        .unwrap();
    Arc::new(Recording(Arc::new(LocalKek::from_file(&path).unwrap())))
}

fn params(ring: &str) -> SignParams<'_> {
    SignParams {
        ring,
        claims_json: br#"{"sub":"memory"}"#,
        ttl: None,
        header_json: b"",
        grant: None,
    }
}

fn report(names: &[(&str, usize)]) -> String {
    let hits = scan::hits();
    let named: Vec<String> = hits
        .iter()
        .map(|h| {
            let name = names
                .iter()
                .find(|(_, slot)| *slot == h.slot)
                .map_or("a data key", |(n, _)| *n);
            format!("{name} in a freed block of {} bytes", h.block)
        })
        .collect();
    format!("{} hit(s): {named:?}", scan::hit_count())
}

#[tokio::test(flavor = "current_thread")]
// The Vec below must grow push by push: its reallocation is under test.
#[allow(clippy::vec_init_then_push)]
async fn no_freed_block_holds_key_material() {
    let scalar = {
        use sha2::Digest;
        let h = sha2::Sha512::digest(SEED);
        let mut x = [0u8; 32];
        x.copy_from_slice(&h[..32]);
        x[0] &= 248;
        x[31] &= 127;
        x[31] |= 64;
        x
    };
    let names = [
        ("the canary seed", scan::register(&SEED).unwrap()),
        ("the canary PKCS#8", scan::register(&PKCS8).unwrap()),
        ("the canary scalar", scan::register(&scalar).unwrap()),
        ("KEK 1", scan::register(&KEK1).unwrap()),
        ("KEK 1's first half", scan::register(&KEK1[..16]).unwrap()),
        ("KEK 2", scan::register(&KEK2).unwrap()),
    ];

    // The scanner sees an unwiped copy (or this test would prove nothing).
    scan::enable(true);
    drop(std::hint::black_box(SEED.to_vec()));
    scan::enable(false);
    assert_eq!(scan::hit_count(), 1, "the scanner works");
    scan::reset();

    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(UnixTime::from_secs(1_767_225_600)));
    let store: Arc<dyn KeyStore> = Arc::new(
        SqliteStore::open(&dir.path().join("signet.db"))
            .await
            .unwrap(),
    );
    let spec = KeySpec::new(Algorithm::EdDsa, 0).unwrap();

    scan::enable(true);

    // A key handed back from the blocking pool, as every generated key is:
    // the task's result slot is heap memory, freed after the key moved out.
    let key = tokio::task::spawn_blocking(|| SigningKey::from_pkcs8(Algorithm::EdDsa, &PKCS8))
        .await
        .unwrap()
        .unwrap();
    drop(key);
    // A key moved out of a heap slot, as a rotation's new keys are (out of
    // a boxed change, then through a growing Vec): the slot is freed after
    // the move, so the seed must not live inline in `SigningKey`.
    let boxed = Box::new(SigningKey::from_pkcs8(Algorithm::EdDsa, &PKCS8).unwrap());
    let mut moved = Vec::with_capacity(1);
    moved.push(*boxed);
    moved.push(SigningKey::from_pkcs8(Algorithm::EdDsa, &PKCS8).unwrap());
    drop(moved);

    // The env KEK's parsing, in the alphabet tried second.
    {
        use base64::Engine;
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(KEK1);
        assert!(text.contains('-') || text.contains('_'), "{text}");
        drop(LocalKek::from_base64("SIGNET_KEK", &text).unwrap());
    }

    let kek1 = file_kek(dir.path(), "kek1", &KEK1);
    let keys = KeyManager::open(
        store.clone(),
        clock.clone(),
        Arc::new(Provider(kek1.clone())),
    )
    .await
    .unwrap();
    keys.unseal().await.unwrap();

    // Create (the canary imported as the first key), sign.
    let canary = SigningKey::from_pkcs8(Algorithm::EdDsa, &PKCS8).unwrap();
    let canary_kid = canary.kid().to_string();
    keys.create_ring_with_key("canary", spec, canary)
        .await
        .unwrap();
    keys.create_ring("other", spec).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            keys.sign(params("canary")).await.unwrap().kid.to_string(),
            canary_kid
        );
    }
    // Rotate: scheduled (the canary's timeline changes, so it is sealed
    // again), then at once (it retires and is sealed again).
    keys.rotate("canary", false, "scheduled", None)
        .await
        .unwrap();
    keys.sign(params("canary")).await.unwrap();
    keys.rotate("canary", true, "emergency", None)
        .await
        .unwrap();
    keys.sign(params("canary")).await.unwrap();
    // Seal, unseal (every key opened again), sign.
    keys.seal().await;
    keys.unseal().await.unwrap();
    keys.sign(params("canary")).await.unwrap();
    keys.seal().await;
    // Not closed: the store is shared with the rekey below.
    drop(keys);

    // Rekey to KEK 2.
    let kek2 = file_kek(dir.path(), "kek2", &KEK2);
    let n = signet::keyring::rekey(&*store, &*kek1, "kek1", &*kek2)
        .await
        .unwrap();
    assert!(n >= 3, "re-wrapped {n}");
    drop(kek1);

    // Revoke the canary under the new KEK.
    let keys = KeyManager::open(store.clone(), clock.clone(), Arc::new(Provider(kek2)))
        .await
        .unwrap();
    keys.unseal().await.unwrap();
    keys.revoke("canary", &canary_kid, "memory test")
        .await
        .unwrap();
    keys.sign(params("canary")).await.unwrap();
    keys.sign(params("other")).await.unwrap();
    keys.seal().await;
    keys.close().await;
    drop(keys);
    drop(store);

    scan::enable(false);
    assert_eq!(scan::hit_count(), 0, "{}", report(&names));
}
