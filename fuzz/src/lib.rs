//! The fuzz targets: one function per parser that takes outside input, each
//! taking arbitrary bytes and returning normally for every input (an error
//! is a fine answer; a panic, a hang or a crash is a bug).
//!
//! The binaries in `fuzz_targets/` hand these to libFuzzer
//! (`scripts/fuzz`); the normal test build includes this file as a module
//! (tests/integration/fuzz_replay.rs) and replays the committed corpora
//! through the same functions, so no nightly toolchain is needed in CI.

use std::sync::OnceLock;

use signet::{
    clock::SystemClock,
    crypto::{Algorithm, KeySpec, claims, jws},
    keyring::KeyManager,
    pb,
};

/// A fuzz target: any bytes in, a normal return out.
pub type Target = fn(&[u8]);

/// Every target, by name (the corpus directory `fuzz/corpus/NAME`).
pub const TARGETS: &[(&str, Target)] = &[
    ("claims", claims),
    ("header", header),
    ("verify", verify),
    ("policy", policy),
    ("grants", grants),
    ("config", config),
    ("kek_spec", kek_spec),
    ("audit_line", audit_line),
    ("grpc", grpc),
];

/// Sign's `claims_json`: strict JSON object parsing under the size and
/// depth caps, then the registered claims' types.
pub fn claims(data: &[u8]) {
    if let Ok(map) = claims::parse_object(data, claims::Limits::CLAIMS, "claims_json") {
        let _ = claims::check_registered(&map);
        let _ = claims::not_before(&map);
    }
}

/// Sign's `header_json` (the members a caller may set).
pub fn header(data: &[u8]) {
    if let Ok(extra) = jws::ExtraHeader::parse(data) {
        let _ = jws::encode_header(Algorithm::EdDsa, "kid", &extra);
    }
}

/// A running manager with one ring of each algorithm, for the targets that
/// go through the service, and the runtime it lives on.
fn service() -> &'static (tokio::runtime::Runtime, KeyManager) {
    static SERVICE: OnceLock<(tokio::runtime::Runtime, KeyManager)> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let keys = rt.block_on(async {
            let keys = KeyManager::ephemeral(std::sync::Arc::new(SystemClock))
                .await
                .expect("an ephemeral manager");
            for (name, alg) in [
                ("ed", Algorithm::EdDsa),
                ("es", Algorithm::Es256),
                ("rs", Algorithm::Rs256),
            ] {
                keys.create_ring(name, KeySpec::new(alg, 0).expect("a key spec"))
                    .await
                    .expect("a ring");
            }
            keys
        });
        (rt, keys)
    })
}

/// Verify's token input: `RING.TOKEN` with the ring named by the first
/// byte, so tokens reach the EdDSA, ECDSA and RSA paths.
pub fn verify(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let ring = ["ed", "es", "rs"][usize::from(first) % 3];
    let token = String::from_utf8_lossy(rest);
    let (_, keys) = service();
    let _ = keys.verify(ring, &token);
}

/// The access policy file (rules, identity and ring patterns, sign
/// grants), and a decision on it.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(authz) = signet::authz::Authz::from_toml(text) {
        for action in [
            signet::authz::Action::Sign,
            signet::authz::Action::Seal,
            signet::authz::Action::Admin,
        ] {
            let _ = authz.check("uri:spiffe://example.org/ns/a/sa/b", action, "payments-eu");
            let _ = authz.check("unix:uid:0", action, "*");
        }
    }
}

/// A policy's `[rule.sign]` grants applied to a Sign request: the input is
/// the grant's TOML, then a NUL byte, then the claims JSON.
pub fn grants(data: &[u8]) {
    let (grant, claims_json) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    let Ok(grant) = std::str::from_utf8(grant) else {
        return;
    };
    let text = format!(
        "[[rule]]\nidentity = \"uri:x\"\nactions = [\"sign\"]\nrings = [\"r\"]\n[rule.sign]\n{grant}\n"
    );
    let Ok(authz) = signet::authz::Authz::from_toml(&text) else {
        return;
    };
    let Some(grant) = authz.sign_grant("uri:x", "r") else {
        return;
    };
    if let Ok(map) = claims::parse_object(claims_json, claims::Limits::CLAIMS, "claims_json") {
        let hour = std::time::Duration::from_secs(3600);
        let _ = grant.check(&map, None, hour, "JWT");
        let _ = grant.check(&map, Some(hour * 2), hour, "at+jwt");
    }
}

/// The server's configuration file, parsed and checked as
/// `signet server --check-config` does.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<signet::config::Config>(text) {
        let _ = config.check();
    }
}

/// A KEK spec (`file:PATH`, `env:VAR`, `pkcs11:...`).
pub fn kek_spec(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(spec) = text.parse::<signet::seal::KekSpec>()
    {
        let _ = spec.to_string();
    }
}

/// An audit log file as `signet audit verify` reads it.
pub fn audit_line(data: &[u8]) {
    let mut v = signet::audit::Verifier::new(None);
    if v.feed("fuzz", data).is_ok() {
        let _ = v.finish(None);
    }
}

/// A gRPC request: the first byte picks the RPC, the rest is its message,
/// decoded as tonic would and handed to the service.
pub fn grpc(data: &[u8]) {
    use pb::{key_admin_server::KeyAdmin, operator_server::Operator, signer_server::Signer};
    use prost::Message;
    use tonic::Request;

    let Some((&which, msg)) = data.split_first() else {
        return;
    };
    let (rt, keys) = service();
    let signer = signet::rpc::SignerService::new(keys.clone());
    let admin = signet::rpc::KeyAdminService::new(keys.clone());
    let operator = signet::rpc::OperatorService::new(keys.clone(), None);
    macro_rules! call {
        ($svc:expr, $method:ident, $ty:ty) => {{
            if let Ok(m) = <$ty>::decode(msg) {
                let _ = rt.block_on($svc.$method(Request::new(m)));
            }
        }};
    }
    match which % 16 {
        0 => call!(signer, sign, pb::SignRequest),
        1 => call!(signer, get_jwks, pb::GetJwksRequest),
        2 => call!(signer, verify, pb::VerifyRequest),
        3 => call!(signer, watch_jwks, pb::WatchJwksRequest),
        4 => call!(
            signer,
            report_verification_failures,
            pb::ReportVerificationFailuresRequest
        ),
        5 => call!(admin, create_key_ring, pb::CreateKeyRingRequest),
        6 => call!(admin, rotate, pb::RotateRequest),
        7 => call!(admin, revoke_key, pb::RevokeKeyRequest),
        8 => call!(admin, get_key_ring, pb::GetKeyRingRequest),
        9 => call!(admin, update_policy, pb::UpdatePolicyRequest),
        10 => call!(admin, list_key_rings, pb::ListKeyRingsRequest),
        11 => call!(admin, list_keys, pb::ListKeysRequest),
        12 => call!(operator, status, pb::StatusRequest),
        13 => {
            // Seal, then open again: later inputs find the service up.
            call!(operator, seal, pb::SealRequest);
            let _ = rt.block_on(keys.unseal());
        }
        14 => call!(operator, unseal, pb::UnsealRequest),
        _ => call!(operator, audit_hash, pb::AuditHashRequest),
    }
}
