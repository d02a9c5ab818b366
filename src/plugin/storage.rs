//! The mount's storage inside OpenBao's barrier, reached through the
//! broker: a [`KvBackend`], so the key store is [`KvStore`] over it. And
//! the KEK that seals each key, kept in that same storage (seal-wrapped):
//! OpenBao's barrier, and its seal, protect it as they protect every other
//! secret; Signet's own envelope format stays the same as the server's.

use std::sync::Arc;

use async_trait::async_trait;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::pb::pb::{
    StorageDeleteArgs, StorageEntry, StorageGetArgs, StorageListArgs, StoragePutArgs,
    storage_client::StorageClient,
};
use crate::{
    seal::{Kek, KekError, KekProvider, LocalKek},
    store::{KvBackend, KvStore, StoreError},
};

/// OpenBao's `pb.Storage` service as a [`KvBackend`].
#[derive(Clone)]
pub struct BaoStorage {
    client: StorageClient<Channel>,
}

impl BaoStorage {
    /// Storage over a channel to the host's broker service.
    pub fn new(channel: Channel) -> Self {
        Self {
            client: StorageClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        }
    }
}

fn failed(op: &str, key: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("OpenBao storage {op} {key:?}: {why}"))
}

/// The reply's `err` string, if set, as an error.
fn check(op: &str, key: &str, err: String) -> Result<(), StoreError> {
    if err.is_empty() {
        Ok(())
    } else {
        Err(failed(op, key, err))
    }
}

#[async_trait]
impl KvBackend for BaoStorage {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let reply = self
            .client
            .clone()
            .get(StorageGetArgs {
                key: key.to_owned(),
            })
            .await
            .map_err(|s| failed("get", key, s.message()))?
            .into_inner();
        check("get", key, reply.err)?;
        Ok(reply.entry.map(|e| e.value))
    }

    async fn put(&self, key: &str, value: &[u8], seal_wrap: bool) -> Result<(), StoreError> {
        let reply = self
            .client
            .clone()
            .put(StoragePutArgs {
                entry: Some(StorageEntry {
                    key: key.to_owned(),
                    value: value.to_vec(),
                    seal_wrap,
                }),
            })
            .await
            .map_err(|s| failed("put", key, s.message()))?
            .into_inner();
        check("put", key, reply.err)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let reply = self
            .client
            .clone()
            .delete(StorageDeleteArgs {
                key: key.to_owned(),
            })
            .await
            .map_err(|s| failed("delete", key, s.message()))?
            .into_inner();
        check("delete", key, reply.err)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let reply = self
            .client
            .clone()
            .list(StorageListArgs {
                prefix: prefix.to_owned(),
            })
            .await
            .map_err(|s| failed("list", prefix, s.message()))?
            .into_inner();
        if !reply.err.is_empty() {
            return Err(failed("list", prefix, reply.err));
        }
        Ok(reply.keys)
    }
}

/// Where the KEK is kept in the mount's storage.
const KEK_KEY: &str = "kek";

/// The KEK of this mount: 32 random bytes made on first use and stored
/// seal-wrapped in the mount's storage; read back at every open.
pub struct BarrierKek {
    store: Arc<KvStore<BaoStorage>>,
}

impl BarrierKek {
    /// The KEK kept in `store`'s backend.
    pub fn new(store: Arc<KvStore<BaoStorage>>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl KekProvider for BarrierKek {
    fn kind(&self) -> &'static str {
        "openbao"
    }

    fn describe(&self) -> String {
        "openbao (in the mount's storage, seal-wrapped)".to_owned()
    }

    async fn open(&self) -> Result<Arc<dyn Kek>, KekError> {
        use base64::Engine;
        let kv = self.store.backend();
        let unavailable = |e: StoreError| KekError::Unavailable(e.to_string());
        let encoded = match kv.get(KEK_KEY).await.map_err(unavailable)? {
            Some(bytes) => Zeroizing::new(bytes),
            None => {
                let raw = Zeroizing::new(
                    crate::crypto::random_bytes::<32>()
                        .map_err(|_| KekError::Unavailable("no randomness for a KEK".into()))?,
                );
                let encoded =
                    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*raw));
                kv.put(KEK_KEY, encoded.as_bytes(), true)
                    .await
                    .map_err(unavailable)?;
                tracing::info!("made this mount's key-encryption key");
                Zeroizing::new(encoded.as_bytes().to_vec())
            }
        };
        let text = std::str::from_utf8(&encoded)
            .map_err(|_| KekError::Unavailable("the stored KEK is not base64".into()))?;
        Ok(Arc::new(LocalKek::from_base64("kek", text)?))
    }
}
