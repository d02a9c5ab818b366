//! gRPC over TLS with client certificates, and who the peer is.
//!
//! Signet accepts TLS itself (rustls through tokio-rustls) instead of using
//! tonic's built-in listener, so that the server certificate, key and client
//! CA bundle can be reloaded (SIGHUP) without dropping the service: each
//! handshake uses the configuration current at that moment.
//!
//! A peer's identities are typed (see [`crate::authz::identity`]): its
//! certificate's URI SAN (`uri:`, at most one: a certificate with two is
//! refused at the handshake, the SPIFFE rule), each DNS SAN (`dns:`), and its
//! subject CN (`cn:`) only where `[tls] allow_cn_identity` is set. A
//! certificate that yields no identity is refused at the handshake, and so
//! is one on a loaded CRL. Over the Unix socket the kernel says who the peer
//! is (`SO_PEERCRED`): `unix:uid:N` and, when the uid has a name,
//! `unix:user:NAME`.

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
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{
        CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime, pem::PemObject,
    },
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
};
use tonic::transport::server::Connected;

use crate::authz::{Identity, IdentityKind};

/// Who is calling, attached to every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The identity audit records carry: the first of `names`; `local` for
    /// a plaintext loopback caller of `signet dev`.
    pub identity: String,
    /// Every typed name the transport established, `identity` first; a
    /// policy rule applies when its pattern matches any of them.
    pub names: Vec<String>,
    /// The peer's address (none over a Unix socket).
    pub addr: Option<SocketAddr>,
}

impl PeerInfo {
    /// A peer known by `names` (the first is its audit identity).
    pub fn new(names: Vec<Identity>, addr: Option<SocketAddr>) -> Self {
        let names: Vec<String> = names.into_iter().map(|n| n.as_str().to_owned()).collect();
        Self {
            identity: names.first().cloned().unwrap_or_default(),
            names,
            addr,
        }
    }

    /// The plaintext loopback caller of `signet dev`.
    pub fn local(addr: Option<SocketAddr>) -> Self {
        Self {
            identity: "local".into(),
            names: vec!["local".into()],
            addr,
        }
    }
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
    /// Certificate revocation lists (PEM or DER); a client certificate on
    /// one is refused at the handshake.
    pub crls: Vec<PathBuf>,
    /// Whether a certificate's subject CN counts as an identity (`cn:`).
    pub allow_cn_identity: bool,
}

impl TlsFiles {
    /// The three PEM files, no CRL, CN identities off.
    pub fn new(cert: PathBuf, key: PathBuf, client_ca: PathBuf) -> Self {
        Self {
            cert,
            key,
            client_ca,
            crls: Vec::new(),
            allow_cn_identity: false,
        }
    }
}

/// Reads one CRL file, PEM (any number of CRLs) or DER (one).
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let shown = || format!("tls crls {}", path.display());
    let bytes = std::fs::read(path).map_err(|e| TlsError(format!("{}: {e}", shown())))?;
    if bytes.starts_with(b"-----") || bytes.iter().take(64).all(u8::is_ascii) {
        let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError(format!("{}: {e}", shown())))?;
        if crls.is_empty() {
            return Err(TlsError(format!("{}: no PEM X509 CRL in it", shown())));
        }
        Ok(crls)
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
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
        let mut crls = Vec::new();
        for path in &self.crls {
            crls.extend(read_crls(path)?);
        }
        let webpki = WebPkiClientVerifier::builder(Arc::new(roots))
            .with_crls(crls)
            .build()
            .map_err(|e| {
                TlsError(format!(
                    "tls client_ca/crls {}: {e}",
                    self.client_ca.display()
                ))
            })?;
        let verifier = Arc::new(IdentityVerifier {
            inner: webpki,
            allow_cn: self.allow_cn_identity,
        });
        let mut config = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| TlsError(format!("tls cert/key {}: {e}", self.cert.display())))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// Files a rustls server configuration is built from (the gRPC listener's
/// [`TlsFiles`], the HTTP listener's `HttpTlsFiles`).
pub trait ConfigFiles {
    /// Reads the files and builds the configuration.
    fn server_config(&self) -> Result<ServerConfig, TlsError>;
}

impl ConfigFiles for TlsFiles {
    fn server_config(&self) -> Result<ServerConfig, TlsError> {
        TlsFiles::server_config(self)
    }
}

/// A rustls configuration built from files and swapped whole on reload
/// (SIGHUP): each handshake takes the configuration current at that moment,
/// and files that do not load leave the current one in use.
pub struct Reloadable<F> {
    files: F,
    config: ArcSwap<ServerConfig>,
}

impl<F: ConfigFiles> Reloadable<F> {
    /// Loads the configuration from `files`.
    pub fn load(files: F) -> Result<Self, TlsError> {
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

    /// An acceptor with the configuration current now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }
}

/// The gRPC listener's TLS acceptor (client certificates required).
pub type Acceptor = Reloadable<TlsFiles>;

impl Reloadable<TlsFiles> {
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
                let acceptor = self.acceptor();
                let allow_cn = self.files.allow_cn_identity;
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
                    // The verifier refused certificates without an identity;
                    // this only reads the names again.
                    let names = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .map(|c| identities_of(c.as_ref(), allow_cn))
                        .unwrap_or_else(|| Err("no client certificate".into()));
                    let names = match names {
                        Ok(names) => names,
                        Err(why) => return rejected(Some(addr), why),
                    };
                    let conn = Conn {
                        stream: Stream::Tls(Box::new(stream)),
                        info: PeerInfo::new(names, Some(addr)),
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
    let listener = Arc::new(listener);
    accept_loop(move || {
        let listener = listener.clone();
        async move {
            let (tcp, addr) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            Ok(Some(Conn {
                stream: Stream::Plain(tcp),
                info: PeerInfo::local(Some(addr)),
            }))
        }
    })
}

/// Runs `accept` in a task until the receiving end is dropped, passing on
/// each connection it yields. `Ok(None)` is a connection it dropped itself;
/// an error is logged and retried after a short pause (e.g. out of file
/// descriptors).
fn accept_loop<F, Fut>(mut accept: F) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = io::Result<Option<Conn>>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match accept().await {
                Ok(Some(conn)) => {
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The typed identities in a DER certificate: its URI SAN, each DNS SAN,
/// and (with `allow_cn`) its subject CN, in that order. Refused: more than
/// one URI SAN (a SPIFFE certificate has exactly one), or no identity at all.
pub fn identities_of(der: &[u8], allow_cn: bool) -> Result<Vec<Identity>, String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| "client certificate does not parse".to_owned())?;
    let sans: Vec<GeneralName<'_>> = cert
        .subject_alternative_name()
        .map_err(|_| "client certificate has a malformed SAN extension".to_owned())?
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let uris: Vec<&str> = sans
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    if uris.len() > 1 {
        return Err(format!(
            "client certificate has {} URI SANs; a SPIFFE certificate has exactly one",
            uris.len()
        ));
    }
    let mut names: Vec<Identity> = uris
        .iter()
        .filter(|u| !u.is_empty())
        .map(|u| Identity::new(IdentityKind::Uri, u))
        .collect();
    names.extend(sans.iter().filter_map(|n| match n {
        GeneralName::DNSName(d) if !d.is_empty() => Some(Identity::new(IdentityKind::Dns, d)),
        _ => None,
    }));
    if allow_cn
        && let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|cn| !cn.is_empty())
    {
        names.push(Identity::new(IdentityKind::Cn, cn));
    }
    if names.is_empty() {
        return Err(if allow_cn {
            "client certificate names no identity (no URI or DNS SAN, no CN)".into()
        } else {
            "client certificate names no identity (no URI or DNS SAN; CN identities are off: \
             [tls] allow_cn_identity)"
                .into()
        });
    }
    Ok(names)
}

/// WebPKI client verification, then Signet's identity rules, so that a
/// certificate Signet would refuse anyway fails the handshake itself.
#[derive(Debug)]
struct IdentityVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow_cn: bool,
}

impl ClientCertVerifier for IdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        identities_of(end_entity.as_ref(), self.allow_cn).map_err(rustls::Error::General)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Who is on the other end of a Unix socket, from the kernel: `unix:uid:N`,
/// then `unix:user:NAME` when the uid has a name.
fn unix_peer(stream: &UnixStream) -> io::Result<PeerInfo> {
    let cred = stream.peer_cred()?;
    let uid = cred.uid();
    let mut names = vec![Identity::new(IdentityKind::UnixUid, &uid.to_string())];
    if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        names.push(Identity::new(IdentityKind::UnixUser, &user.name));
    }
    Ok(PeerInfo::new(names, None))
}

/// Connections on a Unix domain socket, each with the kernel's word for
/// who the peer is. A connection whose credentials cannot be read is
/// dropped.
pub fn unix_incoming(
    listener: UnixListener,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let listener = Arc::new(listener);
    accept_loop(move || {
        let listener = listener.clone();
        async move {
            let (stream, _) = listener.accept().await?;
            match unix_peer(&stream) {
                Ok(info) => Ok(Some(Conn {
                    stream: Stream::Unix(stream),
                    info,
                })),
                Err(e) => {
                    tracing::warn!(error = %e, "Unix socket peer credentials unreadable; connection dropped");
                    Ok(None)
                }
            }
        }
    })
}

enum Stream {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Plain(TcpStream),
    Unix(UnixStream),
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
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
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
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
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
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }
}
