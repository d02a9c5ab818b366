//! The crash harness's rounds: check, drive, kill, restart.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::{Duration, Instant},
};

use signet::pb::{self, key_admin_client::KeyAdminClient, operator_client::OperatorClient};

use super::{
    Ctx, Fleet, Rng,
    book::{self, Answer, Book, answer},
};
use crate::common::{self, process};

/// Every ring a server holds, by name.
async fn rings(fleet: &Fleet, i: usize) -> BTreeMap<String, pb::KeyRingInfo> {
    KeyAdminClient::new(fleet.channels[i].clone())
        .list_key_rings(pb::ListKeyRingsRequest {})
        .await
        .unwrap()
        .into_inner()
        .rings
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect()
}

/// What replicas must agree on: each ring's algorithm, policy and keys
/// with their states.
fn view(rings: &BTreeMap<String, pb::KeyRingInfo>) -> Vec<(String, String, String)> {
    rings
        .values()
        .map(|r| {
            let keys: Vec<_> = r.keys.iter().map(|k| (k.kid.clone(), k.state)).collect();
            (
                r.name.clone(),
                r.algorithm.clone(),
                format!("{:?} {keys:?}", r.policy),
            )
        })
        .collect()
}

async fn jwks(fleet: &Fleet, i: usize, ring: &str) -> String {
    let addr = fleet.procs[i].as_ref().unwrap().http_addr();
    let (status, _, body) = common::http_get(addr, &format!("/v1/rings/{ring}/jwks.json")).await;
    assert_eq!(status, 200, "JWKS of {ring}: {body}");
    body
}

/// Runs `rounds` rounds against `fleet`, killing at a moment drawn from
/// 0..=`max_kill_ms` after the callers start.
pub async fn run(mut fleet: Fleet, rounds: u64, max_kill_ms: u64, seed: u64) {
    let n = fleet.procs.len();
    let at = |round: u64| {
        format!("round {round} (replay: SIGNET_CRASH_SEED={seed} with {rounds} rounds)")
    };
    eprintln!("crash harness: SIGNET_CRASH_SEED={seed}, {rounds} rounds, {n} server(s)");
    let mut rng = Rng::new(seed);
    for i in 0..n {
        fleet.start(i).await;
    }
    let started = Instant::now();
    let mut book = Book::default();
    let mut offsets = vec![0u64; n];
    let mut authority = 0;
    // Every round's records are checked; the whole log (each verification
    // reads all of it, so every round would cost rounds^2) is verified
    // every 10th round, or every `rounds / 100` in a long soak, and at the
    // end.
    let verify_every = (rounds / 100).max(10);
    let mut db_kills = 0;
    for round in 0..=rounds {
        let verify = round % verify_every == 0 || round == rounds;
        check(
            &fleet,
            &mut book,
            &at(round),
            authority,
            &mut offsets,
            verify,
        )
        .await;
        if round == rounds {
            break;
        }
        retry_rotations(&fleet, &mut book, authority, &at(round)).await;

        // The round's callers.
        let ctx = Ctx {
            channels: fleet.channels.clone(),
            book: Arc::new(Mutex::new(std::mem::take(&mut book))),
            stop: Arc::new(AtomicBool::new(false)),
            round,
        };
        let mut tasks = Vec::new();
        let mut names: Vec<String> = ctx.book().rings.keys().cloned().collect();
        for _ in 0..2 {
            if names.is_empty() {
                break;
            }
            let ring = names.swap_remove(rng.below(names.len()));
            tasks.push(tokio::spawn(super::callers::administer(
                ctx.clone(),
                ring,
                rng.fork(),
            )));
        }
        tasks.push(tokio::spawn(super::callers::create_rings(
            ctx.clone(),
            rng.fork(),
        )));
        for _ in 0..2 {
            tasks.push(tokio::spawn(super::callers::sign(ctx.clone(), rng.fork())));
        }
        let victim = rng.below(n);
        let kill_db = fleet.db.is_some() && rng.chance(25);
        let delay = Duration::from_millis(rng.below(max_kill_ms as usize + 1) as u64);
        eprintln!(
            "round {round}: kill {}{} after {delay:?}",
            if kill_db { "the database and " } else { "" },
            if n == 1 {
                "the server".to_owned()
            } else {
                format!("replica {victim}")
            }
        );
        // Not synchronisation: the kill lands at a random moment of the
        // callers' work, by design.
        tokio::time::sleep(delay).await;
        if kill_db {
            fleet.kill_db();
            db_kills += 1;
        }
        fleet.kill(victim);
        ctx.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        book = Arc::try_unwrap(ctx.book)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap();
        if kill_db {
            fleet.restart_db();
        }
        fleet.start(victim).await;
        authority = victim;
    }
    // Every token issued in every round, against the JWKS now.
    let rings_now = rings(&fleet, authority).await;
    let mut sets = BTreeMap::new();
    for t in &book.all_tokens {
        if !sets.contains_key(&t.ring) {
            sets.insert(t.ring.clone(), jwks(&fleet, authority, &t.ring).await);
        }
    }
    book::check_tokens(&book, &book.all_tokens, &rings_now, &sets, &at(rounds));
    let keys: usize = rings_now.values().map(|r| r.keys.len()).sum();
    eprintln!(
        "crash harness: {rounds} rounds in {:.1?} ({:.0} ms a round): {} calls acknowledged, {} refused, {} in doubt, {} tokens verified; {} rings, {keys} keys; {db_kills} database kills",
        started.elapsed(),
        started.elapsed().as_secs_f64() * 1000.0 / rounds.max(1) as f64,
        book.acked,
        book.refused,
        book.in_doubt,
        book.all_tokens.len(),
        rings_now.len(),
    );
}

/// The checks after a restart, through the replica that restarted (it
/// loaded everything from the store); the other replicas must come to the
/// same view.
async fn check(
    fleet: &Fleet,
    book: &mut Book,
    at: &str,
    authority: usize,
    offsets: &mut [u64],
    verify: bool,
) {
    let status = OperatorClient::new(fleet.channels[authority].clone())
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.sealed, "{at}");
    assert_eq!(status.broken_keys, 0, "{at}: every record opens");
    let state = rings(fleet, authority).await;
    let mut touched: Vec<String> = book.tokens.iter().map(|t| t.ring.clone()).collect();
    touched.extend(
        book.rings
            .iter()
            .filter(|(_, r)| !r.new_acked.is_empty() || r.new_in_doubt > 0)
            .map(|(n, _)| n.clone()),
    );
    touched.sort();
    touched.dedup();
    book::check_state(book, &state, at);
    let mut sets = BTreeMap::new();
    for ring in touched {
        let set = jwks(fleet, authority, &ring).await;
        let active = state[&ring]
            .keys
            .iter()
            .find(|k| k.state() == pb::KeyState::Active)
            .unwrap();
        assert!(
            set.contains(&active.kid),
            "{at}: ring {ring}: the active key is published"
        );
        sets.insert(ring, set);
    }
    let tokens = std::mem::take(&mut book.tokens);
    book::check_tokens(book, &tokens, &state, &sets, at);
    book.all_tokens.extend(tokens);

    let expect = std::mem::take(&mut book.expect);
    for (i, offset) in offsets.iter_mut().enumerate() {
        let path = fleet.audit_file(i);
        let records = book::audit_records(&path, *offset);
        let mine: Vec<_> = expect.iter().filter(|e| e.replica == i).cloned().collect();
        book::check_audit(&mine, &records, at);
        if verify {
            let out = std::process::Command::new(process::BIN)
                .args(["audit", "verify", path.to_str().unwrap(), "--addr"])
                .arg(&fleet.procs[i].as_ref().unwrap().grpc)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{at}: replica {i}: signet audit verify: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // Replicas converge on the restarted one's view (change notifications,
    // or the 1 s poll): a deadline, not a sleep.
    let want = view(&state);
    for i in (0..fleet.procs.len()).filter(|i| *i != authority) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = view(&rings(fleet, i).await);
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{at}: replica {i} never came to the restarted replica's view"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The audit records of what follows start here.
    for (i, offset) in offsets.iter_mut().enumerate() {
        *offset = std::fs::metadata(fleet.audit_file(i)).unwrap().len();
    }
}

/// Retries each rotation that got no answer with its request id: at most
/// once, across the crash. A retry answers the key the lost call made, or
/// makes one now; the ring grows by exactly the kids it had not held.
async fn retry_rotations(fleet: &Fleet, book: &mut Book, authority: usize, at: &str) {
    let retries = std::mem::take(&mut book.rotations_in_doubt);
    if retries.is_empty() {
        return;
    }
    let before = rings(fleet, authority).await;
    let mut grew: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for (ring, id, immediate) in retries {
        let r = KeyAdminClient::new(fleet.channels[authority].clone())
            .rotate(pb::RotateRequest {
                key_ring: ring.clone(),
                immediate,
                reason: "crash harness retry".into(),
                request_id: id,
                fresh: false,
            })
            .await;
        let Answer::Acked(resp, rid) = answer(r) else {
            panic!("{at}: a retried rotation of {ring} was not answered OK");
        };
        let kid = resp.new_key.unwrap().kid;
        if !before[&ring].keys.iter().any(|k| k.kid == kid) {
            grew.entry(ring.clone()).or_default().insert(kid.clone());
        }
        let rb = book.rings.get_mut(&ring).unwrap();
        rb.kids.insert(kid.clone());
        book.answered(authority, rid, "signet.v1.KeyAdmin/Rotate", true, Some(kid));
    }
    let after = rings(fleet, authority).await;
    for (name, ring) in &after {
        let made = grew.get(name).map_or(0, |g| g.len());
        assert_eq!(
            ring.keys.len(),
            before[name].keys.len() + made,
            "{at}: ring {name}: retried rotations made more keys than they answered"
        );
    }
}
