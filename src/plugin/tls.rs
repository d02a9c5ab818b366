//! go-plugin's AutoMTLS: the host passes its certificate in
//! `PLUGIN_CLIENT_CERT`; the plugin makes its own key and self-signed
//! certificate, sends it in the handshake line, and both sides trust exactly
//! the other's certificate, in both directions (the plugin serves the
//! backend, and dials the host's broker services).
//!
//! The host's certificate is a self-signed ECDSA P-521 CA certificate used
//! as a leaf: rustls's stock verifiers refuse it (a CA as end entity) and
//! the `ring` provider cannot check P-521. So both verifiers here accept
//! exactly the pinned DER and leave the handshake signatures to rustls's
//! own checks on the aws-lc-rs provider, which offers
//! `ecdsa_secp521r1_sha512` in its CertificateRequest (without it Go sends
//! no client certificate).

use std::sync::Arc;

use rustls::{
    DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

/// The plugin's TLS material for both roles.
pub struct Material {
    /// This plugin's certificate (DER), sent in the handshake line.
    pub cert: CertificateDer<'static>,
    /// Accepting the host as a client (the backend service).
    pub server: Arc<rustls::ServerConfig>,
    /// Dialing the host's broker services.
    pub client: Arc<rustls::ClientConfig>,
}

/// Why the TLS material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// `PLUGIN_CLIENT_CERT` did not hold one PEM certificate.
    #[error("PLUGIN_CLIENT_CERT does not hold a PEM certificate: {0}")]
    BadHostCert(String),
    /// Key or certificate generation, or the rustls configuration, failed.
    #[error("cannot set up the plugin's TLS: {0}")]
    Setup(String),
}

/// Makes the plugin's key and certificate and the configurations that pin
/// `host_pem` (the content of `PLUGIN_CLIENT_CERT`).
pub fn material(host_pem: &str) -> Result<Material, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    let host = CertificateDer::from_pem_slice(host_pem.as_bytes())
        .map_err(|e| TlsSetupError::BadHostCert(e.to_string()))?;
    let setup = |e: &dyn std::fmt::Display| TlsSetupError::Setup(e.to_string());

    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| setup(&e))?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).map_err(|e| setup(&e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(60)).into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
    let cert = params
        .self_signed(&key)
        .map_err(|e| setup(&e))?
        .der()
        .clone();
    let key_der = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let pinned = Arc::new(Pinned {
        cert: host,
        algs: provider.signature_verification_algorithms,
    });
    let versions = &[&rustls::version::TLS13, &rustls::version::TLS12];

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| setup(&e))?
        .with_client_cert_verifier(pinned.clone())
        .with_single_cert(vec![cert.clone()], key_der())
        .map_err(|e| setup(&e))?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| setup(&e))?
        .dangerous()
        .with_custom_certificate_verifier(pinned)
        .with_client_auth_cert(vec![cert.clone()], key_der())
        .map_err(|e| setup(&e))?;
    client.alpn_protocols = vec![b"h2".to_vec()];

    Ok(Material {
        cert,
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// Trusts exactly one certificate, as server or as client.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algs: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn check(&self, presented: &CertificateDer<'_>) -> Result<(), TlsError> {
        if presented.as_ref() == self.cert.as_ref() {
            Ok(())
        } else {
            Err(TlsError::General(
                "the peer's certificate is not the one pinned by PLUGIN_CLIENT_CERT".into(),
            ))
        }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
