//! The gRPC surface: one file per service, and `status`, the only place
//! errors become `tonic::Status`.

mod convert;
pub mod guard;
pub use convert::{duration as duration_to_proto, policy_from as policy_from_proto};
mod key_admin;
mod operator;
mod signer;
mod status;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::Server;

pub use key_admin::KeyAdminService;
pub use operator::OperatorService;
pub use signer::SignerService;

use crate::{
    keyring::KeyManager,
    pb::{
        self, key_admin_server::KeyAdminServer, operator_server::OperatorServer,
        signer_server::SignerServer,
    },
};

/// Largest request message accepted: the 16 KiB claims cap plus headroom.
/// tonic's default (4 MiB) would let a caller make the server buffer far
/// more than any valid request needs.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The audit log and the key its digests use.
#[derive(Clone)]
pub struct AuditParts {
    /// The log every RPC is recorded in.
    pub log: crate::audit::AuditLog,
    /// The HMAC key for claims and subjects; `None` while it is unknown.
    pub key: Option<std::sync::Arc<crate::audit::AuditKey>>,
}

/// The audit log and its key as the running services share them: the key
/// is dropped at Seal and loaded again at Unseal (with the checkpoint
/// signer derived from it).
#[derive(Clone)]
pub struct AuditSlots {
    /// The log.
    pub log: crate::audit::AuditLog,
    /// The HMAC key, while unsealed.
    pub key: std::sync::Arc<arc_swap::ArcSwapOption<crate::audit::AuditKey>>,
}

impl AuditSlots {
    fn new(parts: AuditParts) -> Self {
        if let Some(key) = &parts.key {
            parts
                .log
                .set_signer(Some(std::sync::Arc::new(key.checkpoint_signer())));
        }
        Self {
            log: parts.log,
            key: std::sync::Arc::new(arc_swap::ArcSwapOption::new(parts.key)),
        }
    }

    /// Loads the store's audit key (after Unseal) and signs with it.
    pub async fn load_key(&self, keys: &KeyManager) -> Result<(), tonic::Status> {
        let key = std::sync::Arc::new(keys.load_audit_key().await?);
        self.log
            .set_signer(Some(std::sync::Arc::new(key.checkpoint_signer())));
        self.key.store(Some(key));
        Ok(())
    }
}

/// Serves the gRPC API on `listener` in plaintext, every caller being the
/// identity `local` with every grant and no audit log: for tests and
/// in-process benchmarks. Servers use [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    keys: KeyManager,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with(
        crate::tls::plaintext_incoming(listener),
        keys,
        std::sync::Arc::new(guard::AllowAll),
        None,
        shutdown,
    )
    .await
}

/// Serves the gRPC API (with health and reflection) on `incoming`
/// connections, every RPC authorized by `authz` and recorded in `audit`
/// before its result leaves, until `shutdown` completes; then finishes
/// in-flight requests and returns.
pub async fn serve_with(
    incoming: impl tokio_stream::Stream<Item = std::io::Result<crate::tls::Conn>> + Send + 'static,
    keys: KeyManager,
    authz: std::sync::Arc<dyn guard::Authorizer>,
    audit: Option<AuditParts>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_configured(incoming, keys, authz, audit, None, shutdown).await
}

/// [`serve_with`], and with `max_connection_age = Some((age, grace))` every
/// connection is closed after `age` (requests in flight get `grace`), so a
/// revoked or expired certificate cannot live on in an old HTTP/2
/// connection: the client reconnects under the certificates, CRLs and rules
/// current then.
pub async fn serve_configured(
    incoming: impl tokio_stream::Stream<Item = std::io::Result<crate::tls::Conn>> + Send + 'static,
    keys: KeyManager,
    authz: std::sync::Arc<dyn guard::Authorizer>,
    audit: Option<AuditParts>,
    max_connection_age: Option<(std::time::Duration, std::time::Duration)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let audit = audit.map(AuditSlots::new);
    let guard = guard::Guard::new(
        authz,
        audit.as_ref().map(|a| a.log.clone()),
        audit.as_ref().map(|a| a.key.clone()),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SignerServer<SignerService>>().await;
    health
        .set_serving::<KeyAdminServer<KeyAdminService>>()
        .await;
    health
        .set_serving::<OperatorServer<OperatorService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let reflection = match reflection {
        Ok(r) => Some(r),
        Err(e) => {
            // The descriptor set is built from our own .proto at compile time;
            // failing here is a build defect, not worth refusing to serve over.
            tracing::error!(error = %e, "gRPC reflection unavailable");
            None
        }
    };
    let mut server = Server::builder();
    if let Some((age, grace)) = max_connection_age {
        server = server
            .max_connection_age(age)
            .max_connection_age_grace(grace);
    }
    server
        .layer(guard)
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_service(
            SignerServer::new(SignerService::new(keys.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            KeyAdminServer::new(KeyAdminService::new(keys.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            OperatorServer::new(OperatorService::new(keys, audit))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
