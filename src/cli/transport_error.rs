//! Connection failures as sentences: what went wrong between this client
//! and the server, and what to change, instead of `transport error` or
//! `Cancelled`.
//!
//! tonic reports a failed TLS handshake as a transport error whose source
//! chain holds the rustls error (inside an `io::Error`, whose own `source`
//! skips it). A refused client certificate is worse: with TLS 1.3 the
//! handshake completes on the client's side, the server's alert arrives
//! with the first request, and hyper reports only "connection closed". So
//! when a request fails that way, [`diagnose`] opens one more connection of
//! its own with the same files, reads the server's alert, and says what it
//! means; and for `http://` it checks whether the port answers in TLS.

use std::{error::Error, sync::Arc, sync::OnceLock, time::Duration};

use rustls::{
    AlertDescription, CertificateError,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long a diagnostic connection may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP/2 connection preface and an empty SETTINGS frame: what a gRPC
/// client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Where this process connected, for [`diagnose`]. A CLI process talks to
/// one server; the first connection's target is the one that matters.
static TARGET: OnceLock<Target> = OnceLock::new();

/// A server address and the TLS files used to reach it.
#[derive(Clone)]
pub struct Target {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub uri: String,
    /// `(SIGNET_TLS_CA, SIGNET_TLS_CERT, SIGNET_TLS_KEY)`: paths and PEM
    /// texts, for `https://`.
    pub tls: Option<TlsFiles>,
}

/// The client's PEM files: `(path, contents)` each.
#[derive(Clone)]
pub struct TlsFiles {
    /// The CA that should have issued the server's certificate.
    pub ca: (String, String),
    /// The client certificate.
    pub cert: (String, String),
    /// Its key. Only used to repeat the handshake; never printed.
    pub key: (String, String),
}

/// Records where this process connects, for [`diagnose`].
pub fn remember(target: Target) {
    let _ = TARGET.set(target);
}

/// A request that failed below gRPC: the connection broke or closed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportFailure(pub String);

/// Every error in `err`'s chain, looking inside `io::Error`s.
fn chain<'a>(err: &'a (dyn Error + 'static)) -> Vec<&'a (dyn Error + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        out.push(e);
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            out.push(inner);
            next = inner.source();
        } else {
            next = e.source();
        }
    }
    out
}

fn rustls_error<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    chain(err)
        .into_iter()
        .find_map(|e| e.downcast_ref::<rustls::Error>())
}

/// Whether `err` is a transport failure (the connection, not the server's
/// answer): worth a [`diagnose`].
pub fn is_transport(err: &(dyn Error + 'static)) -> bool {
    chain(err).into_iter().any(|e| {
        e.is::<hyper::Error>() || e.is::<tonic::transport::Error>() || e.is::<rustls::Error>()
    })
}

/// A sentence for a failure to reach `uri`, if the error itself says
/// enough (a server certificate this client refused, TLS to a plaintext
/// port, a TLS alert already received).
pub fn explain(uri: &str, err: &(dyn Error + 'static)) -> Option<String> {
    let tls = TARGET.get().and_then(|t| t.tls.as_ref());
    let ca = tls.map_or("SIGNET_TLS_CA", |t| t.ca.0.as_str());
    match rustls_error(err)?.clone() {
        rustls::Error::InvalidCertificate(e) => Some(server_cert(uri, ca, &e)),
        rustls::Error::InvalidMessage(_) => Some(format!(
            "{uri} does not answer in TLS: the server listens in plaintext on this port \
             (signet dev does); use --addr http://… for it, or the port of the server's \
             [tls] listener"
        )),
        rustls::Error::AlertReceived(alert) => Some(alert_sentence(alert, tls)),
        other => Some(format!("TLS with {uri} failed: {other}")),
    }
}

fn server_cert(uri: &str, ca: &str, e: &CertificateError) -> String {
    let host = host_port(uri).map_or("", |(h, _)| h).to_owned();
    match e {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "the server's certificate is not trusted: it was not issued by the CA in \
             SIGNET_TLS_CA ({ca}); set SIGNET_TLS_CA to the CA that issued the server's \
             [tls] cert"
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the server's certificate is not valid for {host:?}: use a name in its \
                 subjectAltName in --addr, or reissue it with subjectAltName=DNS:{host}"
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired: renew [tls] cert on the server".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet: check the clocks".to_owned()
        }
        other => {
            let text = format!("{other:?}");
            if text.contains("CaUsedAsEndEntity") {
                "the server presents a CA certificate as its own (CaUsedAsEndEntity): issue \
                 it a leaf certificate (basicConstraints=CA:FALSE, extendedKeyUsage=serverAuth) \
                 from that CA"
                    .to_owned()
            } else if text.contains("UnsupportedCertVersion") {
                "the server's certificate is X.509 v1 (UnsupportedCertVersion): reissue it as \
                 v3 with extensions (see README, \"Certificates with openssl\")"
                    .to_owned()
            } else {
                format!("the server's certificate is refused: {other}")
            }
        }
    }
}

/// What the server's alert says about this client's certificate.
fn alert_sentence(alert: AlertDescription, tls: Option<&TlsFiles>) -> String {
    let cert = tls.map_or("SIGNET_TLS_CERT", |t| t.cert.0.as_str());
    let why = match alert {
        AlertDescription::UnknownCA => "it was not issued by a CA the server trusts; use a \
                                         certificate from the server's [tls] client_ca"
            .into(),
        AlertDescription::CertificateRevoked => {
            "it is revoked (on a CRL in the server's [tls] crls)".into()
        }
        AlertDescription::CertificateExpired => "it has expired or is not valid yet".into(),
        AlertDescription::CertificateRequired => {
            return "the server requires a client certificate: set SIGNET_TLS_CERT and \
                    SIGNET_TLS_KEY"
                .into();
        }
        _ => format!(
            "({alert:?}): a CA certificate used as a client certificate, no usable identity \
             (one URI SAN, or a DNS SAN), two URI SANs, or no clientAuth extended key usage"
        ),
    };
    format!(
        "the server refused the client certificate {cert}: {why}; the server's log says which \
         (\"TLS connection refused\")"
    )
}

fn host_port(uri: &str) -> Option<(&str, u16)> {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

/// For an error that ended a command: when it is a transport failure, a
/// sentence found by probing the server this process connected to.
pub async fn diagnose(err: anyhow::Error) -> anyhow::Error {
    let transport =
        err.downcast_ref::<TransportFailure>().is_some() || err.chain().any(is_transport);
    let Some(target) = TARGET.get() else {
        return err;
    };
    if !transport {
        return err;
    }
    let probed = match &target.tls {
        Some(files) => probe_tls(&target.uri, files).await,
        None => probe_plain(&target.uri).await,
    };
    match probed {
        Some(sentence) => anyhow::anyhow!("{sentence}"),
        None => err,
    }
}

/// Whether an `http://` address answers in TLS: a TLS server replies to an
/// HTTP/2 preface with an alert record (content type 21, version 3.x).
async fn probe_plain(uri: &str) -> Option<String> {
    let (host, port) = host_port(uri)?;
    let reply = tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut s = TcpStream::connect((host, port)).await.ok()?;
        s.write_all(H2_PREFACE).await.ok()?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.ok()?;
        Some(buf)
    })
    .await
    .ok()
    .flatten()?;
    (reply == [21, 3]).then(|| {
        format!(
            "{uri} answers in TLS: use --addr https://{host}:{port} (with SIGNET_TLS_CA, \
             SIGNET_TLS_CERT and SIGNET_TLS_KEY naming PEM files)"
        )
    })
}

/// Repeats the handshake with the same files and reads the server's
/// verdict on the client certificate.
async fn probe_tls(uri: &str, files: &TlsFiles) -> Option<String> {
    let (host, port) = host_port(uri)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(files.ca.1.as_bytes()) {
        roots.add(c.ok()?).ok()?;
    }
    let certs: Vec<_> = CertificateDer::pem_slice_iter(files.cert.1.as_bytes())
        .collect::<Result<_, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(files.key.1.as_bytes()).ok()?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .ok()?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(host.to_owned()).ok()?;
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, async {
        let tcp = TcpStream::connect((host, port)).await?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        tls.write_all(H2_PREFACE).await?;
        tls.flush().await?;
        let mut buf = [0u8; 9];
        tls.read(&mut buf).await
    })
    .await
    .ok()?;
    match outcome {
        Ok(_) => None, // The server answered: the failure lies elsewhere.
        Err(e) => explain(uri, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_an_address() {
        assert_eq!(
            host_port("https://localhost:8443"),
            Some(("localhost", 8443))
        );
        assert_eq!(host_port("http://[::1]:50051/"), Some(("::1", 50051)));
        assert_eq!(host_port("https://no-port"), None);
    }

    #[test]
    fn an_io_error_is_looked_into() {
        let inner = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        let why = explain("https://localhost:1", &io).unwrap();
        assert!(
            why.starts_with("the server's certificate is not trusted"),
            "{why}"
        );
    }

    #[test]
    fn each_refusal_says_what_to_fix() {
        let cases = [
            (
                AlertDescription::UnknownCA,
                "not issued by a CA the server trusts",
            ),
            (AlertDescription::CertificateRevoked, "it is revoked"),
            (AlertDescription::CertificateExpired, "has expired"),
            (AlertDescription::CertificateRequired, "set SIGNET_TLS_CERT"),
            (AlertDescription::BadCertificate, "two URI SANs"),
        ];
        for (alert, says) in cases {
            let why = alert_sentence(alert, None);
            assert!(why.contains(says), "{alert:?}: {why}");
        }
    }
}
