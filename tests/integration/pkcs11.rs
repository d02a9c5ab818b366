//! The PKCS#11 KEK against a real SoftHSM2 token.
//!
//! # How SoftHSM2 finds its token
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` from the process environment when the
//! module is initialised, and the module is process-global. Setting the
//! variable from a test needs `std::env::set_var`, which is `unsafe` in
//! edition 2024, and the crate forbids `unsafe_code` (integration tests
//! inherit the lint). So each HSM test re-runs this test binary as a child
//! process with `SOFTHSM2_CONF` in the child's environment from the start:
//!
//! 1. The parent makes a fresh temporary directory, runs
//!    `scripts/softhsm-setup` into it (token `signet-test`, user PIN 1234)
//!    and starts `current_exe() pkcs11::<test> --exact` with `SOFTHSM2_CONF`, the
//!    module path and the PIN variables set, plus a marker naming the test.
//! 2. The child sees the marker, creates the AES keys through cryptoki and
//!    runs the test body; the parent asserts the child passed and really
//!    ran (it leaves a file behind).
//!
//! Every test thus has its own token and its own module state (PKCS#11
//! login state is per process), so tests run in parallel. A setup failure
//! fails the test; nothing is skipped.

use std::{
    env,
    future::Future,
    path::{Path, PathBuf},
    process::Command,
};

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    mechanism::Mechanism,
    object::{Attribute, KeyType, ObjectClass},
    session::UserType,
    types::AuthPin,
};
use signet::seal::{DataKey, Kek, KekError, Pkcs11Kek, Pkcs11Spec};

use crate::common;

/// Set in the child only: the name of the test it runs.
const CHILD: &str = "SIGNET_TEST_PKCS11_CHILD";
/// The child's scratch directory (the parent's temporary directory).
const DIR: &str = "SIGNET_TEST_PKCS11_DIR";
/// Path of the SoftHSM2 module, as found by the setup script.
const MODULE: &str = "SIGNET_TEST_PKCS11_MODULE";
/// Holds the token's user PIN.
const PIN_VAR: &str = "SIGNET_TEST_PKCS11_PIN";
/// Holds a wrong PIN.
const WRONG_PIN_VAR: &str = "SIGNET_TEST_PKCS11_WRONG_PIN";
/// Never set.
const UNSET_VAR: &str = "SIGNET_TEST_PKCS11_NOT_SET";

const TOKEN: &str = "signet-test";
const USER_PIN: &str = "1234";
const WRONG_PIN: &str = "wrong-pin-7f3a";

/// A test that runs in a child process against its own SoftHSM2 token.
macro_rules! hsm_test {
    ($name:ident, |$hsm:ident| $body:expr) => {
        #[test]
        fn $name() {
            in_softhsm(stringify!($name), |$hsm: Hsm| async move { $body });
        }
    };
}

/// What a test body gets: the token's module, ready keys and spec builders.
struct Hsm {
    module: PathBuf,
}

impl Hsm {
    /// A spec for `key` on the test token, PIN read from `pin_env`.
    fn spec_with(&self, token: &str, key: &str, pin_env: &str) -> Pkcs11Spec {
        Pkcs11Spec::parse(&format!(
            "module={};token={token};key={key};pin-env={pin_env}",
            self.module.display()
        ))
        .unwrap()
    }

    fn spec(&self, key: &str) -> Pkcs11Spec {
        self.spec_with(TOKEN, key, PIN_VAR)
    }

    fn open(&self, key: &str) -> Pkcs11Kek {
        Pkcs11Kek::open(&self.spec(key)).unwrap()
    }

    /// Creates the test keys with a session of its own, then closes it so
    /// the code under test starts logged out (closing a token's last
    /// session logs the application out).
    fn create_keys(&self) {
        let ctx = Pkcs11::new(&self.module).unwrap();
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap();
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|slot| ctx.get_token_info(*slot).unwrap().label() == TOKEN)
            .expect("the setup script made the token");
        let session = ctx.open_rw_session(slot).unwrap();
        session
            .login(UserType::User, Some(&AuthPin::from(USER_PIN)))
            .unwrap();
        // (label, extractable, sensitive). No "kek": scripts/softhsm-setup
        // generates it with pkcs11-tool, the command README gives, so every
        // test opening "kek" also proves that command makes a key Signet
        // accepts.
        for (label, extractable, sensitive) in [
            ("other-kek", false, true),
            ("leaky", true, true),
            ("exposed", false, false),
            ("was-leaky", true, true),
            ("was-exposed", false, false),
        ] {
            let handle = session
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::AES),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(sensitive),
                        Attribute::Extractable(extractable),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                        Attribute::ValueLen(32.into()),
                        Attribute::Label(label.as_bytes().to_vec()),
                    ],
                )
                .unwrap();
            // Locked down after creation: CKA_EXTRACTABLE false and
            // CKA_SENSITIVE true now, but the token remembers that the key
            // was once readable (NEVER_EXTRACTABLE / ALWAYS_SENSITIVE false).
            match label {
                "was-leaky" => session
                    .update_attributes(handle, &[Attribute::Extractable(false)])
                    .unwrap(),
                "was-exposed" => session
                    .update_attributes(handle, &[Attribute::Sensitive(true)])
                    .unwrap(),
                _ => {}
            }
        }
        session.logout().unwrap();
    }
}

/// Runs `body` in a child process that has `SOFTHSM2_CONF` set (see the
/// file's doc). In the parent, prepares the token and waits for the child.
fn in_softhsm<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Hsm) -> Fut,
    Fut: Future<Output = ()>,
{
    if env::var(CHILD).is_ok_and(|child| child == name) {
        let hsm = Hsm {
            module: env::var_os(MODULE).unwrap().into(),
        };
        hsm.create_keys();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(body(hsm));
        let dir = PathBuf::from(env::var_os(DIR).unwrap());
        std::fs::write(dir.join("child-ran"), name).unwrap();
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let (conf, module) = softhsm_setup(dir.path());
    // The test's full path in this binary: `pkcs11::<name>`.
    let path = format!(
        "{}::{name}",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let out = Command::new(env::current_exe().unwrap())
        .args([path.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .env(DIR, dir.path())
        .env("SOFTHSM2_CONF", &conf)
        .env(MODULE, &module)
        .env(PIN_VAR, USER_PIN)
        .env(WRONG_PIN_VAR, WRONG_PIN)
        .env_remove(UNSET_VAR)
        .output()
        .unwrap();
    let log = format!(
        "child stdout:\n{}\nchild stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "test {name} failed in its child\n{log}"
    );
    // A filter that matched nothing would pass silently: insist it ran.
    let ran = std::fs::read_to_string(dir.path().join("child-ran")).unwrap_or_default();
    assert_eq!(ran, name, "the child did not run test {name}\n{log}");
}

/// Runs `scripts/softhsm-setup` into `dir`: returns the config file and the
/// module path. Panics (fails the test) if SoftHSM2 cannot be set up.
fn softhsm_setup(dir: &Path) -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/softhsm-setup");
    let out = Command::new(&script).arg(dir).output().unwrap_or_else(|e| {
        panic!("cannot run {}: {e}", script.display());
    });
    assert!(
        out.status.success(),
        "SoftHSM2 setup failed; the PKCS#11 tests need it:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim_end());
    assert!(conf.is_file(), "setup printed {}", conf.display());
    let module = std::fs::read_to_string(dir.join("module.path")).unwrap();
    (conf, PathBuf::from(module.trim_end()))
}

fn unavailable(result: Result<Pkcs11Kek, KekError>) -> String {
    match result {
        Err(KekError::Unavailable(message)) => message,
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(kek) => panic!("expected Unavailable, opened {kek:?}"),
    }
}

fn assert_integrity(result: Result<DataKey, KekError>, what: &str) {
    match result {
        Err(KekError::Integrity) => {}
        Err(other) => panic!("{what}: expected Integrity, got {other:?}"),
        Ok(_) => panic!("{what}: the wrapped key opened"),
    }
}

const DEK: [u8; 32] = *b"0123456789abcdef0123456789abcdef";

hsm_test!(wrap_unwrap_round_trip, |hsm| {
    let kek = hsm.open("kek");
    assert_eq!(kek.kind(), "pkcs11");
    let wrapped = kek.wrap(&DEK, b"ring/key-1").await.unwrap();
    assert_eq!(wrapped.len(), 12 + 32 + 16, "iv || ciphertext || tag");
    assert!(
        !wrapped.windows(32).any(|w| w == DEK),
        "the key is encrypted"
    );
    let again = kek.wrap(&DEK, b"ring/key-1").await.unwrap();
    assert_ne!(wrapped, again, "every wrap draws a fresh IV");
    assert_eq!(*kek.unwrap(&wrapped, b"ring/key-1").await.unwrap(), DEK);
    assert_eq!(*kek.unwrap(&again, b"ring/key-1").await.unwrap(), DEK);
});

hsm_test!(concurrent_calls_share_one_session, |hsm| {
    let kek = std::sync::Arc::new(hsm.open("kek"));
    let tasks: Vec<_> = (0..16u8)
        .map(|i| {
            let kek = kek.clone();
            tokio::spawn(async move {
                let dek = [i; 32];
                let aad = [i];
                let wrapped = kek.wrap(&dek, &aad).await.unwrap();
                assert_eq!(*kek.unwrap(&wrapped, &aad).await.unwrap(), dek);
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
});

hsm_test!(a_different_aad_is_an_integrity_failure, |hsm| {
    let kek = hsm.open("kek");
    let wrapped = kek.wrap(&DEK, b"ring/key-1").await.unwrap();
    for aad in [&b"ring/key-2"[..], b"", b"ring/key-1\0"] {
        assert_integrity(kek.unwrap(&wrapped, aad).await, &format!("aad {aad:?}"));
    }
});

hsm_test!(any_altered_byte_is_an_integrity_failure, |hsm| {
    let kek = hsm.open("kek");
    let wrapped = kek.wrap(&DEK, b"aad").await.unwrap();
    // Every byte: IV, ciphertext and tag.
    for i in 0..wrapped.len() {
        let mut altered = wrapped.clone();
        altered[i] ^= 0x01;
        assert_integrity(
            kek.unwrap(&altered, b"aad").await,
            &format!("byte {i} flipped"),
        );
    }
    for bad in [&wrapped[..wrapped.len() - 1], &wrapped[..12], &[][..]] {
        assert_integrity(
            kek.unwrap(bad, b"aad").await,
            &format!("{} bytes", bad.len()),
        );
    }
    let mut longer = wrapped.clone();
    longer.push(0);
    assert_integrity(kek.unwrap(&longer, b"aad").await, "one byte appended");
    // The session is still usable after the failures.
    assert_eq!(*kek.unwrap(&wrapped, b"aad").await.unwrap(), DEK);
});

hsm_test!(another_key_is_an_integrity_failure, |hsm| {
    let kek = hsm.open("kek");
    let other = hsm.open("other-kek");
    let wrapped = kek.wrap(&DEK, b"aad").await.unwrap();
    assert_integrity(other.unwrap(&wrapped, b"aad").await, "other-kek");
    assert_eq!(*kek.unwrap(&wrapped, b"aad").await.unwrap(), DEK);
});

hsm_test!(a_wrong_pin_is_reported_without_the_pin, |hsm| {
    let message = unavailable(Pkcs11Kek::open(&hsm.spec_with(TOKEN, "kek", WRONG_PIN_VAR)));
    assert!(message.contains("wrong PIN"), "{message}");
    assert!(message.contains("CKR_PIN_INCORRECT"), "{message}");
    assert!(message.contains(TOKEN), "{message}");
    assert!(message.contains(WRONG_PIN_VAR), "{message}");
    assert!(!message.contains(WRONG_PIN), "the PIN leaked: {message}");
    // The right PIN still works afterwards.
    hsm.open("kek");
});

hsm_test!(an_unknown_token_is_named, |hsm| {
    let message = unavailable(Pkcs11Kek::open(&hsm.spec_with(
        "no-such-token",
        "kek",
        PIN_VAR,
    )));
    assert!(
        message.starts_with("pkcs11 KEK: token \"no-such-token\" not found in module "),
        "{message}"
    );
    assert!(
        message.contains(&hsm.module.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("\"signet-test\""),
        "lists tokens: {message}"
    );
});

hsm_test!(an_unknown_key_is_named, |hsm| {
    let message = unavailable(Pkcs11Kek::open(&hsm.spec("no-such-key")));
    assert!(
        message.starts_with(
            "pkcs11 KEK: no AES key labelled \"no-such-key\" on token \"signet-test\""
        ),
        "{message}"
    );
});

hsm_test!(a_missing_pin_variable_is_named, |hsm| {
    let message = unavailable(Pkcs11Kek::open(&hsm.spec_with(TOKEN, "kek", UNSET_VAR)));
    assert!(message.starts_with("pkcs11 KEK: "), "{message}");
    assert!(message.contains(UNSET_VAR), "{message}");
    assert!(message.contains("not set"), "{message}");
});

hsm_test!(an_extractable_key_is_refused, |hsm| {
    let message = unavailable(Pkcs11Kek::open(&hsm.spec("leaky")));
    assert!(message.contains("\"leaky\""), "{message}");
    assert!(message.contains("extractable"), "{message}");
    assert!(message.contains("never leave the HSM"), "{message}");
});

hsm_test!(a_non_sensitive_key_is_refused, |hsm| {
    let message = unavailable(Pkcs11Kek::open(&hsm.spec("exposed")));
    assert!(message.contains("\"exposed\""), "{message}");
    assert!(message.contains("not sensitive"), "{message}");
    assert!(message.contains("never leave the HSM"), "{message}");
});

hsm_test!(
    a_key_that_was_ever_extractable_or_readable_is_refused,
    |hsm| {
        let message = unavailable(Pkcs11Kek::open(&hsm.spec("was-leaky")));
        assert!(message.contains("\"was-leaky\""), "{message}");
        assert!(
            message.contains("CKA_NEVER_EXTRACTABLE is not true"),
            "{message}"
        );
        let message = unavailable(Pkcs11Kek::open(&hsm.spec("was-exposed")));
        assert!(message.contains("\"was-exposed\""), "{message}");
        assert!(
            message.contains("CKA_ALWAYS_SENSITIVE is not true"),
            "{message}"
        );
        hsm.open("kek");
    }
);

// The token goes away under an open KEK (its directory is gone, as when
// the device is pulled) and comes back: the same KEK object fails
// meanwhile, with back-off between reopen attempts, then reopens its
// session (starting the module afresh: SoftHSM2 rescans its tokens only in
// C_Initialize) and logs in again by itself; what it wrapped before still
// opens.
hsm_test!(the_session_is_reopened_when_the_token_returns, |hsm| {
    let kek = hsm.open("kek");
    let wrapped = kek.wrap(&DEK, b"aad").await.unwrap();
    let dir = PathBuf::from(env::var_os(DIR).unwrap());
    let (tokens, away) = (dir.join("tokens"), dir.join("tokens.away"));

    std::fs::rename(&tokens, &away).unwrap();
    let first = kek.wrap(&DEK, b"aad").await.unwrap_err().to_string();
    // SoftHSM2 without its token directory fails C_Initialize itself.
    assert!(first.starts_with("pkcs11 KEK: "), "{first}");
    let second = kek.unwrap(&wrapped, b"aad").await.unwrap_err().to_string();
    assert!(
        second.contains("the next attempt to reopen a session is in"),
        "back-off: {second}"
    );

    std::fs::rename(&away, &tokens).unwrap();
    let start = std::time::Instant::now();
    loop {
        match kek.unwrap(&wrapped, b"aad").await {
            Ok(dek) => {
                assert_eq!(*dek, DEK);
                break;
            }
            Err(e) => {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(10),
                    "never recovered: {e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let again = kek.wrap(&DEK, b"aad2").await.unwrap();
    assert_eq!(*kek.unwrap(&again, b"aad2").await.unwrap(), DEK);
});

hsm_test!(debug_shows_where_not_secrets, |hsm| {
    let kek = hsm.open("kek");
    let debug = format!("{kek:?}");
    assert!(
        debug.contains("signet-test") && debug.contains("\"kek\""),
        "{debug}"
    );
    assert!(!debug.contains(USER_PIN), "{debug}");
});

#[test]
fn a_missing_module_is_named() {
    let spec =
        Pkcs11Spec::parse("module=/nonexistent/libnothing.so;token=t;key=k;pin-env=PIN").unwrap();
    let message = unavailable(Pkcs11Kek::open(&spec));
    assert!(
        message.starts_with("pkcs11 KEK: cannot load module /nonexistent/libnothing.so"),
        "{message}"
    );
}

#[test]
fn a_spec_round_trips() {
    let body = "module=/usr/lib/softhsm/libsofthsm2.so;token=signet;key=kek;pin-env=SIGNET_PIN";
    let spec = Pkcs11Spec::parse(body).unwrap();
    assert_eq!(spec.module(), Path::new("/usr/lib/softhsm/libsofthsm2.so"));
    assert_eq!(spec.token(), "signet");
    assert_eq!(spec.key(), "kek");
    assert_eq!(spec.pin_env(), "SIGNET_PIN");
    assert_eq!(spec.to_string(), body);
    assert_eq!(Pkcs11Spec::parse(&spec.to_string()).unwrap(), spec);
    // Order does not matter.
    let shuffled = "pin-env=SIGNET_PIN;key=kek;token=signet;module=/usr/lib/softhsm/libsofthsm2.so";
    assert_eq!(Pkcs11Spec::parse(shuffled).unwrap(), spec);
}

#[test]
fn spec_errors_name_the_field_and_the_rule() {
    const FORMAT: &str = "(format: module=PATH;token=LABEL;key=LABEL;pin-env=VAR)";
    let cases = [
        ("module=/m.so;token=t;key=k", "missing \"pin-env\""),
        ("token=t;key=k;pin-env=P", "missing \"module\""),
        ("module=/m.so;key=k;pin-env=P", "missing \"token\""),
        ("module=/m.so;token=t;pin-env=P", "missing \"key\""),
        (
            "module=/m.so;token=t;key=k;pin-env=P;slot=0",
            "unknown field \"slot\"",
        ),
        (
            "module=/m.so;token=t;key=k;key=k2;pin-env=P",
            "\"key\" given twice",
        ),
        ("module=/m.so;token=;key=k;pin-env=P", "\"token\" is empty"),
        (
            "module=m.so;token=t;key=k;pin-env=P",
            "\"module\" must be an absolute path",
        ),
        (
            "module=/m.so;token=this-label-is-far-too-long-for-pkcs11;key=k;pin-env=P",
            "\"token\" is longer than 32 bytes",
        ),
        (
            "module=/m.so;token=t;key=k;pin-env=MY-PIN",
            "\"pin-env\" must be an environment variable name",
        ),
        (
            "module=/m.so;token=t;key=k;pin-env=P;",
            "field 5 has no \"=\"",
        ),
        ("", "field 1 has no \"=\""),
    ];
    for (body, rule) in cases {
        let message = match Pkcs11Spec::parse(body) {
            Err(KekError::Unavailable(message)) => message,
            other => panic!("{body:?} parsed as {other:?}"),
        };
        assert!(
            message.starts_with(&format!("pkcs11 KEK spec: {rule}")),
            "{body:?}: {message}"
        );
        assert!(message.ends_with(FORMAT), "{body:?}: {message}");
    }
}

#[test]
fn spec_errors_never_echo_values() {
    // A PIN pasted into the spec by mistake must not reach the logs.
    for body in [
        "module=/m.so;token=t;key=k;pin=s3cret-PIN",
        "module=/m.so;token=t;key=k;s3cret-PIN",
        "module=/m.so;token=t;key=k;pin-env=s3cret-PIN",
    ] {
        let message = Pkcs11Spec::parse(body).unwrap_err().to_string();
        assert!(!message.contains("s3cret"), "{message}");
    }
}

// The whole product path with the KEK in SoftHSM2: the real binary signs,
// restarts on the same data dir, refuses a wrong PIN or key label without
// touching the store, and re-keys from one HSM key to another.
hsm_test!(sign_restart_rekey_with_the_kek_in_softhsm, |hsm| {
    use common::process::{BIN, Proc};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spec = |key: &str, pin: &str| format!("pkcs11:{}", hsm.spec_with(TOKEN, key, pin));
    let kek = spec("kek", PIN_VAR);

    let dev = Proc::dev(&data, &["--kek", &kek], &[]).unwrap();
    let token = dev.ok(&["sign", "--claims", r#"{"sub":"hsm"}"#]);
    let status = dev.ok(&["status"]);
    assert!(
        status.contains("kek:     pkcs11 (pkcs11:module="),
        "{status}"
    );
    assert!(dev.terminate().success());
    let db = std::fs::read(data.join("signet.db")).unwrap();

    for (bad, want) in [
        (spec("kek", WRONG_PIN_VAR), "wrong PIN"),
        (spec("no-such-key", PIN_VAR), "no-such-key"),
        (
            spec("other-kek", PIN_VAR),
            "is not the key-encryption key of this store",
        ),
    ] {
        let err = Proc::dev(&data, &["--kek", &bad], &[]).err().unwrap();
        assert!(err.contains(want), "{bad}: {err}");
        assert!(
            !err.contains(WRONG_PIN) && !err.contains(USER_PIN),
            "no PIN in: {err}"
        );
    }
    assert!(
        std::fs::read(data.join("signet.db")).unwrap() == db,
        "store untouched"
    );

    let dev = Proc::dev(&data, &["--kek", &kek], &[]).unwrap();
    let jwks = dev.ok(&["jwks"]);
    common::verify(token.trim(), &jwks);
    let again = dev.ok(&["sign", "--claims", "{}"]);
    assert_eq!(
        common::part(again.trim(), 0)["kid"],
        common::part(token.trim(), 0)["kid"]
    );
    assert!(dev.terminate().success());

    let new = spec("other-kek", PIN_VAR);
    let out = Command::new(BIN)
        .args([
            "operator",
            "rekey",
            "--data-dir",
            data.to_str().unwrap(),
            "--kek",
            &kek,
            "--new-kek",
            &new,
            // As the test servers do: a CI runner may lock no memory.
            "--allow-unlocked-memory",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = Proc::dev(&data, &["--kek", &kek], &[]).err().unwrap();
    assert!(
        err.contains("is not the key-encryption key of this store"),
        "{err}"
    );
    let dev = Proc::dev(&data, &["--kek", &new], &[]).unwrap();
    common::verify(token.trim(), &dev.ok(&["jwks"]));
    dev.ok(&["sign", "--claims", "{}"]);
});

// Two `signet server` replicas on one PostgreSQL schema, each with the KEK
// in SoftHSM2; replica 0 reads its own copy of the token. Replica 0's token
// goes away (its directory moved) while replica 1 rotates at once: replica
// 0's refresh still takes in the new timelines (it stops signing with the
// retired key: the new one is not loaded, UNAVAILABLE), and when the token
// is back its provider reopens a session and logs in again by itself, the
// refresh opens the new key, and replica 0 signs with it: no Seal/Unseal.
hsm_test!(
    a_replica_recovers_its_hsm_and_applies_a_rotation_made_meanwhile,
    |hsm| {
        use common::{
            eventually, postgres,
            process::{Proc, write_config},
        };
        use std::time::Duration;
        let dir = PathBuf::from(env::var_os(DIR).unwrap());
        // Replica 0's token: a copy of the token directory, keys included.
        let copy = dir.join("tokens-r0");
        let status = Command::new("cp")
            .arg("-a")
            .arg(dir.join("tokens"))
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        let conf0 = dir.join("softhsm2-r0.conf");
        std::fs::write(
        &conf0,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\nslots.mechanisms = ALL\nlibrary.reset_on_fork = false\n",
            copy.display()
        ),
    )
    .unwrap();
        let conf1 = env::var("SOFTHSM2_CONF").unwrap();
        let kek = format!("pkcs11:{}", hsm.spec("kek"));
        let schema = postgres::fresh_schema("hsm");
        let url = postgres::url();
        let spawn = |i: usize, conf: &str| {
            let sub = dir.join(format!("r{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let config = write_config(&sub, &sub.join("data"), &kek, &[("r", "ES256")]);
            let text = std::fs::read_to_string(&config).unwrap().replace(
                "[store]\n",
                &format!(
                    "[store]\nurl = {url:?}\nschema = {schema:?}\nrefresh_interval_secs = 1\n"
                ),
            );
            std::fs::write(&config, text).unwrap();
            Proc::spawn(
                &["server", "--config", config.to_str().unwrap()],
                &[("SOFTHSM2_CONF", conf)],
            )
            .unwrap()
        };
        let kid = |token: &str| {
            common::part(token.trim(), 0)["kid"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let other = spawn(1, &conf1);
        let replica = spawn(0, conf0.to_str().unwrap());
        let old = kid(&other.ok(&["sign", "--ring", "r", "--claims", "{}"]));
        assert_eq!(
            kid(&replica.ok(&["sign", "--ring", "r", "--claims", "{}"])),
            old
        );

        let away = dir.join("tokens-r0.away");
        std::fs::rename(&copy, &away).unwrap();
        other.ok(&[
            "rotate",
            "--ring",
            "r",
            "--now",
            "--reason",
            "rotated while r0's HSM is away",
        ]);
        let new = kid(&other.ok(&["sign", "--ring", "r", "--claims", "{}"]));
        assert_ne!(new, old);
        eventually(
            Duration::from_secs(10),
            "replica 0 takes in the rotation without its HSM",
            || {
                let out = replica.run(&["sign", "--ring", "r", "--claims", "{}"]);
                let err = String::from_utf8_lossy(&out.stderr);
                !out.status.success() && err.contains("Unavailable") && err.contains(&new)
            },
        );

        std::fs::rename(&away, &copy).unwrap();
        let start = std::time::Instant::now();
        loop {
            let out = replica.run(&["sign", "--ring", "r", "--claims", "{}"]);
            if out.status.success() && kid(&String::from_utf8_lossy(&out.stdout)) == new {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "replica 0 never signed with the new key: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                replica.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let jwks = replica.ok(&["jwks", "--ring", "r"]);
        assert!(jwks.contains(&new) && jwks.contains(&old), "{jwks}");
        let logs = replica.stderr.lock().unwrap().clone();
        assert!(
            logs.contains("pkcs11 KEK: reopened a session and logged in again"),
            "{logs}"
        );
        assert_eq!(
            logs.matches("unsealed kek=").count(),
            1,
            "unsealed once, at start: {logs}"
        );
        drop((replica, other));
    }
);
