//! The crash harness's callers: each books every answer it gets.

use signet::pb::{self, key_admin_client::KeyAdminClient, signer_client::SignerClient};

use super::{
    Ctx, Rng,
    book::{Answer, RingBook, Token, answer},
    d, policy,
};
use crate::common;

/// One ring's administrator: rotations, revocations and policy updates in
/// order, some of them refused on purpose, until the round stops or a call
/// gets no answer.
pub async fn administer(ctx: Ctx, ring: String, mut rng: Rng) {
    let mut n = 0;
    let mut last: Option<(String, bool, usize)> = None;
    // What this caller did, for the message of a failure.
    let mut trail: Vec<String> = Vec::new();
    while !ctx.stopped() {
        n += 1;
        let replica = rng.below(ctx.channels.len());
        let mut admin = KeyAdminClient::new(ctx.channels[replica].clone());
        let in_doubt = match rng.below(10) {
            0..=2 => {
                let immediate = rng.chance(50);
                let fresh = immediate && rng.chance(30);
                let id = format!("{}-{ring}-{n}", ctx.round);
                last = None;
                let r = admin
                    .rotate(pb::RotateRequest {
                        key_ring: ring.clone(),
                        immediate,
                        reason: "crash harness".into(),
                        request_id: id.clone(),
                        fresh,
                    })
                    .await;
                trail.push(format!(
                    "replica {replica}: rotate {id} immediate={immediate} fresh={fresh}: {}",
                    outcome(&r, |a| format!("{:?}", a.new_key.as_ref().map(|k| &k.kid)))
                ));
                let mut book = ctx.book();
                match answer(r) {
                    Answer::Acked(resp, rid) => {
                        let kid = resp.new_key.as_ref().unwrap().kid.clone();
                        let rb = book.rings.get_mut(&ring).unwrap();
                        // A scheduled rotation that found a successor
                        // waiting changed nothing and keeps no request id.
                        last = (rb.kids.insert(kid.clone()) || immediate)
                            .then(|| (id.clone(), immediate, replica));
                        if let Some(prev) = resp.previous_key.filter(|_| immediate) {
                            rb.retired.insert(prev.kid);
                        }
                        rb.new_acked.insert(kid.clone());
                        book.answered(replica, rid, "signet.v1.KeyAdmin/Rotate", true, Some(kid));
                        false
                    }
                    Answer::Refused(rid) => {
                        book.answered(replica, rid, "signet.v1.KeyAdmin/Rotate", false, None);
                        false
                    }
                    Answer::InDoubt => {
                        book.rings.get_mut(&ring).unwrap().new_in_doubt += 1;
                        book.rotations_in_doubt.push((ring.clone(), id, immediate));
                        true
                    }
                }
            }
            3 => {
                // The request id of this task's last rotation, reused for
                // the other kind: refused. (Only while no rotation came
                // since: a later rotation could leave no key carrying it.)
                // Sent to the replica that made it: another
                // may not have heard of it yet, and a scheduled Rotate that
                // finds a successor waiting answers from the replica's
                // snapshot without asking the store.
                let Some((id, immediate, replica)) = last.take() else {
                    continue;
                };
                let mut admin = KeyAdminClient::new(ctx.channels[replica].clone());
                let r = admin
                    .rotate(pb::RotateRequest {
                        key_ring: ring.clone(),
                        immediate: !immediate,
                        reason: "crash harness".into(),
                        request_id: id.clone(),
                        fresh: false,
                    })
                    .await;
                trail.push(format!(
                    "replica {replica}: rotate {id} immediate={} (reused): {}",
                    !immediate,
                    outcome(&r, |a| format!("{a:?}"))
                ));
                let in_doubt =
                    refusal(&ctx, replica, "signet.v1.KeyAdmin/Rotate", r, &ring, &trail);
                if in_doubt {
                    ctx.book().rings.get_mut(&ring).unwrap().new_in_doubt += 1;
                }
                in_doubt
            }
            4..=6 => {
                // Revoke a key the ring holds: mostly one that no longer
                // signs (so keys and the JWKS stay few), sometimes any
                // (perhaps the Active one, which rotates first), or one it
                // never had.
                let kid = {
                    let book = ctx.book();
                    let rb = &book.rings[&ring];
                    let pool = if rng.chance(80) {
                        &rb.retired
                    } else {
                        &rb.kids
                    };
                    let live: Vec<_> = pool.iter().filter(|k| !rb.revoked.contains(*k)).collect();
                    if live.is_empty() || rng.chance(10) {
                        "A".repeat(43)
                    } else {
                        live[rng.below(live.len())].clone()
                    }
                };
                ctx.book()
                    .rings
                    .get_mut(&ring)
                    .unwrap()
                    .revoke_sent
                    .insert(kid.clone());
                let r = admin
                    .revoke_key(pb::RevokeKeyRequest {
                        key_ring: ring.clone(),
                        kid: kid.clone(),
                        reason: "crash harness".into(),
                    })
                    .await;
                trail.push(format!(
                    "replica {replica}: revoke {kid}: {}",
                    outcome(&r, |_| String::new())
                ));
                let mut book = ctx.book();
                match answer(r) {
                    Answer::Acked(_, rid) => {
                        let rb = book.rings.get_mut(&ring).unwrap();
                        rb.revoked.insert(kid.clone());
                        // Revoking the Active key rotates first.
                        rb.new_in_doubt += 1;
                        book.answered(
                            replica,
                            rid,
                            "signet.v1.KeyAdmin/RevokeKey",
                            true,
                            Some(kid),
                        );
                        false
                    }
                    Answer::Refused(rid) => {
                        book.answered(replica, rid, "signet.v1.KeyAdmin/RevokeKey", false, None);
                        false
                    }
                    Answer::InDoubt => {
                        book.rings.get_mut(&ring).unwrap().new_in_doubt += 1;
                        true
                    }
                }
            }
            7..=8 => {
                let p = {
                    let mut book = ctx.book();
                    let rb = book.rings.get_mut(&ring).unwrap();
                    rb.policy_seq += 1;
                    policy(rb.policy_seq, rng.chance(50))
                };
                let r = admin
                    .update_policy(pb::UpdatePolicyRequest {
                        key_ring: ring.clone(),
                        policy: Some(p),
                        issuer: None,
                    })
                    .await;
                let mut book = ctx.book();
                match answer(r) {
                    Answer::Acked(resp, rid) => {
                        let stored = resp.policy.unwrap();
                        assert_eq!(stored, p, "the policy as stored");
                        book.rings.get_mut(&ring).unwrap().policies = vec![stored];
                        book.answered(replica, rid, "signet.v1.KeyAdmin/UpdatePolicy", true, None);
                        false
                    }
                    Answer::Refused(rid) => {
                        // A lost race with another replica.
                        book.answered(replica, rid, "signet.v1.KeyAdmin/UpdatePolicy", false, None);
                        false
                    }
                    Answer::InDoubt => {
                        book.rings.get_mut(&ring).unwrap().policies.push(p);
                        true
                    }
                }
            }
            _ => {
                // default_token_ttl above max_token_ttl: refused.
                let mut p = policy(0, false);
                p.default_token_ttl = d(7200);
                let r = admin
                    .update_policy(pb::UpdatePolicyRequest {
                        key_ring: ring.clone(),
                        policy: Some(p),
                        issuer: None,
                    })
                    .await;
                let refused = !refusal(
                    &ctx,
                    replica,
                    "signet.v1.KeyAdmin/UpdatePolicy",
                    r,
                    &ring,
                    &trail,
                );
                if refused {
                    ctx.book()
                        .rings
                        .get_mut(&ring)
                        .unwrap()
                        .refused_policies
                        .push(p);
                }
                !refused
            }
        };
        if in_doubt {
            ctx.book().in_doubt += 1;
            return;
        }
    }
}

/// Books a call meant to be refused. Returns whether it is in doubt; an
/// acknowledgement fails the test.
fn refusal<T>(
    ctx: &Ctx,
    replica: usize,
    rpc: &'static str,
    r: Result<tonic::Response<T>, tonic::Status>,
    ring: &str,
    trail: &[String],
) -> bool {
    match answer(r) {
        Answer::Acked(..) => panic!(
            "round {}: {rpc} on {ring} should have been refused; this caller's calls:\n{}",
            ctx.round,
            trail.join("\n")
        ),
        Answer::Refused(rid) => {
            ctx.book().answered(replica, rid, rpc, false, None);
            false
        }
        Answer::InDoubt => true,
    }
}

/// Creates at most one ring, then tries a duplicate name and an invalid
/// one (both refused).
pub async fn create_rings(ctx: Ctx, mut rng: Rng) {
    let replica = rng.below(ctx.channels.len());
    let mut admin = KeyAdminClient::new(ctx.channels[replica].clone());
    let existing: Vec<(String, String)> = ctx
        .book()
        .rings
        .iter()
        .map(|(n, r)| (n.clone(), r.alg.clone()))
        .collect();
    let alg = |rng: &mut Rng| if rng.chance(50) { "ES256" } else { "EdDSA" };
    let mut tries = vec![];
    if existing.len() < 3 || rng.chance(10) {
        tries.push((
            format!("c{}-{}", ctx.round, rng.below(1000)),
            alg(&mut rng).to_owned(),
            true,
        ));
    }
    if let Some((name, a)) = existing.get(rng.below(existing.len().max(1))) {
        let other = if a == "ES256" { "EdDSA" } else { "ES256" };
        tries.push((name.clone(), other.to_owned(), false));
    }
    tries.push(("Bad Name!".to_owned(), "ES256".to_owned(), false));
    for (name, alg, fresh) in tries {
        if ctx.stopped() {
            return;
        }
        if fresh {
            ctx.book().maybe_rings.insert(name.clone(), alg.clone());
        }
        let r = admin
            .create_key_ring(pb::CreateKeyRingRequest {
                name: name.clone(),
                algorithm: alg.clone(),
                rsa_bits: 0,
                issuer: String::new(),
            })
            .await;
        let mut book = ctx.book();
        match answer(r) {
            Answer::Acked(resp, rid) => {
                assert!(fresh, "CreateKeyRing {name} {alg} should have been refused");
                book.maybe_rings.remove(&name);
                let info = resp.ring.unwrap();
                let kid = info.keys[0].kid.clone();
                book.rings.insert(
                    name,
                    RingBook {
                        alg,
                        kids: [kid.clone()].into(),
                        new_acked: [kid].into(),
                        policies: vec![info.policy.unwrap()],
                        ..Default::default()
                    },
                );
                book.answered(replica, rid, "signet.v1.KeyAdmin/CreateKeyRing", true, None);
            }
            Answer::Refused(rid) => {
                book.maybe_rings.remove(&name);
                book.refused_rings.push((name, alg));
                book.answered(
                    replica,
                    rid,
                    "signet.v1.KeyAdmin/CreateKeyRing",
                    false,
                    None,
                );
            }
            Answer::InDoubt => {
                book.in_doubt += 1;
                return;
            }
        }
    }
}

/// Signs on random rings (some requests refused: a ttl over the limit)
/// until the round stops. Survivors keep signing after a replica dies.
pub async fn sign(ctx: Ctx, mut rng: Rng) {
    let rings: Vec<String> = ctx.book().rings.keys().cloned().collect();
    let mut n = 0;
    while !ctx.stopped() && !rings.is_empty() {
        n += 1;
        let replica = rng.below(ctx.channels.len());
        let ring = rings[rng.below(rings.len())].clone();
        let over = rng.chance(5);
        let r = SignerClient::new(ctx.channels[replica].clone())
            .sign(pb::SignRequest {
                key_ring: ring.clone(),
                claims_json: format!(r#"{{"sub":"crash","round":{},"n":{n}}}"#, ctx.round)
                    .into_bytes(),
                ttl: d(if over { 7200 } else { 3600 }),
                header_json: vec![],
            })
            .await;
        let mut book = ctx.book();
        match answer(r) {
            Answer::Acked(resp, rid) => {
                assert!(!over, "a ttl over max_token_ttl was signed");
                assert_eq!(common::part(&resp.token, 0)["kid"], resp.kid.as_str());
                book.tokens.push(Token {
                    ring,
                    kid: resp.kid.clone(),
                    token: resp.token,
                });
                book.answered(replica, rid, "signet.v1.Signer/Sign", true, Some(resp.kid));
            }
            Answer::Refused(rid) => {
                book.answered(replica, rid, "signet.v1.Signer/Sign", false, None);
            }
            Answer::InDoubt => {
                book.in_doubt += 1;
                if ctx.channels.len() == 1 {
                    return;
                }
            }
        }
    }
}

/// One line on how a call ended, for a failure's message.
fn outcome<T>(r: &Result<tonic::Response<T>, tonic::Status>, ok: impl Fn(&T) -> String) -> String {
    match r {
        Ok(resp) => format!("OK {}", ok(resp.get_ref())),
        Err(s) => format!("{:?} {}", s.code(), s.message()),
    }
}
