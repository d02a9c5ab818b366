//! Canary: at trace log level, across every RPC and error path, no private
//! key appears in logs, Status messages, responses or the data directory,
//! in any encoding.

use crate::common;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use common::process::Proc;
use signet::{
    crypto::Kid,
    pb::{
        self, key_admin_client::KeyAdminClient, operator_client::OperatorClient,
        signer_client::SignerClient,
    },
    seal::{KekSpec, KeyContext, envelope},
    store::{KeyStore, SqliteStore},
};

/// The bytes of a PKCS#8 key that are secret. P-256 and Ed25519 encodings
/// also carry the public key, and RSA's starts with the public modulus, so
/// take the scalar after its DER prefix, or RSA's second half (d, p, q and
/// the CRT values).
fn secret(alg: &str, der: &[u8]) -> Vec<u8> {
    let prefix: &[u8] = match alg {
        "ES256" => &[0x02, 0x01, 0x01, 0x04, 0x20],
        "EdDSA" | "Ed25519" => &[0x04, 0x22, 0x04, 0x20],
        _ => return der[der.len() / 2..].to_vec(),
    };
    let at = der.windows(prefix.len()).position(|w| w == prefix).unwrap() + prefix.len();
    der[at..at + 32].to_vec()
}

/// Text forms of a private key: hex, base64, base64url of the whole DER and
/// of each 24-byte window of its secret part, plus the PEM body lines that
/// hold secret bytes.
fn forms(alg: &str, der: &[u8]) -> Vec<String> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut out = vec![hex(der), STANDARD.encode(der), URL_SAFE_NO_PAD.encode(der)];
    let secret = secret(alg, der);
    for w in secret.windows(24).step_by(8) {
        out.push(hex(w));
        out.push(STANDARD.encode(w));
        out.push(URL_SAFE_NO_PAD.encode(w));
    }
    if alg.starts_with('R') || alg.starts_with('P') {
        // PEM lines from the second half of the key are all secret.
        let pem = STANDARD.encode(der);
        let lines: Vec<&str> = pem
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let half = lines.len() / 2 + 1;
        out.extend(
            lines[half..]
                .iter()
                .filter(|l| l.len() == 64)
                .map(|l| l.to_string()),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_private_key_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = Proc::dev(&data, &[], &[("RUST_LOG", "trace")]).unwrap();
    let ch = dev.channel().await;
    let mut signer = SignerClient::new(ch.clone());
    let mut admin = KeyAdminClient::new(ch.clone());
    let mut op = OperatorClient::new(ch.clone());
    let mut seen = Vec::<String>::new();

    for (name, alg) in [
        ("ps", "PS256"),
        ("es", "ES256"),
        ("ed", "EdDSA"),
        ("ed2", "Ed25519"),
    ] {
        let r = admin
            .create_key_ring(pb::CreateKeyRingRequest {
                issuer: Default::default(),
                name: name.into(),
                algorithm: alg.into(),
                rsa_bits: 0,
            })
            .await
            .unwrap();
        seen.push(format!("{r:?}"));
    }
    let rings = ["default", "ps", "es", "ed", "ed2"];
    for ring in rings {
        let req = |claims: &[u8], header: &[u8]| pb::SignRequest {
            key_ring: ring.into(),
            claims_json: claims.to_vec(),
            ttl: None,
            header_json: header.to_vec(),
        };
        for (claims, header) in [
            (&b"{\"sub\":\"canary\"}"[..], &b""[..]),
            (b"[1]", b""),
            (b"{\"a\":1,\"a\":2}", b""),
            (b"{\"exp\":\"x\"}", b""),
            (b"{}", b"{\"alg\":\"none\"}"),
            (b"\xff", b""),
        ] {
            let r = signer.sign(req(claims, header)).await;
            seen.push(format!("{r:?}"));
        }
        seen.push(format!(
            "{:?}",
            signer
                .get_jwks(pb::GetJwksRequest {
                    key_ring: ring.into()
                })
                .await
        ));
        seen.push(format!(
            "{:?}",
            admin
                .rotate(pb::RotateRequest {
                    key_ring: ring.into(),
                    immediate: true,
                    reason: "test".into(),
                    request_id: String::new(),
                    fresh: false,
                })
                .await
        ));
        seen.push(format!(
            "{:?}",
            admin
                .list_keys(pb::ListKeysRequest {
                    key_ring: ring.into()
                })
                .await
        ));
    }
    seen.push(format!(
        "{:?}",
        signer
            .sign(pb::SignRequest {
                key_ring: "nope".into(),
                ..Default::default()
            })
            .await
    ));
    seen.push(format!(
        "{:?}",
        op.seal(pb::SealRequest {
            reason: "canary".into()
        })
        .await
    ));
    seen.push(format!(
        "{:?}",
        signer
            .sign(pb::SignRequest {
                key_ring: "es".into(),
                claims_json: b"{}".to_vec(),
                ..Default::default()
            })
            .await
    ));
    seen.push(format!("{:?}", op.unseal(pb::UnsealRequest {}).await));
    seen.push(format!("{:?}", op.status(pb::StatusRequest {}).await));
    for args in [
        &["keys", "--ring", "es"][..],
        &["status"],
        &["jwks", "--ring", "ed"],
        &["sign", "--claims", "[]"],
    ] {
        let out = dev.run(args);
        seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
        seen.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let logs = dev.stderr.clone();
    assert!(dev.terminate().success());
    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging was on"
    );
    seen.push(logs);

    // Every file in the data directory, as bytes and as lossy text.
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        // Forms are ASCII, so a lossy text view still contains them.
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let windows: std::collections::HashSet<Vec<u8>> =
            bytes.windows(24).map(<[u8]>::to_vec).collect();
        files.push((path, text, windows));
    }

    // The private keys themselves, opened with the KEK like the server does.
    let store = SqliteStore::open(&data.join("signet.db")).await.unwrap();
    let kek = KekSpec::File(data.join("kek")).open().await.unwrap();
    let mut ders = Vec::new();
    for ring in store.load().await.unwrap() {
        for key in &ring.keys {
            let ctx = KeyContext {
                ring: &ring.name,
                kid: &key.kid,
                alg: ring.spec.alg(),
                timeline: &key.timeline,
            };
            let opened = envelope::open(&*kek, ctx, key.sealed.as_ref().unwrap())
                .await
                .unwrap();
            assert_eq!(opened.kid(), Kid::new(key.kid.as_str()));
            ders.push((
                ring.name.to_string(),
                ring.spec.alg().name(),
                opened.to_pkcs8().unwrap(),
            ));
        }
    }
    assert!(ders.len() >= 10, "every ring rotated once: {}", ders.len());

    for (ring, alg, der) in &ders {
        for form in forms(alg, der) {
            for text in &seen {
                assert!(
                    !text.contains(&form),
                    "ring {ring}: private key material {} in logs or responses",
                    &form[..8]
                );
            }
            for (path, text, _) in &files {
                assert!(
                    !text.contains(&form),
                    "ring {ring}: private key text in {}",
                    path.display()
                );
            }
        }
        for (path, _, windows) in &files {
            for w in secret(alg, der).windows(24).step_by(8) {
                assert!(
                    !windows.contains(w),
                    "ring {ring}: raw private key bytes in {}",
                    path.display()
                );
            }
        }
    }
}

/// Only sealed material reaches a shared PostgreSQL store: after a server
/// creates, uses and rotates a ring of every algorithm, no row of any table
/// in its schema holds a private key, as text in any encoding or as raw
/// bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_private_key_in_the_postgres_store() {
    use common::postgres;
    let dir = tempfile::tempdir().unwrap();
    let schema = postgres::fresh_schema("canary");
    let kek = common::process::kek_file(&dir.path().join("kek"));
    let rings = [
        ("rs", "RS256"),
        ("ps", "PS256"),
        ("es", "ES256"),
        ("ed", "EdDSA"),
        ("ed2", "Ed25519"),
    ];
    let config = common::process::write_config(dir.path(), &dir.path().join("data"), &kek, &rings);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[store]\n",
        &format!(
            "[store]\nurl = {:?}\nschema = {schema:?}\n",
            postgres::url()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap();
    for (ring, _) in rings {
        server.ok(&["sign", "--ring", ring, "--claims", r#"{"sub":"canary"}"#]);
        // Emergency first, then scheduled: three live keys per ring (an
        // emergency rotation would withdraw a waiting successor).
        server.ok(&["rotate", "--ring", ring, "--now", "--reason", "canary"]);
        server.ok(&["rotate", "--ring", ring, "--reason", "canary"]);
    }
    server.terminate();

    // Every row of every table, as PostgreSQL's text form (bytea as hex),
    // and every bytea value as raw bytes.
    let options = postgres::url()
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options)
        .await
        .unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
    )
    .bind(&schema)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(tables.len() >= 4, "{tables:?}");
    let mut rows = Vec::new();
    for table in &tables {
        // The names come from the catalogue; quote them all the same.
        let sql = format!("SELECT t::text FROM \"{table}\" t");
        let text: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        rows.extend(text);
    }
    let mut blobs: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT sealed FROM keys WHERE sealed IS NOT NULL")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    blobs.extend(
        sqlx::query_scalar::<_, Vec<u8>>("SELECT value FROM meta")
            .fetch_all(&mut conn)
            .await
            .unwrap(),
    );

    // The private keys themselves, opened with the KEK like the server does.
    let store = signet::store::PostgresStore::open_in_schema(&postgres::url(), &schema)
        .await
        .unwrap();
    let kek = KekSpec::File(dir.path().join("kek")).open().await.unwrap();
    let mut opened = 0;
    for ring in store.load().await.unwrap() {
        for key in &ring.keys {
            let Some(sealed) = &key.sealed else { continue };
            let ctx = KeyContext {
                ring: &ring.name,
                kid: &key.kid,
                alg: ring.spec.alg(),
                timeline: &key.timeline,
            };
            let der = envelope::open(&*kek, ctx, sealed)
                .await
                .unwrap()
                .to_pkcs8()
                .unwrap();
            let alg = ring.spec.alg().name();
            for form in forms(alg, &der) {
                for row in &rows {
                    assert!(
                        !row.contains(&form),
                        "ring {}: private key text in the database",
                        ring.name
                    );
                }
            }
            for w in secret(alg, &der).windows(24).step_by(8) {
                for blob in &blobs {
                    assert!(
                        !blob.windows(24).any(|b| b == w),
                        "ring {}: raw private key bytes in the database",
                        ring.name
                    );
                }
            }
            opened += 1;
        }
    }
    assert_eq!(opened, 15, "three keys per ring opened");
    store.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&mut conn)
    .await;
}
