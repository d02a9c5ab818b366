//! Operator-facing limits and messages: bounded policy durations, Status
//! messages without internal detail, Seal's reason, log lines callers cannot
//! forge, the `unseal` action, `signet rings list`, `signet status`,
//! `env:` KEKs, error chains that say each thing once, and a stop no peer
//! can hold up.

mod access;
mod cli;
mod messages;
mod policy_bounds;
mod seal_and_logs;
mod shutdown;

use std::{path::Path, sync::Arc};

use signet::{
    audit::{AuditConfig, AuditLog, SinkConfig},
    clock::SystemClock,
    crypto::{Algorithm, KeySpec},
    keyring::KeyManager,
    rpc::{AuditParts, guard::Authorizer},
};
use tokio::net::UnixListener;
use tonic::transport::Channel;

/// An in-process server on a Unix socket (the caller is this test's uid,
/// `crate::common::process::my_uid()`) deciding with `authz` and auditing to
/// `dir/audit.log`, with an EdDSA ring `ops`.
pub async fn audited(dir: &Path, authz: Arc<dyn Authorizer>) -> (Channel, KeyManager) {
    let keys = KeyManager::ephemeral(Arc::new(SystemClock)).await.unwrap();
    keys.create_ring("ops", KeySpec::new(Algorithm::EdDsa, 0).unwrap())
        .await
        .unwrap();
    let log = AuditLog::open(AuditConfig::new(vec![SinkConfig::file(
        dir.join("audit.log"),
    )]))
    .await
    .unwrap();
    let socket = dir.join("grpc.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(signet::rpc::serve_with(
        signet::tls::unix_incoming(listener),
        keys.clone(),
        authz,
        Some(AuditParts { log, key: None }),
        std::future::pending(),
    ));
    let channel = signet::cli::connect(&format!("unix:{}", socket.display()))
        .await
        .unwrap();
    (channel, keys)
}

/// The audit records of `dir/audit.log` as JSON.
pub fn audit_records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
