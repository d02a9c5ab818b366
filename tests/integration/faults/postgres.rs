//! The fault points on the PostgreSQL store: its steps failing or crashing,
//! and the database lost in the middle of a rotation's transaction.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use signet::pb::{self, key_admin_client::KeyAdminClient};
use tonic::Code;

use super::{Proc, Survives, active, arm, common, crashed, kids, rotate_ring, runtime, state_of};

/// A `signet server` config for ring `r` on the PostgreSQL store at `url`
/// in `schema` (gRPC on a Unix socket, every grant for this uid).
fn pg_config(dir: &Path, url: &str, schema: &str) -> PathBuf {
    let kek = common::process::kek_file(&dir.join("kek"));
    let config = common::process::write_config(dir, &dir.join("data"), &kek, &[("r", "ES256")]);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[store]\n",
        &format!("[store]\nurl = {url:?}\nschema = {schema:?}\n"),
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn pg_server(config: &Path, faults: &Path) -> Proc {
    let faults = faults.to_str().unwrap();
    Proc::spawn(
        &["server", "--config", config.to_str().unwrap()],
        &[("SIGNET_FAULTS_FILE", faults)],
    )
    .unwrap()
}

/// The store steps on PostgreSQL: each fails with UNAVAILABLE and changes
/// nothing, and a crash at each leaves the old state (before the commit)
/// or the new (after it), with one active key.
#[test]
fn postgres_store_steps_fail_or_crash_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults");
    let schema = common::postgres::fresh_schema("faults");
    let config = pg_config(dir.path(), &common::postgres::url(), &schema);
    let rt = runtime();
    let points = [
        ("store-insert", Survives::Old),
        ("store-manifest", Survives::Old),
        ("store-commit", Survives::Old),
        ("store-committed", Survives::New),
    ];
    for (point, survives) in points {
        let proc = pg_server(&config, &faults);
        if survives == Survives::Old {
            let before = rt.block_on(state_of(&proc, "r"));
            arm(&proc, &faults, &format!("{point}=1*return"));
            let err = rt.block_on(rotate_ring(&proc, "r")).unwrap_err();
            assert_eq!(err.code(), Code::Unavailable, "{point}: {err:?}");
            assert!(err.message().contains("key store unavailable"), "{err:?}");
            assert_eq!(rt.block_on(state_of(&proc, "r")), before, "{point}");
            rt.block_on(rotate_ring(&proc, "r")).unwrap();
        }
        let before = rt.block_on(state_of(&proc, "r")).0;
        arm(&proc, &faults, &format!("{point}=return(crash)"));
        assert!(rt.block_on(rotate_ring(&proc, "r")).is_err());
        assert!(crashed(proc), "{point}: the process aborted");
        std::fs::remove_file(&faults).unwrap();
        let proc = pg_server(&config, &faults);
        let after = rt.block_on(state_of(&proc, "r")).0;
        match survives {
            Survives::Old => assert_eq!(kids(&after), kids(&before), "{point}: old state"),
            Survives::New => assert_eq!(after.len(), before.len() + 1, "{point}: new state"),
        }
        assert_eq!(active(&after).len(), 1, "{point}: exactly one active key");
        proc.ok(&["sign", "--ring", "r", "--claims", "{}"]);
        assert!(proc.terminate().success());
    }
    rt.block_on(drop_schema(&schema));
}

async fn drop_schema(schema: &str) {
    use sqlx::Connection;
    if let Ok(mut c) = sqlx::PgConnection::connect(&common::postgres::url()).await {
        // The schema name is ours (t_faults_<pid>_<n>), never input.
        let ddl = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
            .execute(&mut c)
            .await;
    }
}

/// The database goes away in the middle of a rotation's transaction (the
/// rotation paused at `store-insert`: its rows written, not committed):
/// the caller gets UNAVAILABLE, nothing of the rotation is in the store,
/// and once the database is back the same rotation succeeds.
#[test]
fn postgres_lost_mid_transaction_writes_nothing_and_resumes() {
    let parent = common::postgres::cluster_parent();
    let db = common::postgres::Cluster::start(&parent.path().join("pg"));
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults");
    let config = pg_config(dir.path(), &db.url, "signet");
    let rt = runtime();
    let proc = pg_server(&config, &faults);
    let before = rt.block_on(state_of(&proc, "r"));

    arm(&proc, &faults, "store-insert=pause");
    let grpc = proc.grpc.clone();
    let rotating = std::thread::spawn(move || {
        runtime().block_on(async {
            let channel = signet::cli::connect(&grpc).await.unwrap();
            KeyAdminClient::new(channel)
                .rotate(pb::RotateRequest {
                    key_ring: "r".into(),
                    immediate: true,
                    reason: "cut mid-transaction".into(),
                    ..Default::default()
                })
                .await
        })
    });
    let in_transaction = || {
        rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'",
            )
            .fetch_one(&mut c)
            .await
            .unwrap();
            n > 0
        })
    };
    common::eventually(
        Duration::from_secs(20),
        "the rotation's open transaction",
        in_transaction,
    );
    db.stop();
    arm(&proc, &faults, "");
    let err = rotating.join().unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("key store unavailable"), "{err:?}");

    db.restart();
    // Nothing of it reached the store: a fresh read (a restart) shows the
    // keys as they were, and the rotation then goes through.
    assert!(proc.terminate().success());
    let proc = pg_server(&config, &faults);
    assert_eq!(rt.block_on(state_of(&proc, "r")), before, "no half write");
    rt.block_on(rotate_ring(&proc, "r")).unwrap();
    let (keys, _) = rt.block_on(state_of(&proc, "r"));
    assert_eq!(keys.len(), before.0.len() + 1);
    assert_eq!(active(&keys).len(), 1);
}

/// `signet operator rekey` of a PostgreSQL store failing or crashing at
/// each step before its commit: the old KEK still opens every key, the new
/// one opens nothing; then a clean rekey goes through.
#[test]
fn postgres_rekey_failing_or_crashing_changes_no_kek() {
    let dir = tempfile::tempdir().unwrap();
    let faults = dir.path().join("faults");
    let schema = common::postgres::fresh_schema("rekeyfault");
    let config = pg_config(dir.path(), &common::postgres::url(), &schema);
    let proc = pg_server(&config, &faults);
    let jwks = proc.ok(&["jwks", "--ring", "r"]);
    assert!(proc.terminate().success());
    let new = common::process::kek_file(&dir.path().join("new-kek"));
    let rekey = |points: &str| {
        std::process::Command::new(common::process::BIN)
            .args(["operator", "rekey", "--config"])
            .arg(&config)
            .args(["--new-kek", &new, "--allow-unlocked-memory"])
            .env("FAIL_POINTS", points)
            .output()
            .unwrap()
    };
    for point in ["rekey-rewrap", "store-rekey-commit"] {
        for action in ["return", "return(crash)"] {
            let out = rekey(&format!("{point}={action}"));
            assert!(!out.status.success(), "{point}={action}");
            if action == "return(crash)" {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(out.status.signal(), Some(6), "{point}: aborted");
            }
            let proc = pg_server(&config, &faults);
            assert_eq!(proc.ok(&["jwks", "--ring", "r"]), jwks, "{point}={action}");
            proc.ok(&["sign", "--ring", "r", "--claims", "{}"]);
            assert!(proc.terminate().success());
        }
    }
    let out = rekey("");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[])
        .err()
        .unwrap();
    assert!(err.contains("is not the key-encryption key"), "{err}");
    let rt = runtime();
    rt.block_on(drop_schema(&schema));
}
