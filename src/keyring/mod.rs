//! Key rings: named, versioned sets of keys with one algorithm, a policy and
//! a timeline per key.
//!
//! [`KeyManager`] is the handle the RPC layer talks to. It keeps an
//! immutable [`KeySet`] snapshot that the signing path reads without a lock,
//! and writes every change through the [`KeyStore`](crate::store::KeyStore)
//! before swapping in a new snapshot.

mod admin;
mod issuer;
mod keyset;
mod lifecycle;
mod manager;
pub(crate) mod manifest;
mod name;
mod policy;
pub mod scheduler;
mod sign;
#[cfg(test)]
mod tests;
mod unseal;
mod vet;

pub use admin::TickReport;
pub use issuer::Issuer;
pub use keyset::{JwkSet, KeyInfo, KeySet, Ring};
pub use lifecycle::{KeyState, Timeline, project};
pub use manager::{KeyManager, RingInfo};
pub use manifest::{Generations, Refusal};
pub use name::{RequestId, RingName};
pub use policy::{MAX_DURATION, Policy, PolicyError, Short, Warning, ttl_rule_of_thumb};
pub use sign::{SignParams, Signed};
pub use unseal::{Status, adopt_legacy_audit_key, rekey};
