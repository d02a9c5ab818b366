//! `signet server --check-config` checks every file, key and service the
//! server will use, one line each, and `signet server` runs the same checks
//! before it creates anything: a failure leaves no data directory behind.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use rcgen::SanType;

use crate::common::{
    certs::{ca, leaf},
    process::{BIN, Proc, kek_file, my_uid},
};

/// A complete mTLS configuration in a temp dir, every file valid.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        kek_file(&d.join("kek"));
        let ca = ca("check CA");
        let (cert, key) = leaf(
            &ca,
            "signet.test",
            vec![SanType::DnsName("localhost".try_into().unwrap())],
        );
        std::fs::write(d.join("server.pem"), &cert).unwrap();
        std::fs::write(d.join("server.key"), &key).unwrap();
        std::fs::write(d.join("ca.pem"), &ca.pem).unwrap();
        std::fs::write(d.join("clients.crl"), crate::common::certs::crl(&ca, &[7])).unwrap();
        // A second pair, for a key that matches no certificate here.
        let (_, other_key) = leaf(&ca, "other", vec![]);
        std::fs::write(d.join("other.key"), other_key).unwrap();
        Self::policy_text(d, &format!("{:?}", my_uid()), "\"admin\"");
        let s = Self { dir };
        s.write_config("");
        s
    }

    fn policy_text(d: &Path, identity: &str, action: &str) {
        std::fs::write(
            d.join("policy.toml"),
            format!("[[rule]]\nidentity = {identity}\nactions = [{action}]\nrings = [\"*\"]\n"),
        )
        .unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("signet.toml")
    }

    /// Writes the config; `replace` is `FROM=>TO` edits of its text.
    fn write_config(&self, replace: &str) {
        let p = |n: &str| self.path(n).display().to_string();
        let mut text = format!(
            "[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n\n\
             [store]\ndata_dir = {data:?}\n\n[seal]\nkek = \"file:{kek}\"\nallow_unlocked_memory = true\n\n\
             [tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {ca:?}\ncrls = [{crl:?}]\n\n\
             [http_tls]\ncert = {cert:?}\nkey = {key:?}\n\n[authz]\npolicy = {policy:?}\n",
            data = p("data"),
            kek = p("kek"),
            cert = p("server.pem"),
            key = p("server.key"),
            ca = p("ca.pem"),
            crl = p("clients.crl"),
            policy = p("policy.toml"),
        );
        for edit in replace.split(';').filter(|e| !e.is_empty()) {
            let (from, to) = edit.split_once("=>").unwrap();
            assert!(text.contains(from), "{from} not in the config");
            text = text.replace(from, to);
        }
        std::fs::write(self.config(), text).unwrap();
    }

    fn check(&self) -> Output {
        Command::new(BIN)
            .args([
                "server",
                "--config",
                self.config().to_str().unwrap(),
                "--check-config",
            ])
            .output()
            .unwrap()
    }

    /// Runs --check-config, expects it to fail, returns stderr.
    fn fails(&self) -> String {
        let out = self.check();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            !self.path("data").exists(),
            "--check-config created the data dir"
        );
        stderr.trim_end().to_owned()
    }
}

/// An X.509 v1 certificate (`openssl x509 -req` without extensions): TLS
/// refuses it with `UnsupportedCertVersion`.
const V1_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBFzCBvQIUI7V5vj5UBvMEtWoBbJwl9kKSthAwCgYIKoZIzj0EAwIwDTELMAkG
A1UEAwwCdjEwIBcNMjYxMjAxMTUyOTE5WhgPMjEyNjExMDcxNTI5MTlaMA0xCzAJ
BgNVBAMMAnYxMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEc4+XKypTzMfmn+W6
CrQgElOwONu/G7RoDEwkrMgqux9on3eblQSyn6vMvUmooihhFN3BOrxN8nESvMXO
mciCoDAKBggqhkjOPQQDAgNJADBGAiEAz/1WquNf8A4xRzec0HiwZio14EFthKB9
eE6eQ8bu76ICIQCPWbq200UySjR11LDAMY8ytKuGdjtxI/fbgkHD7hqnvA==
-----END CERTIFICATE-----
";

/// The example config as shipped names a KEK file that does not exist;
/// the check says so, and how to make one.
#[test]
fn unedited_example_fails_naming_the_missing_kek() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/signet.example.toml");
    let out = Command::new(BIN)
        .args(["server", "--config", example, "--check-config"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "signet: seal.kek file:/etc/signet/kek: file KEK /etc/signet/kek: cannot read it: \
             No such file or directory"
        ) && stderr.contains("(umask 077; head -c 32 /dev/urandom > /etc/signet/kek)"),
        "{stderr}"
    );
}

/// A valid config passes, one line per thing checked.
#[test]
fn valid_config_lists_each_check() {
    let s = Setup::new();
    let out = s.check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = |n: &str| s.path(n).display().to_string();
    for line in [
        format!(
            "ok  seal.kek file:{}: opens (the store has no check value yet",
            p("kek")
        ),
        format!("ok  store.data_dir {}: no store yet", p("data")),
        format!(
            "ok  tls cert {}: CN=signet.test, SAN DNS:localhost, expires ",
            p("server.pem")
        ),
        format!(
            "ok  tls client_ca {}: 1 CA certificate(s): CN=check CA",
            p("ca.pem")
        ),
        format!(
            "ok  tls crl {}: 1 CRL(s), 1 revoked certificate(s)",
            p("clients.crl")
        ),
        format!("ok  http_tls cert {}: CN=signet.test", p("server.pem")),
        format!("ok  authz policy {}: 1 rule(s)", p("policy.toml")),
        format!(
            "ok  audit sink file:{}/audit.log: in the data directory",
            p("data")
        ),
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&line)),
            "no line {line:?} in\n{stdout}"
        );
    }
    assert!(stdout.contains(", key matches\n"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with("1 ring(s))") || stdout.contains(": OK ("),
        "{stdout}"
    );
    assert!(
        !s.path("data").exists(),
        "--check-config created the data dir"
    );
}

/// Each broken part fails with a message naming the field and the fix, and
/// neither the check nor a real start leaves a data directory behind.
#[test]
fn each_broken_part_fails_with_its_message() {
    let s = Setup::new();
    let p = |n: &str| s.path(n).display().to_string();

    s.write_config(&format!(
        "cert = {:?}=>cert = {:?}",
        p("server.pem"),
        p("gone.pem")
    ));
    assert_eq!(
        s.fails(),
        format!(
            "signet: tls.cert {}: no such file; create it (see README, \"Certificates with \
             openssl\") or fix the path",
            p("gone.pem")
        )
    );

    s.write_config(&format!(
        "key = {:?}\nclient_ca=>key = {:?}\nclient_ca",
        p("server.key"),
        p("other.key")
    ));
    assert_eq!(
        s.fails(),
        format!(
            "signet: tls.key {}: does not match the certificate tls.cert {}; give the key the \
             certificate was issued for",
            p("other.key"),
            p("server.pem")
        )
    );

    std::fs::write(s.path("v1.pem"), V1_CERT).unwrap();
    s.write_config(&format!(
        "cert = {:?}\nkey=>cert = {:?}\nkey",
        p("server.pem"),
        p("v1.pem")
    ));
    assert_eq!(
        s.fails(),
        format!(
            "signet: tls.cert {}: an X.509 v1 certificate, which TLS refuses \
             (UnsupportedCertVersion); issue a v3 certificate with extensions (see README, \
             \"Certificates with openssl\")",
            p("v1.pem")
        )
    );

    // The CA's own certificate as the server's.
    s.write_config(&format!(
        "cert = {:?}\nkey=>cert = {:?}\nkey",
        p("server.pem"),
        p("ca.pem")
    ));
    assert_eq!(
        s.fails(),
        format!(
            "signet: tls.cert {}: a CA certificate used as a server certificate \
             (CaUsedAsEndEntity); issue a leaf certificate with basicConstraints=CA:FALSE from \
             this CA",
            p("ca.pem")
        )
    );

    s.write_config("");
    Setup::policy_text(s.dir.path(), &format!("{:?}", my_uid()), "\"sgn\"");
    let err = s.fails();
    assert!(
        err.starts_with(&format!(
            "signet: authz.policy {}: rule[0].actions[0]: unknown action \"sgn\"; expected one of sign,",
            p("policy.toml")
        )),
        "{err}"
    );
    // A real start fails the same way, before creating anything.
    let start = Proc::spawn(&["server", "--config", s.config().to_str().unwrap()], &[]);
    let Err(log) = start else {
        panic!("the server started with action \"sgn\"")
    };
    assert!(log.contains("unknown action \"sgn\""), "{log}");
    assert!(!log.contains("listening"), "{log}");
    assert!(
        !s.path("data").exists(),
        "a failed start created the data dir"
    );

    Setup::policy_text(s.dir.path(), "\"spiffe://test/ns/a\"", "\"sign\"");
    let err = s.fails();
    assert!(
        err.starts_with(&format!(
            "signet: authz.policy {}: rule[0].identity: ",
            p("policy.toml")
        )) && err.contains("uri:spiffe://test/ns/a"),
        "{err}"
    );
}

/// With a store on disk, the KEK must open its check value; the check
/// reads the store without changing it.
#[test]
fn wrong_kek_for_an_existing_store_fails() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kek = kek_file(&dir.path().join("kek"));
    let config = crate::common::process::write_config(dir.path(), &data, &kek, &[("r", "ES256")]);
    let cfg = config.to_str().unwrap();
    let server = Proc::spawn(&["server", "--config", cfg], &[]).unwrap();
    // An answered call: the server is serving (and handles SIGTERM).
    server.ok(&["status"]);
    // While it runs (its WAL open), the check reads through the WAL.
    let out = Command::new(BIN)
        .args(["server", "--config", cfg, "--check-config"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": opens the store's check value"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.terminate().success());
    let files = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read(e.path()).unwrap_or_default())
            })
            .collect();
        v.sort();
        v
    };
    let before = files(&data);
    let check = || {
        Command::new(BIN)
            .args(["server", "--config", cfg, "--check-config"])
            .output()
            .unwrap()
    };
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(": opens the store's check value"),
        "{stdout}"
    );
    let after = files(&data);
    assert!(
        after == before,
        "--check-config changed the data dir: {:?} -> {:?}",
        before.iter().map(|(n, b)| (n, b.len())).collect::<Vec<_>>(),
        after.iter().map(|(n, b)| (n, b.len())).collect::<Vec<_>>()
    );

    let kek2 = kek_file(&dir.path().join("kek2"));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&kek, &kek2);
    std::fs::write(&config, text).unwrap();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "signet: seal.kek {kek2}: is not the key-encryption key of this store (its check \
             value does not open); point seal.kek at the KEK this store was created with"
        )
    );
    let after = files(&data);
    assert!(
        after == before,
        "--check-config changed the data dir: {:?} -> {:?}",
        before.iter().map(|(n, b)| (n, b.len())).collect::<Vec<_>>(),
        after.iter().map(|(n, b)| (n, b.len())).collect::<Vec<_>>()
    );
}

/// A PostgreSQL store: reachable and still empty (nothing is created in
/// it), or unreachable, named with the fix.
#[test]
fn postgres_store_is_checked_without_being_created() {
    let s = Setup::new();
    let url = crate::common::postgres::url();
    let schema = crate::common::postgres::fresh_schema("check");
    let data = format!("data_dir = {:?}\n", s.path("data").display().to_string());
    s.write_config(&format!(
        "{data}=>{data}url = {url:?}\nschema = {schema:?}\n"
    ));
    let out = s.check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(": reachable (no Signet store in it yet: created at first start)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("opens (the store has no check value yet"),
        "{stdout}"
    );

    s.write_config(&format!(
        "{data}=>{data}url = \"postgres://signet@127.0.0.1:1/signet\"\n"
    ));
    let err = s.fails();
    assert!(
        err.starts_with("signet: store.url: 127.0.0.1:1/signet: cannot connect: "),
        "{err}"
    );
}

/// A SIGTERM sent the moment the server says it listens stops it cleanly
/// (exit 0, socket removed): the handler is installed before that line.
#[test]
fn sigterm_right_after_listening_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let kek = kek_file(&dir.path().join("kek"));
    let config =
        crate::common::process::write_config(dir.path(), &dir.path().join("data"), &kek, &[]);
    for _ in 0..5 {
        let server = Proc::spawn(&["server", "--config", config.to_str().unwrap()], &[]).unwrap();
        assert!(server.terminate().success(), "killed by SIGTERM");
        assert!(
            !dir.path().join("grpc.sock").exists(),
            "the socket is removed"
        );
    }
}
