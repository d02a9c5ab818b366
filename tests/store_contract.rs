//! The KeyStore contract suite, run against every store implementation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failure should panic

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    let store = signet::store::MemoryStore::new();
    signet::store::contract::run_all(&store).await;
}
