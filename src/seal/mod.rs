//! Sealing private keys at rest: envelope encryption under a key-encryption
//! key (KEK) that lives outside the data directory.

mod kek;

pub use kek::{DataKey, Kek, KekError};
