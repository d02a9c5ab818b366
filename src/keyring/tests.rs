//! Unit tests of the key manager over real keys and an ephemeral KEK.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};

use std::sync::Arc;

use super::*;
use crate::{
    clock::{ManualClock, UnixTime},
    crypto::{Algorithm, KeySpec},
};

/// An unsealed manager over a memory store and an ephemeral KEK.
async fn manager(clock: Arc<ManualClock>) -> KeyManager {
    KeyManager::ephemeral(clock).await.unwrap()
}

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
    let keys = manager(clock.clone()).await;
    let mut secrets = Vec::new();
    for (i, alg) in Algorithm::ALL.into_iter().enumerate() {
        let name = format!("r{i}");
        keys.create_ring(&name, KeySpec::new(alg, 0).unwrap())
            .await
            .unwrap();
        keys.rotate(&name, true, "test", None).await.unwrap();
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
                grant: None,
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
    let keys = manager(clock.clone()).await;
    keys.create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    clock.advance(std::time::Duration::from_secs(100));
    let (new, old) = keys.rotate("r", true, "test", None).await.unwrap();
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
