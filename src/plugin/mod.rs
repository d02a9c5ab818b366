//! `signet plugin`: the same binary as an external secrets plugin of
//! OpenBao or Vault (go-plugin protocol 5 with AutoMTLS).
//!
//! - [`handshake`]: the cookie, the handshake line, hclog logs on stderr.
//! - [`tls`]: AutoMTLS, both sides pinned to each other's certificate.
//! - [`broker`]: the host's broker stream; dialing its storage service.
//! - [`backend`]: the `pb.Backend` service and go-plugin's controller.
//! - [`paths`]: the HTTP paths under the mount, over the [`KeyManager`].
//! - [`storage`]: OpenBao's storage as a [`KvBackend`], and the KEK in it.
//!
//! The keys are the [`KeyManager`]'s, with the lifecycle, policy and
//! signing rules of the gRPC server; the store is [`KvStore`] over the
//! mount's storage; access control and the audit trail are OpenBao's.
//!
//! [`KeyManager`]: crate::keyring::KeyManager
//! [`KvBackend`]: crate::store::KvBackend
//! [`KvStore`]: crate::store::KvStore

pub mod backend;
pub mod broker;
pub mod handshake;
pub mod paths;
pub mod storage;
pub mod tls;

use std::{path::PathBuf, sync::Arc};

use tokio_stream::wrappers::ReceiverStream;

/// Generated code of our own plugin protocol files (`proto/goplugin`,
/// `proto/vaultpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// go-plugin's broker and controller.
    pub mod plugin {
        tonic::include_proto!("plugin");
    }
    /// OpenBao's logical backend and storage.
    pub mod pb {
        tonic::include_proto!("pb");
    }
}

/// Runs the plugin until the host stops it. Errors are for stderr: the host
/// shows them in its log when the plugin exits early.
pub async fn run() -> anyhow::Result<()> {
    handshake::check_env().map_err(anyhow::Error::msg)?;
    handshake::init_logging();
    // Keys live in this process: no core dumps, no ptrace; memory locked
    // when the host asks for it (plugin mlock on), else best effort.
    let mlock = env("VAULT_PLUGIN_MLOCK_ENABLED").is_some_and(|v| v == "true");
    crate::hardening::harden_process(!mlock)?;

    let host_cert = env("PLUGIN_CLIENT_CERT").ok_or_else(|| {
        anyhow::anyhow!(
            "PLUGIN_CLIENT_CERT is not set: Signet needs go-plugin's AutoMTLS (OpenBao and \
             Vault 1.12+ turn it on for every external plugin)"
        )
    })?;
    let material = tls::material(&host_cert)?;

    let socket = socket_path()?;
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let _cleanup = RemoveOnDrop(socket.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(material.server.clone());
    let incoming = accept(listener, acceptor);

    let shutdown = Arc::new(tokio::sync::Notify::new());
    let broker = Arc::new(broker::Broker::new(material.client.clone()));
    let plugin = Arc::new(backend::Plugin::new(broker.clone(), shutdown.clone()));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;

    use pb::{
        pb::backend_server::BackendServer,
        plugin::{
            grpc_broker_server::GrpcBrokerServer, grpc_controller_server::GrpcControllerServer,
        },
    };
    let stop = shutdown.clone();
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(
            BackendServer::new(plugin.clone())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(GrpcBrokerServer::new(broker::BrokerService(broker)))
        .add_service(GrpcControllerServer::new(backend::Controller(plugin)))
        .serve_with_incoming_shutdown(incoming, async move { stop.notified().await });
    let server = tokio::spawn(server);

    // The host sends SIGINT to the whole process group on Ctrl-C; it stops
    // plugins itself, through the controller.
    ignore_sigint();
    let address = socket.to_string_lossy().into_owned();
    handshake::announce(&handshake::line("unix", &address, &material.cert))?;
    tracing::info!(socket = address, "plugin serving");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => shutdown.notify_one(),
        _ = shutdown.notified() => shutdown.notify_one(),
        () = host_gone() => {
            tracing::warn!("the host process is gone (OpenBao exited or was killed); stopping");
            shutdown.notify_one();
        }
    }
    // Serving stops once the notification reaches it; in-flight calls end
    // within the host's own kill deadline or not at all.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
    Ok(())
}

/// Completes when this process's parent (the host that started it) is no
/// longer its parent: a host killed with SIGKILL never calls Shutdown, and
/// a plugin left behind would keep its keys in memory with no one to serve.
async fn host_gone() {
    let host = nix::unistd::getppid();
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        if nix::unistd::getppid() != host {
            return;
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A fresh socket path in `PLUGIN_UNIX_SOCKET_DIR` or the temp directory.
fn socket_path() -> anyhow::Result<PathBuf> {
    let dir = env("PLUGIN_UNIX_SOCKET_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let tag = hex::encode(crate::crypto::random_bytes::<8>()?);
    Ok(dir.join(format!("signet-plugin-{}-{tag}.sock", std::process::id())))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn ignore_sigint() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
        Ok(mut s) => {
            tokio::spawn(async move { while s.recv().await.is_some() {} });
        }
        Err(e) => tracing::warn!(error = %e, "cannot ignore SIGINT"),
    }
}

type TlsConn = tokio_rustls::server::TlsStream<tokio::net::UnixStream>;

/// Accepts connections and completes their TLS handshakes, each in its own
/// task so a slow one does not hold up the next.
fn accept(
    listener: tokio::net::UnixListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        match acceptor.accept(stream).await {
                            Ok(tls) => {
                                let _ = tx.send(Ok(tls)).await;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "TLS handshake with the host failed")
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}
