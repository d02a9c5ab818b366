//! Several key managers ("replicas") sharing one PostgreSQL store: any
//! replica signs, every replica converges on the same key set, and the
//! generation compare-and-swap lets exactly one replica write each change.

use std::{sync::Arc, time::Duration};

use signet::{
    clock::{ManualClock, UnixTime},
    crypto::{Algorithm, KeySpec},
    keyring::{KeyManager, RequestId, SignParams},
    seal::{EphemeralKek, KekProvider},
    store::{KeyStore, PostgresStore},
};

use crate::common::{self, eventually, postgres, process};

const T0: i64 = 1_767_225_600;
const DAY: i64 = 86_400;

async fn replicas(n: usize) -> (Vec<KeyManager>, Arc<ManualClock>, String) {
    let schema = postgres::fresh_schema("replicas");
    let clock = Arc::new(ManualClock::new(UnixTime::from_secs(T0)));
    let kek: Arc<dyn KekProvider> = Arc::new(EphemeralKek::new().unwrap());
    let mut out = Vec::new();
    for _ in 0..n {
        let store: Arc<dyn KeyStore> = Arc::new(
            PostgresStore::open_in_schema(&postgres::url(), &schema)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL needed (SIGNET_TEST_POSTGRES_URL): {e}")),
        );
        let keys = KeyManager::open(store, clock.clone(), kek.clone())
            .await
            .unwrap();
        keys.unseal().await.unwrap();
        out.push(keys);
    }
    (out, clock, schema)
}

async fn drop_schema(schema: &str) {
    use sqlx::Connection;
    if let Ok(mut c) = sqlx::PgConnection::connect(&postgres::url()).await {
        // The schema name is ours (t_replicas_<pid>_<n>), never input.
        let ddl = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&mut c)
            .await;
    }
}

fn kids(keys: &KeyManager) -> Vec<String> {
    keys.jwks("r", "r")
        .unwrap()
        .0
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect()
}

async fn sign(keys: &KeyManager) -> String {
    keys.sign(SignParams {
        ring: "r",
        claims_json: b"{}",
        ttl: None,
        header_json: b"",
        grant: None,
    })
    .await
    .unwrap()
    .kid
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_key_set_and_exactly_one_writes_each_change() {
    let (r, clock, schema) = replicas(3).await;
    r[0].create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    for k in &r[1..] {
        assert_eq!(k.refresh().await.unwrap(), 1);
    }
    let first = kids(&r[0]);
    for k in &r {
        assert_eq!(kids(k), first, "every replica serves the same JWKS");
        assert_eq!(
            sign(k).await,
            first[0],
            "any replica signs with the shared key"
        );
    }

    // 20 concurrent scheduled Rotate calls spread over the replicas, from a
    // ring with no successor yet: exactly one new key; the others get the
    // same successor or are told to retry (ABORTED).
    r[0].create_ring("s", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    for k in &r[1..] {
        k.refresh().await.unwrap();
    }
    let results =
        futures::future::join_all((0..20).map(|i| r[i % 3].rotate("s", false, "race", None))).await;
    let mut successors: Vec<_> = results
        .iter()
        .filter_map(|x| x.as_ref().ok())
        .map(|(k, _)| k.kid.clone())
        .collect();
    successors.dedup();
    assert_eq!(
        successors.len(),
        1,
        "one successor, whoever asked: {successors:?}"
    );
    for e in results.iter().filter_map(|x| x.as_ref().err()) {
        assert_eq!(
            tonic::Status::from(clone_err(e)).code(),
            tonic::Code::Aborted,
            "{e}"
        );
    }
    for k in &r {
        k.refresh().await.unwrap();
        assert_eq!(
            k.ring_info("s", "r").unwrap().keys.len(),
            2,
            "exactly one key was created"
        );
    }

    // The scheduler runs on every replica at the same moment: exactly one
    // generates the successor; the others lose the CAS and converge.
    clock.set(UnixTime::from_secs(T0 + 84 * DAY));
    let reports = futures::future::join_all(r.iter().map(|k| k.tick())).await;
    let generated: usize = reports
        .iter()
        .flat_map(|rep| rep.generated.iter())
        .filter(|(ring, _)| ring.as_str() == "r")
        .count();
    assert_eq!(generated, 1, "exactly one successor: {reports:?}");
    assert!(
        reports.iter().all(|rep| rep.failed.is_empty()),
        "losing the CAS is not a failure: {reports:?}"
    );
    for k in &r {
        k.refresh().await.unwrap();
        assert_eq!(kids(k).len(), 2);
        assert_eq!(kids(k), kids(&r[0]));
    }

    // Emergency rotations racing on three replicas: exactly one new key per
    // winner; the losers are told to retry (ABORTED).
    let results =
        futures::future::join_all(r.iter().map(|k| k.rotate("r", true, "race", None))).await;
    let won = results.iter().filter(|x| x.is_ok()).count();
    for e in results.iter().filter_map(|x| x.as_ref().err()) {
        assert_eq!(
            tonic::Status::from(clone_err(e)).code(),
            tonic::Code::Aborted,
            "{e}"
        );
    }
    for k in &r {
        k.refresh().await.unwrap();
    }
    assert_eq!(r[0].ring_info("r", "r").unwrap().keys.len(), 2 + won);

    // One emergency rotation sent 20 times at once over the three replicas
    // with one request id (a client retrying everywhere): exactly one new
    // key, and every call answers with it.
    let id = RequestId::parse_optional("incident-42", "request_id")
        .unwrap()
        .unwrap();
    let before = r[0].ring_info("r", "r").unwrap().keys.len();
    let results = futures::future::join_all(
        (0..20).map(|i| r[i % 3].rotate("r", true, "incident", Some(&id))),
    )
    .await;
    let answers: std::collections::HashSet<_> = results
        .iter()
        .map(|x| x.as_ref().unwrap().0.kid.clone())
        .collect();
    assert_eq!(answers.len(), 1, "every call answers the same key");
    for k in &r {
        k.refresh().await.unwrap();
        assert_eq!(
            k.ring_info("r", "r").unwrap().keys.len(),
            before + 1,
            "one request id, one key"
        );
    }
    // The id is spent: reused for a scheduled rotation it is refused.
    let e = r[1]
        .rotate("r", false, "planned", Some(&id))
        .await
        .unwrap_err();
    let status = tonic::Status::from(e);
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("request_id: was used for an immediate rotation of ring r (key "),
        "{}",
        status.message()
    );

    // A revocation on one replica reaches the others at their next refresh
    // (at most refresh_interval; at once on NOTIFY).
    let active = sign(&r[0]).await;
    r[1].revoke("r", &active, "test").await.unwrap();
    for k in [&r[0], &r[2]] {
        k.refresh().await.unwrap();
        assert!(
            !kids(k).contains(&active),
            "revoked key gone from every JWKS"
        );
        assert_ne!(sign(k).await, active, "and no replica signs with it");
    }
    clock.advance(Duration::from_secs(1));
    drop(r);
    drop_schema(&schema).await;
}

fn clone_err(e: &signet::Error) -> signet::Error {
    match e {
        signet::Error::Conflict(r) => signet::Error::Conflict(r.clone()),
        other => panic!("unexpected error {other}"),
    }
}

/// Writes replica `i`'s config under `dir`: its own data dir (audit key,
/// lock), the shared KEK, and the shared store at `url` in `schema`,
/// refreshed every second.
fn replica_config(
    dir: &std::path::Path,
    i: usize,
    kek: &str,
    url: &str,
    schema: &str,
) -> std::path::PathBuf {
    let sub = dir.join(format!("r{i}"));
    std::fs::create_dir_all(&sub).unwrap();
    let config = process::write_config(&sub, &sub.join("data"), kek, &[("r", "ES256")]);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[store]\n",
        &format!("[store]\nurl = {url:?}\nschema = {schema:?}\nrefresh_interval_secs = 1\n"),
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn spawn_replica(config: &std::path::Path) -> process::Proc {
    process::Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap()
}

/// Three `signet server` processes on one PostgreSQL schema: a token from
/// any replica verifies against any replica's JWKS, and a revocation made
/// on one leaves every replica's JWKS within the refresh bound.
#[test]
fn three_server_processes_share_keys_and_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let schema = postgres::fresh_schema("procs");
    let kek = process::kek_file(&dir.path().join("kek"));
    let url = postgres::url();
    let servers: Vec<_> = (0..3)
        .map(|i| spawn_replica(&replica_config(dir.path(), i, &kek, &url, &schema)))
        .collect();
    // The first to start created the ring; the others load or refresh it.
    let kids = |s: &process::Proc| {
        let out = s.run(&["jwks", "--ring", "r"]);
        let set: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        set["keys"].as_array().map(|keys| {
            let mut kids: Vec<String> = keys.iter().map(|k| k["kid"].to_string()).collect();
            kids.sort();
            kids
        })
    };
    eventually(
        Duration::from_secs(20),
        "every replica holds the same keys",
        || {
            let sets: Vec<_> = servers.iter().map(kids).collect();
            sets[0].is_some() && sets.iter().all(|s| *s == sets[0])
        },
    );
    let jwks: Vec<String> = servers
        .iter()
        .map(|s| s.ok(&["jwks", "--ring", "r"]))
        .collect();
    for s in &servers {
        let token = s.ok(&["sign", "--ring", "r", "--claims", "{}"]);
        for j in &jwks {
            let set: serde_json::Value = serde_json::from_str(j).unwrap();
            let kid = kid_of(&token);
            assert!(
                set["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kid"].as_str() == Some(kid.as_str()))
            );
        }
    }
    // One audit key for the store: every replica digests a subject the
    // same way, so an auditor can follow it across the fleet's logs.
    let digests: std::collections::HashSet<String> = servers
        .iter()
        .map(|s| s.ok(&["audit", "hash", "--value", "alice"]))
        .collect();
    assert_eq!(digests.len(), 1, "{digests:?}");

    // 20 concurrent emergency Rotates with one request id, spread over the
    // three processes: every one succeeds with the same key, and exactly
    // one key was created.
    let count = |p: &process::Proc| {
        serde_json::from_str::<serde_json::Value>(&p.ok(&["keys", "--ring", "r", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    let before = count(&servers[0]);
    let calls: Vec<_> = (0..20)
        .map(|i| {
            std::process::Command::new(process::BIN)
                .args(["rotate", "--ring", "r", "--now", "--reason", "incident"])
                .args(["--request-id", "incident-7", "--addr", &servers[i % 3].grpc])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let printed: std::collections::HashSet<String> = calls
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            text.lines().next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        printed.len(),
        1,
        "one answer for one request id: {printed:?}"
    );
    // Every call has returned, so every write is in the store: once the
    // replicas agree (each that wrote sees its own key), they show it all.
    eventually(
        Duration::from_secs(20),
        "the replicas agree on the key count",
        || {
            let counts: Vec<_> = servers.iter().map(count).collect();
            counts.iter().all(|c| *c == counts[0]) && counts[0] > before
        },
    );
    for s in &servers {
        assert_eq!(count(s), before + 1, "exactly one key created");
    }

    // Emergency rotation then revocation of the old key, both on replica 0.
    let keys: serde_json::Value =
        serde_json::from_str(&servers[0].ok(&["keys", "--ring", "r", "--json"])).unwrap();
    let old = keys[0]["kid"].as_str().unwrap().to_owned();
    servers[0].ok(&["revoke", &old, "--ring", "r", "--reason", "test"]);
    // One deadline for all the other replicas: the refresh bound and a bit.
    eventually(
        Duration::from_secs(3),
        "revocation seen by every replica",
        || {
            servers[1..]
                .iter()
                .all(|s| !s.ok(&["jwks", "--ring", "r"]).contains(&old))
        },
    );
    for s in &servers[1..] {
        let token = s.ok(&["sign", "--ring", "r", "--claims", "{}"]);
        assert!(!token.is_empty());
    }
    drop(servers);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(drop_schema(&schema));
}

/// The change-notification path alone: with the periodic refresh at 60 s,
/// a revocation made on one replica leaves the other's JWKS, and its Sign
/// moves to the new key, within 1 s (LISTEN/NOTIFY, not the poll).
#[test]
fn a_revocation_reaches_another_replica_by_notification() {
    revocation_reaches_the_other_replica(true);
}

/// Changes committed while a replica starts, between loading its key set
/// and its LISTEN, announce nothing it can hear: it refreshes once it
/// listens, instead of holding a revoked key until its 60 s poll.
#[test]
fn a_revocation_made_while_a_replica_starts_is_not_missed() {
    revocation_reaches_the_other_replica(false);
}

fn revocation_reaches_the_other_replica(wait_for_listen: bool) {
    let dir = tempfile::tempdir().unwrap();
    let schema = postgres::fresh_schema("notify");
    let kek = process::kek_file(&dir.path().join("kek"));
    let url = postgres::url();
    let configs: Vec<_> = (0..2)
        .map(|i| {
            let config = replica_config(dir.path(), i, &kek, &url, &schema);
            let text = std::fs::read_to_string(&config).unwrap().replace(
                "refresh_interval_secs = 1\n",
                "refresh_interval_secs = 60\n",
            );
            std::fs::write(&config, text).unwrap();
            config
        })
        .collect();
    // One after the other: the first creates the ring.
    let first = spawn_replica(&configs[0]);
    let second = spawn_replica(&configs[1]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let old = kid_of(&second.ok(&["sign", "--ring", "r", "--claims", "{}"]));
    // Waiting: the second replica listens (and has refreshed once since)
    // before the writes, which can then reach it only as notifications.
    if wait_for_listen {
        eventually(
            Duration::from_secs(10),
            "the second replica listening",
            || {
                second
                    .stderr
                    .lock()
                    .unwrap()
                    .contains("listening for store changes")
            },
        );
    }
    first.ok(&["rotate", "--ring", "r", "--now", "--reason", "notify test"]);
    first.ok(&["revoke", &old, "--ring", "r", "--reason", "notify test"]);
    let revoked_at = std::time::Instant::now();
    let channel = rt.block_on(second.channel());
    let jwks_path = "/v1/rings/r/jwks.json";
    eventually(
        Duration::from_secs(1),
        "the revocation on the other replica, without its 60 s poll",
        || {
            let (status, _, body) = rt.block_on(common::http_get(second.http_addr(), jwks_path));
            let token = rt.block_on(async {
                signet::pb::signer_client::SignerClient::new(channel.clone())
                    .sign(signet::pb::SignRequest {
                        key_ring: "r".into(),
                        claims_json: b"{}".to_vec(),
                        ..Default::default()
                    })
                    .await
            });
            status == 200
                && !body.contains(&old)
                && token.is_ok_and(|t| kid_of(&t.into_inner().token) != old)
        },
    );
    eprintln!(
        "revocation seen on the other replica after {:?}",
        revoked_at.elapsed()
    );
    drop((first, second));
    rt.block_on(drop_schema(&schema));
}

/// With replicas, publish_lead must stay well above the refresh interval.
#[tokio::test]
async fn publish_lead_must_exceed_the_replica_refresh_bound() {
    let keys = KeyManager::ephemeral(Arc::new(ManualClock::new(UnixTime::from_secs(T0))))
        .await
        .unwrap();
    keys.create_ring("r", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    keys.set_min_publish_lead(Duration::from_secs(2 * 86_400));
    let policy = signet::keyring::Policy {
        publish_lead: Duration::from_secs(86_400),
        ..Default::default()
    };
    let err = keys.update_policy("r", policy.clone()).await.unwrap_err();
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().starts_with(
            "policy: publish_lead (1d) must be >= 2d (10 x the replicas' refresh interval)"
        ),
        "{}",
        status.message()
    );
    keys.set_min_publish_lead(Duration::from_secs(50));
    keys.update_policy("r", policy).await.unwrap();
}

/// The `kid` in a compact JWS's header.
fn kid_of(token: &str) -> String {
    common::part(token.trim(), 0)["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Stop the database under two replicas: both keep signing with the keys
/// they hold and serving their JWKS, readiness says degraded, admin writes
/// answer UNAVAILABLE without changing anything; when the database returns
/// both are ready again, writes work, and a rotation on one reaches the
/// other (the change listener reconnected, or polling caught up).
#[test]
fn database_outage_keeps_signing_refuses_writes_and_recovers() {
    let dir = postgres::cluster_parent();
    let db = postgres::Cluster::start(&dir.path().join("pg"));
    let schema = postgres::fresh_schema("outage");
    let kek = process::kek_file(&dir.path().join("kek"));
    let replicas: Vec<_> = (0..2)
        .map(|i| spawn_replica(&replica_config(dir.path(), i, &kek, &db.url, &schema)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = |p: &process::Proc, path: &str| rt.block_on(common::http_get(p.http_addr(), path));
    let keys_json = |p: &process::Proc| p.ok(&["keys", "--ring", "r", "--json"]);
    let kid = kid_of(&replicas[0].ok(&["sign", "--ring", "r", "--claims", "{}"]));
    eventually(Duration::from_secs(5), "both replicas hold the key", || {
        replicas[1].ok(&["jwks", "--ring", "r"]).contains(&kid)
    });
    let before = keys_json(&replicas[0]);
    for p in &replicas {
        let (status, _, body) = http(p, "/readyz");
        assert_eq!((status, body.as_str()), (200, "ready\n"));
    }

    db.stop();

    for p in &replicas {
        // A refresh fails once the store's connection wait runs out.
        eventually(Duration::from_secs(15), "store_up 0", || {
            rt.block_on(common::http_get(p.metrics_addr(), "/metrics"))
                .2
                .contains("signet_store_up 0")
        });
        // Signing and the JWKS go on with the keys held, after a failed
        // refresh.
        for _ in 0..3 {
            let token = p.ok(&["sign", "--ring", "r", "--claims", r#"{"sub":"outage"}"#]);
            assert_eq!(kid_of(&token), kid);
            let (status, _, jwks) = http(p, "/v1/rings/r/jwks.json");
            assert_eq!(status, 200, "{jwks}");
            assert!(jwks.contains(&kid));
        }
        let (status, _, body) = http(p, "/readyz");
        assert_eq!(status, 200, "a degraded replica stays in the load balancer");
        assert!(
            body.starts_with("degraded: key store unreachable"),
            "{body}"
        );
    }
    // Admin writes fail cleanly, naming the store and what to do.
    let out = replicas[0].run(&["rotate", "--ring", "r", "--now", "--reason", "outage"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unavailable: key store unavailable: retry when it answers"),
        "{err}"
    );
    let out = replicas[1].run(&["rings", "create", "new-ring", "--alg", "EdDSA"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unavailable: key store unavailable"), "{err}");
    let logs = replicas[0].stderr.lock().unwrap().clone();
    assert!(
        logs.contains("the shared store does not answer: signing with the keys held"),
        "{logs}"
    );

    db.restart();

    for p in &replicas {
        eventually(Duration::from_secs(20), "ready again", || {
            http(p, "/readyz").2 == "ready\n"
        });
        eventually(Duration::from_secs(5), "store_up back to 1", || {
            rt.block_on(common::http_get(p.metrics_addr(), "/metrics"))
                .2
                .contains("signet_store_up 1")
        });
    }
    assert_eq!(
        keys_json(&replicas[0]),
        before,
        "the refused writes left no trace"
    );
    let out = replicas[1].run(&["keys", "--ring", "new-ring"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "the ring whose creation failed does not exist"
    );
    replicas[0].ok(&[
        "rotate",
        "--ring",
        "r",
        "--now",
        "--reason",
        "after the outage",
    ]);
    let new = kid_of(&replicas[0].ok(&["sign", "--ring", "r", "--claims", "{}"]));
    assert_ne!(new, kid);
    eventually(
        Duration::from_secs(3),
        "the rotation reaches the other replica",
        || {
            kid_of(&replicas[1].ok(&["sign", "--ring", "r", "--claims", "{}"])) == new
                && replicas[1].ok(&["jwks", "--ring", "r"]).contains(&new)
        },
    );
    drop(replicas);
    drop(db);
}

/// Three server processes whose schedulers all find the same rotation due
/// at start: exactly one successor is created, published on every replica,
/// and the Active key keeps signing until it activates.
///
/// The servers run on the real clock, so the history is made first with a
/// controllable one: a manager over the same schema and KEK creates the
/// ring 91 days in the past (the default policy rotates every 90 days,
/// publishing 6 days ahead), which makes the rotation overdue now.
#[test]
fn three_server_processes_create_exactly_one_scheduled_successor() {
    let dir = tempfile::tempdir().unwrap();
    let schema = postgres::fresh_schema("sched");
    let kek = process::kek_file(&dir.path().join("kek"));
    let url = postgres::url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first = rt.block_on(async {
        let store: Arc<dyn KeyStore> =
            Arc::new(PostgresStore::open_in_schema(&url, &schema).await.unwrap());
        let spec: signet::seal::KekSpec = kek.parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let clock = Arc::new(ManualClock::new(UnixTime::from_secs(now - 91 * DAY)));
        let keys = KeyManager::open(store, clock, Arc::new(spec))
            .await
            .unwrap();
        keys.unseal().await.unwrap();
        let ring = keys
            .create_ring("r", KeySpec::new(Algorithm::Es256, 0).unwrap())
            .await
            .unwrap();
        keys.close().await;
        ring.keys[0].kid.to_string()
    });

    // Start the three at once, so their first scheduler passes race.
    let configs: Vec<_> = (0..3)
        .map(|i| replica_config(dir.path(), i, &kek, &url, &schema))
        .collect();
    let servers: Vec<_> = std::thread::scope(|s| {
        let starting: Vec<_> = configs
            .iter()
            .map(|c| s.spawn(|| spawn_replica(c)))
            .collect();
        starting.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let keys = |p: &process::Proc| {
        serde_json::from_str::<serde_json::Value>(&p.ok(&["keys", "--ring", "r", "--json"]))
            .unwrap()
    };
    eventually(
        Duration::from_secs(10),
        "a successor on every replica",
        || {
            servers
                .iter()
                .all(|p| keys(p).as_array().unwrap().len() >= 2)
        },
    );
    // Every replica's first scheduler pass (the one at start, which
    // races) is over, so any second writer has written; once the replicas
    // agree (each writer sees its own key), they show every key written.
    let runs = |p: &process::Proc| {
        let metrics = rt
            .block_on(common::http_get(p.metrics_addr(), "/metrics"))
            .2;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("signet_scheduler_runs_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    eventually(
        Duration::from_secs(20),
        "every first scheduler pass over and the replicas agreeing",
        || {
            let views: Vec<_> = servers.iter().map(|p| keys(p).to_string()).collect();
            servers.iter().all(|p| runs(p) >= 1.0) && views.iter().all(|v| *v == views[0])
        },
    );
    for p in &servers {
        let keys = keys(p);
        let keys = keys.as_array().unwrap();
        assert_eq!(keys.len(), 2, "exactly one successor: {keys:?}");
        assert_eq!(keys[0]["kid"], first.as_str());
        assert_eq!(
            keys[0]["state"], "active",
            "the old key signs until the successor activates"
        );
        assert_eq!(keys[1]["state"], "published");
        let successor = keys[1]["kid"].as_str().unwrap();
        assert!(p.ok(&["jwks", "--ring", "r"]).contains(successor));
        let token = p.ok(&["sign", "--ring", "r", "--claims", "{}"]);
        assert_eq!(kid_of(&token), first);
    }
    drop(servers);
    rt.block_on(drop_schema(&schema));
}

/// `signet operator rekey --config` on a replica's config re-keys the
/// shared PostgreSQL store (not an SQLite file in the data dir): after it,
/// the replicas start only with the new KEK, keep their keys and tokens,
/// and digest audit values as before.
#[test]
fn operator_rekey_moves_the_shared_store_to_a_new_kek() {
    let dir = tempfile::tempdir().unwrap();
    let schema = postgres::fresh_schema("rekey");
    let url = postgres::url();
    let old = process::kek_file(&dir.path().join("kek-old"));
    let configs: Vec<_> = (0..2)
        .map(|i| replica_config(dir.path(), i, &old, &url, &schema))
        .collect();
    let servers: Vec<_> = configs.iter().map(|c| spawn_replica(c)).collect();
    let token = servers[0].ok(&["sign", "--ring", "r", "--claims", "{}"]);
    let digest = servers[1].ok(&["audit", "hash", "--value", "alice"]);
    for s in servers {
        assert!(s.terminate().success());
    }

    let new = process::kek_file(&dir.path().join("kek-new"));
    let out = std::process::Command::new(process::BIN)
        .args([
            "operator",
            "rekey",
            "--config",
            configs[0].to_str().unwrap(),
        ])
        .args(["--new-kek", &new])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("re-wrapped 1 key(s) and the audit key under file:"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("every replica must be stopped"),
        "the operator is told"
    );

    // The old KEK no longer opens the shared store.
    let err = spawn_replica_err(&configs[1]);
    assert!(
        err.contains("is not the key-encryption key of this store"),
        "{err}"
    );
    for c in &configs {
        let text = std::fs::read_to_string(c).unwrap().replace(&old, &new);
        std::fs::write(c, text).unwrap();
    }
    let servers: Vec<_> = configs.iter().map(|c| spawn_replica(c)).collect();
    for s in &servers {
        common::verify(token.trim(), &s.ok(&["jwks", "--ring", "r"]));
        s.ok(&["sign", "--ring", "r", "--claims", "{}"]);
        assert_eq!(s.ok(&["audit", "hash", "--value", "alice"]), digest);
    }
    drop(servers);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(drop_schema(&schema));
}

/// Starts a replica that must fail; returns what it said.
fn spawn_replica_err(config: &std::path::Path) -> String {
    match process::Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]) {
        Ok(_) => panic!("the replica started"),
        Err(e) => e,
    }
}

/// A replica started while its database is down waits for it, saying why,
/// and serves once it is back.
#[test]
fn a_replica_started_while_the_database_is_down_waits_for_it() {
    let dir = postgres::cluster_parent();
    let db = postgres::Cluster::start(&dir.path().join("pg"));
    let kek = process::kek_file(&dir.path().join("kek"));
    let config = replica_config(dir.path(), 0, &kek, &db.url, "waits");
    db.stop();

    let starting = std::thread::spawn(move || spawn_replica(&config));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !starting.is_finished(),
        "no replica serves without its store"
    );
    db.restart();
    let replica = starting.join().unwrap();
    let logs = replica.stderr.lock().unwrap().clone();
    assert!(
        logs.contains("waiting for the PostgreSQL store (retrying every 2s)"),
        "{logs}"
    );
    let target = db.url.trim_start_matches("postgres://postgres@");
    assert!(
        logs.contains(&format!("postgres: cannot connect to {target}")),
        "the log says why: {logs}"
    );
    replica.ok(&["sign", "--ring", "r", "--claims", "{}"]);
}
