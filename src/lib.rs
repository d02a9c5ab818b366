//! Signet: a gRPC signing service for JWT infrastructure.
//!
//! Token issuers call `Sign`; verifiers fetch the JWKS; nobody ever receives
//! private key material. Keys live in key rings, each key has a timeline, and
//! its state (pending, published, active, retiring, removed) is derived from
//! that timeline and the current time.
//!
//! # Layout
//!
//! - [`clock`]: injected time, so lifecycle logic is deterministic in tests
//!   (from `signet-verifier`, shared with the verifier).
//! - [`crypto`]: algorithms, private keys ([`crypto::SigningKey`]), JWKs and
//!   thumbprints, strict claims parsing, JWS assembly.
//! - [`keyring`]: rings, timelines, policy, the lock-free key snapshot and
//!   the Sign path ([`keyring::KeyManager`]).
//! - [`store`]: the [`store::KeyStore`] contract and its implementations.
//! - [`rpc`]: the gRPC services; the one place errors become `Status`.
//! - [`http`]: the verifier-facing HTTP surface (JWKS, health).
//! - [`seal`]: KEK providers (file, env, PKCS#11) and the sealed-key format.
//! - [`config`], [`server`], [`hardening`]: running a server.
//! - [`telemetry`]: logs and Prometheus metrics.
//! - [`audit`]: the hash-chained, fail-closed audit log with signed
//!   checkpoints; [`anchor`]: its latest checkpoint kept in the store.
//! - [`authz`]: the access policy: which identity may do what on which ring.
//! - [`tls`]: mTLS acceptor and peer identities.
//! - [`cli`]: the `signet` command: server, client subcommands, benchmark.
//! - [`pb`]: generated protobuf code (from `signet-proto`).
//! - [`plugin`]: `signet plugin`, the OpenBao/Vault secrets plugin.
//! - [`verifier`]: the `signet-verifier` crate, re-exported: a caching JWKS
//!   verifier for resource servers; its [`verifier::verify`] is what the
//!   Verify RPC runs.
//! - [`fault`]: named fault points for the fault-injection tests (a
//!   feature of test builds; nothing without it).

#![forbid(unsafe_code)]

pub mod anchor;
pub mod audit;
pub mod authz;
pub mod cli;
pub use signet_verifier::clock;
pub mod config;
pub mod crypto;
mod error;
pub mod fault;
pub mod hardening;
pub mod http;
pub mod keyring;
pub mod pb;
pub mod plugin;
pub mod rpc;
pub mod seal;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub use signet_verifier as verifier;

pub use error::Error;
