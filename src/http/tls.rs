//! HTTPS on the HTTP (JWKS, health) listener, `[http_tls]`.
//!
//! The same scheme as the gRPC acceptor in [`crate::tls`]: the rustls
//! configuration sits behind an `ArcSwap`, each handshake takes the one
//! current at that moment, and SIGHUP re-reads the files; a file that does
//! not load leaves the old certificate in use. No client certificates:
//! verifiers fetch public keys anonymously.

use std::path::PathBuf;

use rustls::{
    ServerConfig,
    pki_types::{PrivateKeyDer, pem::PemObject},
};

use crate::tls::{TlsError, read_certs};

/// The PEM files the HTTPS certificate is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTlsFiles {
    /// Server certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl HttpTlsFiles {
    /// Builds a rustls configuration for HTTP/1.1 without client
    /// certificates. Errors name the field (`http_tls.cert`,
    /// `http_tls.key`) and the file.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let certs = read_certs(&self.cert, "http_tls.cert")?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| TlsError(format!("http_tls.key {}: {e}", self.key.display())))?;
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                TlsError(format!(
                    "http_tls.cert/key {} and {}: {e}",
                    self.cert.display(),
                    self.key.display()
                ))
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl crate::tls::ConfigFiles for HttpTlsFiles {
    fn server_config(&self) -> Result<ServerConfig, TlsError> {
        HttpTlsFiles::server_config(self)
    }
}

/// A TLS acceptor for the HTTP listener whose certificate can be swapped
/// at run time.
pub type HttpsAcceptor = crate::tls::Reloadable<HttpTlsFiles>;
