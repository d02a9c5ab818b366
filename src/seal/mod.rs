//! Sealing private keys at rest: envelope encryption under a key-encryption
//! key (KEK) that lives outside the data directory.
//!
//! - [`kek`](Kek): the trait every KEK provider implements.
//! - [`LocalKek`]: `file:PATH` and `env:VAR`, key bytes in wiped memory.
//! - [`Pkcs11Kek`]: an AES-256 key that never leaves an HSM.
//! - `envelope`: the sealed-key format and the KEK check value.
//! - [`KekSpec`]: the provider spec strings of the config and `--kek`.

pub mod envelope;
mod kek;
mod local;
mod pkcs11;
mod spec;

pub use envelope::{KeyContext, SealError};
pub use kek::{DataKey, Kek, KekError};
pub use local::LocalKek;
pub use pkcs11::{Pkcs11Kek, Pkcs11Spec};
pub use spec::{EphemeralKek, KekProvider, KekSpec};
