//! Signet's integration tests, in one test binary.
//!
//! One binary rather than one per file: each test binary links the whole
//! dependency graph (aws-lc, sqlx, tonic), so fourteen of them cost minutes of
//! linking and gigabytes of disk for no gain in isolation. Every test here
//! already isolates itself (port 0, a temp dir, a PostgreSQL schema of its
//! own, ring names unique to the test), so they share a process safely.

// clippy.toml's allow-*-in-tests covers `#[test]` functions, not the
// helpers they call; in test support panicking on failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod access;
mod audit;
mod audit_trail;
mod authz_cli;
mod canary;
mod check_config;
mod cli;
mod client_tls;
mod clock_jumps;
mod closed;
mod crash;
mod deploy;
mod diskfull;
mod durable;
// Needs the fault points compiled in: `--features fault-injection`.
#[cfg(feature = "fault-injection")]
mod faults;
mod fuzz_replay;
mod grpc_errors;
mod grpc_sign;
mod http_abuse;
mod issuer_example;
mod lifecycle;
mod lifecycle_props;
mod manifest;
mod oidc;
mod openbao;
mod ops;
mod pem;
mod pkcs11;
mod replicas;
mod staleness;
mod status_page;
mod store_contract;
mod verifier_example;
mod verifier_fetch;
mod verifier_surface;
