//! gRPC over TLS with client certificates, and who the peer is.
//!
//! Signet accepts TLS itself (rustls through tokio-rustls) instead of using
//! tonic's built-in listener, so that the server certificate, key and client
//! CA bundle can be reloaded (SIGHUP) without dropping the service: each
//! handshake uses the configuration current at that moment.
//!
//! A peer's identity is its certificate's URI SAN (e.g. a SPIFFE ID), else
//! its DNS SAN, else its subject CN.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tonic::transport::server::Connected;

/// Who is calling, attached to every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The identity (URI SAN, DNS SAN or CN); `local` for a plaintext
    /// loopback caller of `signet dev`.
    pub identity: String,
    /// The peer's address.
    pub addr: Option<SocketAddr>,
}

/// Why TLS could not be configured.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub(crate) String);

/// The files the TLS configuration is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to (PEM).
    pub client_ca: PathBuf,
}

pub(crate) fn read_certs(
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

impl TlsFiles {
    /// Builds a rustls configuration that requires a client certificate
    /// chaining to `client_ca` and speaks HTTP/2.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let certs = read_certs(&self.cert, "tls cert")?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| TlsError(format!("tls key {}: {e}", self.key.display())))?;
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&self.client_ca, "tls client_ca")? {
            roots.add(ca).map_err(|e| {
                TlsError(format!("tls client_ca {}: {e}", self.client_ca.display()))
            })?;
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| TlsError(format!("tls client_ca {}: {e}", self.client_ca.display())))?;
        let mut config = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| TlsError(format!("tls cert/key {}: {e}", self.cert.display())))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// A TLS acceptor whose configuration can be swapped at run time.
pub struct Acceptor {
    files: TlsFiles,
    config: ArcSwap<ServerConfig>,
}

impl Acceptor {
    /// Loads the configuration from `files`.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = files.server_config()?;
        Ok(Self {
            files,
            config: ArcSwap::from_pointee(config),
        })
    }

    /// Re-reads the files; on any error the current configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = self.files.server_config()?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// Accepts TCP connections on `listener` and completes TLS handshakes
    /// concurrently (10 s each); yields authenticated connections. A failed
    /// handshake (no or untrusted certificate) is reported to `rejected`
    /// and the connection dropped.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
        rejected: impl Fn(Option<SocketAddr>, String) + Send + Sync + 'static,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let rejected = Arc::new(rejected);
        tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
                let (conn_tx, rejected) = (tx.clone(), rejected.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            return rejected(Some(addr), format!("TLS handshake failed: {e}"));
                        }
                        Err(_) => return rejected(Some(addr), "TLS handshake timed out".into()),
                    };
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|c| identity_of(c.as_ref()));
                    let Some(identity) = identity else {
                        return rejected(
                            Some(addr),
                            "client certificate names no identity (no SAN, no CN)".into(),
                        );
                    };
                    let conn = Conn {
                        stream: Stream::Tls(Box::new(stream)),
                        info: PeerInfo {
                            identity,
                            addr: Some(addr),
                        },
                    };
                    let _ = conn_tx.send(Ok(conn)).await;
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// Plaintext connections from loopback (`signet dev` only), all with the
/// identity `local`.
pub fn plaintext_incoming(
    listener: TcpListener,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    let conn = Conn {
                        stream: Stream::Plain(tcp),
                        info: PeerInfo {
                            identity: "local".into(),
                            addr: Some(addr),
                        },
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The identity in a DER certificate: URI SAN, else DNS SAN, else CN.
pub fn identity_of(der: &[u8]) -> Option<String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let sans: Vec<GeneralName<'_>> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let uri = sans.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    });
    let dns = || {
        sans.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
    };
    let cn = || {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
    };
    uri.or_else(dns).or_else(cn).filter(|s| !s.is_empty())
}

enum Stream {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

/// An accepted connection with its peer's identity.
pub struct Conn {
    stream: Stream,
    info: PeerInfo,
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Plain(s) => s.is_write_vectored(),
        }
    }
}
