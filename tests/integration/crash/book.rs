//! The crash harness's ledger: every answer the servers gave, and the
//! checks a restarted server must pass against it.

use std::collections::{BTreeMap, BTreeSet};

use signet::pb;
use tonic::{Code, Response, Status, metadata::MetadataMap};

use crate::common;

/// How a call ended, as the caller saw it.
pub enum Answer<T> {
    /// The server answered OK: the change must survive any crash.
    Acked(T, String),
    /// The server refused it (a rule, an unknown kid, a lost race): nothing
    /// may have changed.
    Refused(String),
    /// No answer (the process died), or an error that may follow a commit
    /// (the store failed): it may or may not have happened.
    InDoubt,
}

fn request_id(m: &MetadataMap) -> Option<String> {
    m.get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Classifies a gRPC result. A refusal is an answer from the server (it
/// carries the request id of its audit record) with a code that says the
/// request was turned down before anything was written.
pub fn answer<T>(r: Result<Response<T>, Status>) -> Answer<T> {
    match r {
        Ok(resp) => {
            let id = request_id(resp.metadata()).expect("an answer names its audit record");
            Answer::Acked(resp.into_inner(), id)
        }
        Err(s) => match (s.code(), request_id(s.metadata())) {
            (
                Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::AlreadyExists
                | Code::OutOfRange
                | Code::Aborted,
                Some(id),
            ) => Answer::Refused(id),
            _ => Answer::InDoubt,
        },
    }
}

/// An audit record an answered call must have left.
#[derive(Clone)]
pub struct Expect {
    pub replica: usize,
    pub request_id: String,
    pub rpc: &'static str,
    pub ok: bool,
    /// The kid the record names (Sign, Rotate, RevokeKey).
    pub kid: Option<String>,
}

/// A token some server issued.
pub struct Token {
    pub ring: String,
    pub kid: String,
    pub token: String,
}

/// What the harness knows about one ring.
#[derive(Default)]
pub struct RingBook {
    pub alg: String,
    /// Kids in the ring at the last check, and every one acknowledged since.
    pub kids: BTreeSet<String>,
    /// Kids that no longer sign (at the last check, or retired since).
    pub retired: BTreeSet<String>,
    /// Kids whose revocation was acknowledged.
    pub revoked: BTreeSet<String>,
    /// Kids a revocation was sent for, answered or not.
    pub revoke_sent: BTreeSet<String>,
    /// The policy the ring may hold now: the last one acknowledged (or seen
    /// at the last check), then any sent after it without an answer.
    pub policies: Vec<pb::Policy>,
    /// Policies refused since the last check.
    pub refused_policies: Vec<pb::Policy>,
    /// Policy updates sent, to make each one different.
    pub policy_seq: u64,
    /// Kids acknowledged as new since the last check.
    pub new_acked: BTreeSet<String>,
    /// Calls since the last check that may have made a key without saying.
    pub new_in_doubt: usize,
}

/// The harness's ledger.
#[derive(Default)]
pub struct Book {
    pub rings: BTreeMap<String, RingBook>,
    /// Rings whose creation got no answer: name -> algorithm.
    pub maybe_rings: BTreeMap<String, String>,
    /// Names refused as duplicates or invalid, with the algorithm asked for.
    pub refused_rings: Vec<(String, String)>,
    /// Answered calls since the last check.
    pub expect: Vec<Expect>,
    /// Tokens issued since the last check.
    pub tokens: Vec<Token>,
    /// Every token issued.
    pub all_tokens: Vec<Token>,
    /// Rotations with a request id that got no answer: (ring, id, immediate).
    pub rotations_in_doubt: Vec<(String, String, bool)>,
    pub acked: u64,
    pub refused: u64,
    pub in_doubt: u64,
}

impl Book {
    /// Books an answered call's audit record.
    pub fn answered(
        &mut self,
        replica: usize,
        id: String,
        rpc: &'static str,
        ok: bool,
        kid: Option<String>,
    ) {
        if ok {
            self.acked += 1;
        } else {
            self.refused += 1;
        }
        self.expect.push(Expect {
            replica,
            request_id: id,
            rpc,
            ok,
            kid,
        });
    }
}

fn state(k: &pb::KeyInfo) -> pb::KeyState {
    k.state()
}

/// Checks a restarted server's state (`rings`, from ListKeyRings) against
/// the book, then makes the book start again from that state. Panics
/// naming the round and what was lost.
pub fn check_state(book: &mut Book, rings: &BTreeMap<String, pb::KeyRingInfo>, at: &str) {
    let ctx = |what: String| format!("{at}: {what}");
    for (name, info) in rings {
        if !book.rings.contains_key(name) {
            let alg = book
                .maybe_rings
                .get(name)
                .unwrap_or_else(|| panic!("{}", ctx(format!("ring {name} nobody created"))));
            assert_eq!(&info.algorithm, alg, "{}", ctx(format!("ring {name}")));
            book.rings.insert(
                name.clone(),
                RingBook {
                    alg: alg.clone(),
                    ..Default::default()
                },
            );
            book.rings.get_mut(name).unwrap().new_in_doubt = 1;
        }
    }
    book.maybe_rings.clear();
    for (name, alg) in &book.refused_rings {
        if let Some(info) = rings.get(name) {
            assert_ne!(
                &info.algorithm,
                alg,
                "{}",
                ctx(format!("refused CreateKeyRing {name} {alg} took effect"))
            );
        }
    }
    book.refused_rings.clear();
    for (name, ring) in &mut book.rings {
        let info = rings
            .get(name)
            .unwrap_or_else(|| panic!("{}", ctx(format!("acknowledged ring {name} is gone"))));
        assert_eq!(info.algorithm, ring.alg, "{}", ctx(format!("ring {name}")));
        let kids: BTreeMap<&str, &pb::KeyInfo> =
            info.keys.iter().map(|k| (k.kid.as_str(), k)).collect();
        let active: Vec<_> = info
            .keys
            .iter()
            .filter(|k| state(k) == pb::KeyState::Active)
            .collect();
        assert_eq!(
            active.len(),
            1,
            "{}",
            ctx(format!(
                "ring {name}: exactly one active key, found {active:?}"
            ))
        );
        for kid in &ring.kids {
            assert!(
                kids.contains_key(kid.as_str()),
                "{}",
                ctx(format!("ring {name}: acknowledged key {kid} is gone"))
            );
        }
        for kid in &ring.revoked {
            assert_eq!(
                state(kids[kid.as_str()]),
                pb::KeyState::Revoked,
                "{}",
                ctx(format!(
                    "ring {name}: acknowledged revocation of {kid} undone"
                ))
            );
        }
        let new: BTreeSet<&str> = kids
            .keys()
            .copied()
            .filter(|k| !ring.kids.contains(*k))
            .collect();
        assert!(
            new.len() <= ring.new_in_doubt,
            "{}",
            ctx(format!(
                "ring {name}: {} key(s) no acknowledged call made, but only {} call(s) in doubt: {:?}",
                new.len(),
                ring.new_in_doubt,
                new.iter().map(|k| kids[k]).collect::<Vec<_>>()
            ))
        );
        let policy = info.policy.unwrap_or_default();
        if !ring.policies.is_empty() {
            assert!(
                ring.policies.contains(&policy),
                "{}",
                ctx(format!(
                    "ring {name}: policy {policy:?} is neither the last acknowledged one nor one sent after it ({:?})",
                    ring.policies
                ))
            );
        }
        for p in &ring.refused_policies {
            assert!(
                *p != policy,
                "{}",
                ctx(format!("ring {name}: a refused policy took effect"))
            );
        }
        // Start again from what the server holds.
        ring.kids = kids.keys().map(|k| (*k).to_owned()).collect();
        ring.retired = info
            .keys
            .iter()
            .filter(|k| matches!(state(k), pb::KeyState::Retiring | pb::KeyState::Published))
            .map(|k| k.kid.clone())
            .collect();
        ring.policies = vec![policy];
        ring.refused_policies.clear();
        ring.new_acked.clear();
        ring.new_in_doubt = 0;
    }
}

/// Checks this round's tokens against each ring's JWKS (`jwks`: ring ->
/// JWKS JSON) with the independent verifiers in `common::verify`: a token
/// verifies unless its key was revoked, and then only by a revocation
/// someone sent.
pub fn check_tokens(
    book: &Book,
    tokens: &[Token],
    rings: &BTreeMap<String, pb::KeyRingInfo>,
    jwks: &BTreeMap<String, String>,
    at: &str,
) {
    for t in tokens {
        let info = &rings[&t.ring];
        let key = info
            .keys
            .iter()
            .find(|k| k.kid == t.kid)
            .unwrap_or_else(|| {
                panic!(
                    "{at}: ring {}: key {} of an issued token is gone",
                    t.ring, t.kid
                )
            });
        if state(key) == pb::KeyState::Revoked {
            assert!(
                book.rings[&t.ring].revoke_sent.contains(&t.kid),
                "{at}: ring {}: key {} that signed a token is revoked, but no one revoked it",
                t.ring,
                t.kid
            );
            assert!(
                !jwks[&t.ring].contains(&t.kid),
                "{at}: a revoked key is not published"
            );
            continue;
        }
        common::verify(&t.token, &jwks[&t.ring]);
    }
}

/// The audit lines from byte `from` of `path` (backing up to a line start).
pub fn audit_records(path: &std::path::Path, from: u64) -> Vec<serde_json::Value> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path).unwrap();
    // A line is one write; back up a little in case `from` fell inside one.
    let back = from.min(4096);
    file.seek(std::io::SeekFrom::Start(from - back)).unwrap();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    let mut start = usize::try_from(back).unwrap();
    while start > 0 && bytes[start - 1] != b'\n' {
        start -= 1;
    }
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    bytes[start..end.max(start)]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// Every answered call in `expect` has its record among `records`: the same
/// request id, RPC, an outcome that says OK or not as the caller saw it,
/// and the kid the answer named.
pub fn check_audit(expect: &[Expect], records: &[serde_json::Value], at: &str) {
    let mut by_id: BTreeMap<&str, Vec<&serde_json::Value>> = BTreeMap::new();
    for r in records {
        if let Some(id) = r["request_id"].as_str() {
            by_id.entry(id).or_default().push(r);
        }
    }
    for e in expect {
        let found = by_id.get(e.request_id.as_str()).is_some_and(|rs| {
            rs.iter().any(|r| {
                let outcome = r["outcome"].as_str().unwrap_or_default();
                r["rpc"].as_str() == Some(e.rpc)
                    && outcome != "intent"
                    && (outcome == "ok") == e.ok
                    && e.kid
                        .as_ref()
                        .is_none_or(|k| r["kid"].as_str() == Some(k.as_str()))
            })
        });
        assert!(
            found,
            "{at}: replica {}: no audit record for {} {} (ok: {}, kid {:?})",
            e.replica, e.rpc, e.request_id, e.ok, e.kid
        );
    }
}
