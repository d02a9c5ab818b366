//! Test certificates (rcgen): a CA and leaves it signs.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// A certificate authority: its certificate and what signs with it.
pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A new self-signed CA named `name`.
pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf certificate: (cert PEM, key PEM).
pub fn leaf(ca: &Ca, cn: &str, sans: Vec<SanType>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A leaf certificate with a chosen serial number (for CRLs).
pub fn leaf_serial(ca: &Ca, cn: &str, sans: Vec<SanType>, serial: u64) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A CRL from `ca` revoking `serials`, PEM.
pub fn crl(ca: &Ca, serials: &[u64]) -> String {
    let params = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(2100, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(*s),
                revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params.signed_by(&ca.issuer).unwrap().pem().unwrap()
}

/// Writes a leaf for 127.0.0.1 (an IP SAN: no name resolution) signed by
/// `ca` to `dir/cert.pem` and `dir/key.pem`, as `[http_tls]` names them.
pub fn https_files(ca: &Ca, dir: &std::path::Path) -> signet::http::HttpTlsFiles {
    let (cert, key) = leaf(
        ca,
        "127.0.0.1",
        vec![SanType::IpAddress([127, 0, 0, 1].into())],
    );
    let files = signet::http::HttpTlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    files
}

/// The public HTTP surface of `keys` over HTTPS on a port of its own, under
/// a leaf of `ca` written to `dir`; returns its address.
pub async fn serve_https(
    keys: signet::keyring::KeyManager,
    ca: &Ca,
    dir: &std::path::Path,
) -> std::net::SocketAddr {
    let acceptor = signet::http::HttpsAcceptor::load(https_files(ca, dir)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(signet::http::serve_with(
        listener,
        signet::http::router(keys),
        signet::http::HttpLimits::default(),
        Some(std::sync::Arc::new(acceptor)),
        std::future::pending(),
    ));
    addr
}
