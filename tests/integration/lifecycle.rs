//! The rotation lifecycle on a controllable clock: scheduled successors,
//! publication before signing, grace, destruction, revocation, policy
//! changes, restarts and clock jumps.

use crate::common;

use std::sync::Arc;

use signet::{
    clock::{ManualClock, UnixTime},
    crypto::{Algorithm, KeySpec},
    keyring::{KeyInfo, KeyManager, KeyState, Policy, SignParams, Timeline, project},
    pb::{self, key_admin_client::KeyAdminClient, signer_client::SignerClient},
    seal::{EphemeralKek, KekProvider, KekSpec},
    store::{KeyRecord, KeyStore, RingUpdate, SqliteStore},
};
use tokio::net::TcpListener;
use tonic::Code;

const DAY: u64 = 86_400;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600;

fn at(d: u64) -> UnixTime {
    UnixTime::from_secs(T0 + i64::try_from(d * DAY).unwrap())
}

struct Harness {
    clock: Arc<ManualClock>,
    keys: KeyManager,
    store: Arc<dyn KeyStore>,
    kek: Arc<dyn KekProvider>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// An unsealed manager over SQLite in a temp dir, clock at T0, with an
    /// EdDSA ring "r" under `policy`.
    async fn new(policy: Policy) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(at(0)));
        let store: Arc<dyn KeyStore> = Arc::new(
            SqliteStore::open(&dir.path().join("signet.db"))
                .await
                .unwrap(),
        );
        let kek: Arc<dyn KekProvider> = Arc::new(EphemeralKek::new().unwrap());
        let keys = KeyManager::open(store.clone(), clock.clone(), kek.clone())
            .await
            .unwrap();
        keys.unseal().await.unwrap();
        keys.create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
            .await
            .unwrap();
        if policy != Policy::default() {
            keys.update_policy("r", policy).await.unwrap();
        }
        Harness {
            clock,
            keys,
            store,
            kek,
            _dir: dir,
        }
    }

    /// A second manager over the same store and KEK: a restart.
    async fn restart(&mut self) {
        let keys = KeyManager::open(self.store.clone(), self.clock.clone(), self.kek.clone())
            .await
            .unwrap();
        keys.unseal().await.unwrap();
        self.keys = keys;
    }

    fn set(&self, t: UnixTime) {
        self.clock.set(t);
    }

    fn infos(&self) -> Vec<KeyInfo> {
        self.keys.ring_info("r", "r").unwrap().keys
    }

    fn states(&self) -> Vec<KeyState> {
        self.infos().iter().map(|k| k.state).collect()
    }

    fn jwks_kids(&self) -> Vec<String> {
        self.keys
            .jwks("r", "r")
            .unwrap()
            .0
            .keys
            .into_iter()
            .map(|k| k.kid)
            .collect()
    }

    async fn sign(&self) -> signet::keyring::Signed {
        self.keys
            .sign(SignParams {
                ring: "r",
                claims_json: b"{}",
                ttl: None,
                header_json: b"",
                grant: None,
            })
            .await
            .unwrap()
    }
}

/// Publish -> activate -> retire -> remove at the right ticks, seen through
/// the gRPC API of a server running on the controllable clock; the removed
/// key's sealed blob leaves the store and its kid can never be reused.
#[tokio::test]
async fn server_follows_the_timeline_tick_by_tick() {
    use KeyState::*;
    let h = Harness::new(Policy::default()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(signet::rpc::serve(
        listener,
        h.keys.clone(),
        std::future::pending(),
    ));
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut signer = SignerClient::new(ch.clone());
    let mut admin = KeyAdminClient::new(ch.clone());
    let list = |admin: &mut KeyAdminClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_keys(pb::ListKeysRequest {
                    key_ring: "r".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .keys
        }
    };
    let sign_kid = |signer: &mut SignerClient<tonic::transport::Channel>| {
        let mut signer = signer.clone();
        async move {
            signer
                .sign(pb::SignRequest {
                    key_ring: "r".into(),
                    claims_json: b"{}".to_vec(),
                    ttl: None,
                    header_json: vec![],
                })
                .await
                .unwrap()
                .into_inner()
                .kid
        }
    };

    let k1 = list(&mut admin).await[0].kid.clone();
    // Day 84 minus a second: not yet due (90d period - 6d lead).
    h.set(UnixTime::from_secs(at(84).as_secs() - 1));
    assert!(h.keys.tick().await.generated.is_empty());
    assert_eq!(h.states(), [Active]);

    // Day 84: the successor is generated and published, not signing.
    h.set(at(84));
    let report = h.keys.tick().await;
    assert_eq!(report.generated.len(), 1);
    let keys = list(&mut admin).await;
    let k2 = keys[1].kid.clone();
    assert_eq!(keys[1].state(), pb::KeyState::Published);
    assert_eq!(keys[1].activate_at.unwrap().seconds, at(90).as_secs());
    assert_eq!(keys[0].retire_at.unwrap().seconds, at(90).as_secs());
    assert_eq!(keys[0].remove_at.unwrap().seconds, at(97).as_secs());
    let jwks = signer
        .get_jwks(pb::GetJwksRequest {
            key_ring: "r".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    assert!(jwks.contains(&k1) && jwks.contains(&k2), "both published");
    assert_eq!(
        sign_kid(&mut signer).await,
        k1,
        "the published key does not sign yet"
    );
    // Ticking again changes nothing.
    assert_eq!(h.keys.tick().await, Default::default());

    // Day 90: the successor signs, the old key retires (no tick needed).
    h.set(UnixTime::from_secs(at(90).as_secs() - 1));
    assert_eq!(sign_kid(&mut signer).await, k1);
    h.set(at(90));
    assert_eq!(sign_kid(&mut signer).await, k2);
    assert_eq!(h.states(), [Retiring, Active]);
    assert_eq!(
        h.jwks_kids(),
        [k1.clone(), k2.clone()],
        "retiring key still published"
    );

    // Day 97: the old key leaves the JWKS; the tick destroys its material.
    h.set(at(97));
    assert_eq!(h.states(), [Removed, Active]);
    assert_eq!(h.jwks_kids(), std::slice::from_ref(&k2));
    let report = h.keys.tick().await;
    assert_eq!(report.destroyed.len(), 1);
    let stored = h.store.load().await.unwrap().remove(0);
    assert!(
        stored.keys[0].sealed.is_none(),
        "sealed blob gone from the store"
    );
    assert!(stored.keys[1].sealed.is_some());
    // The kid is a tombstone: never reusable.
    let reuse = h
        .store
        .update_ring(&RingUpdate {
            ring: stored.name.clone(),
            expected_generation: stored.generation,
            insert: vec![KeyRecord {
                sealed: None,
                ..stored.keys[0].clone()
            }],
            update: vec![],
            policy: None,
            manifest: None,
        })
        .await;
    assert!(
        matches!(reuse, Err(signet::store::StoreError::KidReused { .. })),
        "{reuse:?}"
    );
}

#[tokio::test]
async fn restart_mid_timeline_continues_exactly() {
    let mut h = Harness::new(Policy::default()).await;
    h.set(at(84));
    h.keys.tick().await;
    h.set(at(86));
    let before = h.infos();
    assert_eq!(before.len(), 2);
    h.restart().await;
    assert_eq!(
        h.infos(),
        before,
        "same keys, timelines and states after restart"
    );
    h.set(at(90));
    assert_eq!(h.sign().await.kid, before[1].kid);
    h.set(at(97));
    h.keys.tick().await;
    h.restart().await;
    assert_eq!(h.jwks_kids(), [before[1].kid.to_string()]);

    // The stored timelines are exactly the projected ones.
    let projected = project(Timeline::immediate(at(0)), &Policy::default(), at(97));
    let stored: Vec<Timeline> = h.infos().iter().map(|k| k.timeline).collect();
    assert_eq!(stored, projected);
}

#[tokio::test]
async fn scheduled_rotate_is_idempotent_and_immediate_withdraws_the_waiting_key() {
    let h = Harness::new(Policy::default()).await;
    h.set(at(10));
    let (next, old) = h.keys.rotate("r", false, "early", None).await.unwrap();
    assert_eq!(next.state, KeyState::Published);
    assert_eq!(
        next.timeline.activate_at,
        at(16),
        "signs publish_lead after publication"
    );
    assert_eq!(old.unwrap().timeline.retire_at, Some(at(16)));
    let (again, _) = h.keys.rotate("r", false, "again", None).await.unwrap();
    assert_eq!(
        again.kid, next.kid,
        "a waiting successor is returned, not duplicated"
    );
    assert_eq!(h.infos().len(), 2);

    let (now_key, _) = h
        .keys
        .rotate("r", true, "compromise drill", None)
        .await
        .unwrap();
    assert_eq!(now_key.state, KeyState::Active);
    let infos = h.infos();
    let waiting = infos.iter().find(|k| k.kid == next.kid).unwrap();
    assert_eq!(
        waiting.state,
        KeyState::Revoked,
        "the waiting successor is withdrawn"
    );
    assert!(
        waiting
            .reason
            .as_deref()
            .unwrap()
            .contains("compromise drill")
    );
    assert_eq!(h.sign().await.kid, now_key.kid);
    assert!(!h.jwks_kids().contains(&next.kid.to_string()));
}

#[tokio::test]
async fn revocation() {
    let h = Harness::new(Policy::default()).await;
    let k1 = h.infos()[0].kid.clone();
    let token = h.sign().await;
    h.set(at(1));
    let revoked = h
        .keys
        .revoke("r", k1.as_str(), "laptop stolen")
        .await
        .unwrap();
    assert_eq!(revoked.state, KeyState::Revoked);
    assert_eq!(revoked.reason.as_deref(), Some("laptop stolen"));
    let signed = h.sign().await;
    assert_ne!(signed.kid, k1, "an immediate rotation happened first");
    assert_eq!(
        h.jwks_kids(),
        [signed.kid.to_string()],
        "revoked key out of the JWKS now"
    );
    assert_eq!(token.kid, k1);
    let stored = h.store.load().await.unwrap().remove(0);
    assert!(stored.keys[0].sealed.is_none(), "material destroyed");

    // Revoking again, or an unknown kid, is refused with the right code.
    let again = h.keys.revoke("r", k1.as_str(), "x").await.unwrap_err();
    assert_eq!(tonic::Status::from(again).code(), Code::FailedPrecondition);
    let unknown = h.keys.revoke("r", "nope", "x").await.unwrap_err();
    assert_eq!(tonic::Status::from(unknown).code(), Code::NotFound);

    // Revoking a waiting successor reopens the Active key's timeline, and the
    // scheduler plans a new successor.
    let active = h.sign().await.kid;
    let (next, _) = h.keys.rotate("r", false, "planned", None).await.unwrap();
    h.keys
        .revoke("r", next.kid.as_str(), "bad batch")
        .await
        .unwrap();
    let a = h.infos().into_iter().find(|k| k.kid == active).unwrap();
    assert_eq!((a.state, a.timeline.retire_at), (KeyState::Active, None));
    h.set(at(1 + 90));
    let report = h.keys.tick().await;
    assert_eq!(report.generated.len(), 1);
    assert_eq!(
        h.sign().await.kid,
        active,
        "still signs until the new successor activates"
    );
}

#[tokio::test]
async fn policy_rules_over_grpc_and_changes_never_rewrite_the_past() {
    let h = Harness::new(Policy::default()).await;
    h.set(at(84));
    h.keys.tick().await;
    let before: Vec<Timeline> = h.infos().iter().map(|k| k.timeline).collect();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(signet::rpc::serve(
        listener,
        h.keys.clone(),
        std::future::pending(),
    ));
    let mut admin = KeyAdminClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let d = |secs: u64| {
        Some(prost_types::Duration {
            seconds: i64::try_from(secs).unwrap(),
            nanos: 0,
        })
    };
    let policy = |rotation: u64, lead: u64, grace: u64, max_ttl: u64| pb::Policy {
        rotation_period: d(rotation),
        publish_lead: d(lead),
        grace: d(grace),
        max_token_ttl: d(max_ttl),
        default_token_ttl: d(600),
        jwks_max_age: d(3600),
        clock_skew: d(60),
    };
    let cases = [
        (
            policy(90 * DAY, 6 * DAY, 3600, 3600),
            "policy: grace (1h) must be >= max_token_ttl + jwks_max_age + clock_skew",
        ),
        (
            policy(90 * DAY, 1800, 7 * DAY, 3600),
            "policy: publish_lead (30m) must be >= jwks_max_age + clock_skew",
        ),
        (
            policy(6 * DAY, 6 * DAY, 7 * DAY, 3600),
            "policy: rotation_period (6d) must be > publish_lead (6d)",
        ),
        (
            policy(90 * DAY, 6 * DAY, 7 * DAY, 300),
            "policy: default_token_ttl (10m) must be <= max_token_ttl (5m)",
        ),
    ];
    for (p, want) in cases {
        let err = admin
            .update_policy(pb::UpdatePolicyRequest {
                issuer: Default::default(),
                key_ring: "r".into(),
                policy: Some(p),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert!(err.message().starts_with(want), "{}", err.message());
    }
    let resp = admin
        .update_policy(pb::UpdatePolicyRequest {
            issuer: Default::default(),
            key_ring: "r".into(),
            policy: Some(policy(30 * DAY, 2 * DAY, 3 * DAY, 3600)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.warnings.len(), 2, "{:?}", resp.warnings);
    assert!(resp.warnings[0].starts_with("rotation_period 30d is outside the usual 90d-180d"));
    assert!(resp.warnings[1].starts_with("max_token_ttl 1h is above the rule of thumb"));
    let after: Vec<Timeline> = h.infos().iter().map(|k| k.timeline).collect();
    assert_eq!(after, before, "existing timelines keep their times");

    // The next successor follows the new policy: 30d after k2 activates,
    // minus the 2d lead.
    h.set(at(90 + 28));
    assert_eq!(h.keys.tick().await.generated.len(), 1);
    let k3 = h.infos().pop().unwrap();
    assert_eq!(k3.timeline.activate_at, at(90 + 30));
    let k2 = &h.infos()[1];
    assert_eq!(k2.timeline.remove_at, Some(at(90 + 30 + 3)), "new grace");
}

#[tokio::test]
async fn clock_jumps_never_remove_the_active_key_or_revive_a_removed_one() {
    let h = Harness::new(Policy::default()).await;
    h.set(at(85));
    h.keys.tick().await;
    let k1 = h.infos()[0].kid.to_string();

    // Forward a year: the successor signs, the old key is destroyed, a new
    // successor is generated. Never a moment without an Active key.
    h.set(at(85 + 365));
    assert_eq!(h.states(), [KeyState::Removed, KeyState::Active]);
    let r = h.keys.tick().await;
    assert_eq!((r.generated.len(), r.destroyed.len()), (1, 1));
    let signed = h.sign().await;
    assert_eq!(h.infos()[1].kid, signed.kid);
    assert!(!h.jwks_kids().contains(&k1));

    // Back far enough that the destroyed key's timeline looks Active again:
    // it stays out of the JWKS and never signs.
    h.set(at(50));
    assert!(
        !h.jwks_kids().contains(&k1),
        "a destroyed key never comes back"
    );
    let err = h
        .keys
        .sign(SignParams {
            ring: "r",
            claims_json: b"{}",
            ttl: None,
            header_json: b"",
            grant: None,
        })
        .await
        .unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), Code::FailedPrecondition);
    assert_eq!(
        h.keys.tick().await,
        Default::default(),
        "no rotation on a clock set back"
    );

    // Back a day from the high-water mark: signing continues, iat is the
    // service clock's now.
    h.set(UnixTime::from_secs(
        at(85 + 365).as_secs() - i64::try_from(DAY).unwrap(),
    ));
    let signed = h.sign().await;
    let claims = common::part(&signed.token, 1);
    assert_eq!(claims["iat"].as_i64().unwrap(), h.keys.now().as_secs());
}

#[tokio::test]
async fn kek_spec_round_trips_through_display() {
    for s in ["file:/etc/signet/kek", "env:SIGNET_KEK"] {
        assert_eq!(s.parse::<KekSpec>().unwrap().to_string(), s);
    }
}

/// An emergency rotation promotes the successor verifiers already hold: a
/// caching verifier that never refetches on an unknown kid verifies every
/// token afterwards. `fresh` generates a new key instead, which that
/// verifier cannot know: the difference the promotion makes.
#[tokio::test]
async fn immediate_rotation_promotes_a_published_successor() {
    let h = Harness::new(Policy::default()).await;
    let first = h.infos()[0].kid.clone();
    h.set(at(85));
    let (next, _) = h.keys.rotate("r", false, "scheduled", None).await.unwrap();
    assert_eq!(next.state, KeyState::Published);

    // A verifier fetches the set two hours later (holding both keys) and
    // caches it; its clock stays within the set's max-age from then on.
    let later = at(85).saturating_add(std::time::Duration::from_secs(2 * 3600));
    h.set(later);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(signet::http::serve(
        listener,
        h.keys.clone(),
        std::future::pending(),
    ));
    let verifier = signet::verifier::Verifier::new(&format!("http://{addr}/v1/rings/r/jwks.json"))
        .unwrap()
        .with_clock(h.clock.clone())
        .without_unknown_kid_refetch();
    verifier.refresh().await.unwrap();
    let fetches = verifier.fetches();

    // Published 2 h ago > jwks_max_age (1 h) + clock_skew: promoted. The
    // request id goes with the promoted key, so a retry changes nothing.
    let id = signet::keyring::RequestId::parse_optional("drill-1", "request_id")
        .unwrap()
        .unwrap();
    let (now_key, old) = h
        .keys
        .rotate("r", true, "key compromise drill", Some(&id))
        .await
        .unwrap();
    let (again, _) = h
        .keys
        .rotate("r", true, "key compromise drill", Some(&id))
        .await
        .unwrap();
    assert_eq!(again.kid, now_key.kid, "a retry answers the same promotion");
    assert_eq!(h.infos().len(), 2, "and makes no key");
    assert_eq!(now_key.kid, next.kid, "the waiting successor signs now");
    assert_eq!(now_key.state, KeyState::Active);
    assert_eq!(now_key.timeline.activate_at, later);
    assert_eq!(now_key.timeline.publish_at, at(85), "published as before");
    let old = old.unwrap();
    assert_eq!(old.kid, first);
    assert_eq!(
        old.timeline.retire_at,
        Some(later),
        "the old key retires now"
    );
    assert!(
        h.infos().iter().all(|k| k.state != KeyState::Revoked),
        "nothing withdrawn"
    );
    for _ in 0..5 {
        let token = h.sign().await;
        assert_eq!(token.kid, next.kid);
        verifier.verify(&token.token).await.unwrap();
    }
    assert!(
        verifier.take_counts().is_empty(),
        "zero verification failures"
    );
    assert_eq!(verifier.fetches(), fetches, "and no refetch needed");

    // `fresh`: a brand-new key the cached set lacks.
    let (fresh, _) = h
        .keys
        .rotate_with("r", true, true, "successor compromised too", None)
        .await
        .unwrap();
    assert_ne!(fresh.kid, next.kid);
    assert_eq!(fresh.timeline.publish_at, fresh.timeline.activate_at);
    let token = h.sign().await;
    assert_eq!(token.kid, fresh.kid);
    let err = verifier.verify(&token.token).await.unwrap_err();
    assert_eq!(err.failure, signet::crypto::verify::Failure::UnknownKid);
}

/// A promotion keeps the id of the Rotate that made the successor: a late
/// retry of that scheduled call (its answer was lost) gets the promoted key
/// back instead of starting another rotation, on the replica that promoted
/// it and on one whose snapshot still shows the successor waiting.
#[tokio::test]
async fn a_late_retry_of_a_promoted_successors_rotate_makes_no_key() {
    let h = Harness::new(Policy::default()).await;
    // A second replica over the same store, with its own snapshot.
    let other = KeyManager::open(h.store.clone(), h.clock.clone(), h.kek.clone())
        .await
        .unwrap();
    other.unseal().await.unwrap();
    let id = |s| {
        signet::keyring::RequestId::parse_optional(s, "request_id")
            .unwrap()
            .unwrap()
    };
    let (planned, drill) = (id("planned-7"), id("drill-2"));

    h.set(at(85));
    let (next, _) = h
        .keys
        .rotate("r", false, "scheduled", Some(&planned))
        .await
        .unwrap();
    other.refresh().await.unwrap();
    let later = at(85).saturating_add(std::time::Duration::from_secs(2 * 3600));
    h.set(later);
    let (promoted, _) = h
        .keys
        .rotate("r", true, "drill", Some(&drill))
        .await
        .unwrap();
    assert_eq!(promoted.kid, next.kid, "the waiting successor is promoted");

    // The other replica has not refreshed: its snapshot still shows the
    // successor waiting, with the scheduled call's id.
    let stale = other.ring_info("r", "r").unwrap().keys;
    let waiting = stale.iter().find(|k| k.kid == next.kid).unwrap();
    assert_eq!(waiting.state, KeyState::Published);

    for keys in [&h.keys, &other] {
        let (again, _) = keys
            .rotate("r", false, "scheduled", Some(&planned))
            .await
            .unwrap();
        assert_eq!(again.kid, next.kid, "the scheduled call's key");
        assert_eq!(
            again.state,
            KeyState::Active,
            "answered as the store has it now (promoted), not from a stale snapshot"
        );
        assert_eq!(again.timeline.activate_at, later);
        let (again, _) = keys.rotate("r", true, "drill", Some(&drill)).await.unwrap();
        assert_eq!(again.kid, next.kid, "the promoting call's key");
    }
    other.refresh().await.unwrap();
    assert_eq!(h.infos().len(), 2, "no key made by any retry");
    assert_eq!(other.ring_info("r", "r").unwrap().keys.len(), 2);

    // Each id stays bound to its kind of rotation.
    for (keys, immediate, id) in [(&h.keys, true, &planned), (&other, false, &drill)] {
        let e = keys
            .rotate("r", immediate, "reuse", Some(id))
            .await
            .unwrap_err();
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with("request_id: was used for "),
            "{}",
            status.message()
        );
    }
    assert_eq!(h.infos().len(), 2);
}

/// A successor published less than jwks_max_age + clock_skew ago may not
/// be in every verifier's cache yet: an emergency rotation then generates a
/// fresh key and withdraws the waiting one, as before.
#[tokio::test]
async fn a_too_recent_successor_is_not_promoted() {
    let h = Harness::new(Policy::default()).await;
    h.set(at(85));
    let (next, _) = h.keys.rotate("r", false, "scheduled", None).await.unwrap();
    h.set(at(85).saturating_add(std::time::Duration::from_secs(30 * 60)));
    let (now_key, _) = h.keys.rotate("r", true, "drill", None).await.unwrap();
    assert_ne!(now_key.kid, next.kid, "a fresh key");
    let waiting = h.infos().into_iter().find(|k| k.kid == next.kid).unwrap();
    assert_eq!(
        waiting.state,
        KeyState::Revoked,
        "the young successor is withdrawn"
    );
}
