//! What `signet server --check-config` checks, and what `signet server`
//! checks before it touches the disk: every file, key and service the
//! server will use, each reported on one line.
//!
//! Nothing here creates or writes anything: the SQLite store is opened
//! read-only (and only when it exists), PostgreSQL is only read, the audit
//! sinks are only tested for a writable directory. So a configuration that
//! fails leaves no data directory, store or log behind.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sqlx::Connection;

use crate::{
    audit::SinkSpec,
    config::{Checked, GrpcListen},
    seal::KekSpec,
};

/// How long a check waits for PostgreSQL.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// The outcome of every check: `ok` lines, and the failures in the order
/// they were found.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per check: `ok  WHAT: DETAIL`, `FAIL FIELD ...: WHY; FIX`,
    /// or (at startup) `wait store.url: WHY` for a database the server
    /// waits for.
    pub lines: Vec<String>,
    /// The failures' messages (each names the field and the fix).
    pub failures: Vec<String>,
}

impl Report {
    fn ok(&mut self, line: String) {
        self.lines.push(format!("ok  {line}"));
    }

    fn fail(&mut self, message: String) {
        self.lines.push(format!("FAIL {message}"));
        self.failures.push(message);
    }

    fn record(&mut self, result: Result<String, String>) {
        match result {
            Ok(line) => self.ok(line),
            Err(message) => self.fail(message),
        }
    }

    /// `Err` with the first failure's message, if any check failed.
    pub fn result(&self) -> anyhow::Result<()> {
        match self.failures.first() {
            Some(first) => Err(anyhow::anyhow!("{first}")),
            None => Ok(()),
        }
    }
}

/// When the checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// `--check-config`: everything must be usable now.
    CheckConfig,
    /// `signet server`, before it creates anything. A server started sealed
    /// opens its KEK only at Unseal; a PostgreSQL store that does not answer
    /// yet is waited for (the replica starts when the database does).
    Startup {
        /// `--start-sealed`.
        start_sealed: bool,
    },
}

/// Checks everything the server will use.
pub async fn check_all(checked: &Checked, kek: &KekSpec, when: When) -> Report {
    let c = &checked.config;
    let mut report = Report::default();
    let wait_for_store = when != When::CheckConfig;
    if when == (When::Startup { start_sealed: true }) {
        report.ok(format!(
            "seal.kek {kek}: not opened (--start-sealed; it is opened at Unseal)"
        ));
        let _ = store_check_value(&mut report, checked, wait_for_store).await;
    } else {
        check_kek(&mut report, checked, kek, wait_for_store).await;
    }
    if let Some(tls) = &c.tls {
        let before = report.failures.len();
        report.record(check_cert_key("tls", &tls.cert, &tls.key));
        report.record(check_client_ca(&tls.client_ca));
        for (i, crl) in tls.crls.iter().enumerate() {
            report.record(check_crl(i, crl));
        }
        // Everything together, as the listener will build it.
        let files = crate::tls::TlsFiles {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            client_ca: tls.client_ca.clone(),
            crls: tls.crls.clone(),
            allow_cn_identity: tls.allow_cn_identity,
        };
        if report.failures.len() == before
            && let Err(e) = files.server_config()
        {
            report.fail(format!("[tls]: {e}"));
        }
    }
    if let Some(t) = &c.http_tls {
        report.record(check_cert_key("http_tls", &t.cert, &t.key));
    }
    if let Some(authz) = &c.authz {
        report.record(check_policy(&authz.policy));
    }
    match c.audit.audit_config(&c.store.data_dir) {
        Ok(audit) => {
            for (i, sink) in audit.sinks.iter().enumerate() {
                report.record(check_sink(i, &sink.spec, &c.store.data_dir));
            }
        }
        Err(e) => report.fail(e),
    }
    if let GrpcListen::Unix(path) = &c.listen.grpc {
        report.record(check_socket_dir(path));
    }
    report
}

/// The KEK opens; the store is reachable; its check value (if it has one)
/// opens under the KEK.
async fn check_kek(report: &mut Report, checked: &Checked, spec: &KekSpec, wait_for_store: bool) {
    let kek = match spec.open().await {
        Ok(kek) => kek,
        Err(e) => {
            let fix = match spec {
                KekSpec::File(path) => format!(
                    "; create one with `(umask 077; head -c 32 /dev/urandom > {})` or point \
                     seal.kek at the existing KEK",
                    path.display()
                ),
                KekSpec::Env(var) => {
                    format!("; export {var}=$(head -c 32 /dev/urandom | base64)")
                }
                KekSpec::Pkcs11(_) => "; see README, \"A KEK in an HSM (PKCS#11)\"".to_owned(),
            };
            report.fail(format!("seal.kek {spec}: {e}{fix}"));
            // The store is still worth checking: reachable or not.
            let _ = store_check_value(report, checked, wait_for_store).await;
            return;
        }
    };
    let Some(found) = store_check_value(report, checked, wait_for_store).await else {
        report.ok(format!(
            "seal.kek {spec}: opens (the store's check value is not read: see the store)"
        ));
        return;
    };
    match found {
        None => report.ok(format!(
            "seal.kek {spec}: opens (the store has no check value yet: it is set at first start)"
        )),
        Some(check) => match crate::seal::envelope::verify_check(kek.as_ref(), &check).await {
            Ok(true) => report.ok(format!("seal.kek {spec}: opens the store's check value")),
            Ok(false) => report.fail(format!(
                "seal.kek {spec}: is not the key-encryption key of this store (its check value \
                 does not open); point seal.kek at the KEK this store was created with"
            )),
            Err(e) => report.fail(format!("seal.kek {spec}: {e}")),
        },
    }
}

/// Reports the store and returns its KEK check value: `None` when the
/// store could not be read (reported), `Some(None)` when it has none yet.
/// With `wait_for_store`, a PostgreSQL store that does not answer is no
/// failure: the server waits for it, and checks the KEK once it answers.
async fn store_check_value(
    report: &mut Report,
    checked: &Checked,
    wait_for_store: bool,
) -> Option<Option<Vec<u8>>> {
    let store = &checked.config.store;
    match &store.url {
        Some(url) => match postgres_check_value(url, store.schema.as_deref()).await {
            Ok((target, value)) => {
                report.ok(format!(
                    "store.url {target}: reachable{}",
                    if value.is_some() {
                        ""
                    } else {
                        " (no Signet store in it yet: created at first start)"
                    }
                ));
                Some(value)
            }
            Err(e) if wait_for_store => {
                report.lines.push(format!(
                    "wait store.url: {e}; the server waits for it (and checks the KEK then)"
                ));
                None
            }
            Err(e) => {
                report.fail(format!("store.url: {e}"));
                None
            }
        },
        None => {
            let path = crate::server::store_path(&store.data_dir);
            if !path.exists() {
                match writable_ancestor(&store.data_dir) {
                    Ok(()) => report.ok(format!(
                        "store.data_dir {}: no store yet ({} is created at first start)",
                        store.data_dir.display(),
                        path.display()
                    )),
                    Err(e) => {
                        report.fail(format!("store.data_dir {}: {e}", store.data_dir.display()));
                        return None;
                    }
                }
                return Some(None);
            }
            match sqlite_check_value(&path).await {
                Ok(value) => {
                    report.ok(format!("store {}: opens (read-only)", path.display()));
                    Some(value)
                }
                Err(e) => {
                    report.fail(format!(
                        "store.data_dir {}: cannot read the store {}: {e}",
                        store.data_dir.display(),
                        path.display()
                    ));
                    None
                }
            }
        }
    }
}

/// Reads the KEK check value of an existing SQLite store without writing.
///
/// A read-only connection to a WAL database still creates its `-wal` and
/// `-shm` files. When there is no `-wal` file (no server has the store
/// open, and the last one checkpointed it), every committed row is in the
/// database file, so it is opened `immutable`, which creates nothing. When
/// there is one, a server may be writing: read through the WAL, whose files
/// exist already.
async fn sqlite_check_value(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .immutable(!Path::new(&wal).exists())
        .create_if_missing(false);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| e.to_string())?;
    let value = sqlx::query_scalar::<_, Vec<u8>>("SELECT value FROM meta WHERE name = ?")
        .bind("kek_check")
        .fetch_optional(&mut conn)
        .await
        .map_err(|e| e.to_string());
    let _ = conn.close().await;
    value
}

/// Connects to PostgreSQL (as the server would: the URL's TLS settings) and
/// reads the KEK check value, if Signet's tables exist there.
async fn postgres_check_value(
    url: &str,
    schema: Option<&str>,
) -> Result<(String, Option<Vec<u8>>), String> {
    use sqlx::Row;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|_| "not a valid postgres:// URL".to_owned())?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    );
    let table = match schema {
        Some(s) => {
            if s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(format!("store.schema {s:?}: use a-z, 0-9 and '_' only"));
            }
            format!("{s}.meta")
        }
        None => "meta".to_owned(),
    };
    let mut conn = tokio::time::timeout(STORE_TIMEOUT, sqlx::PgConnection::connect_with(&options))
        .await
        .map_err(|_| {
            format!(
                "{target}: no answer within {}s; is PostgreSQL running and reachable from here?",
                STORE_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("{target}: cannot connect: {e}"))?;
    let exists: Option<String> = sqlx::query("SELECT to_regclass($1)::text")
        .bind(&table)
        .fetch_one(&mut conn)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| format!("{target}: {e}"))?;
    let value = match exists {
        None => None,
        // The table name was checked above to be a plain identifier.
        Some(_) => sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT value FROM {table} WHERE name = $1"
        )))
        .bind("kek_check")
        .fetch_optional(&mut conn)
        .await
        .map_err(|e| format!("{target}: {e}"))?
        .map(|row| row.try_get::<Vec<u8>, _>(0))
        .transpose()
        .map_err(|e| format!("{target}: {e}"))?,
    };
    let _ = conn.close().await;
    Ok((target, value))
}

/// A certificate chain and its key: both parse, the leaf is an X.509 v3
/// end-entity certificate, and the key is the leaf's.
fn check_cert_key(section: &str, cert: &Path, key: &Path) -> Result<String, String> {
    let certs = read_pem_certs(&format!("{section}.cert"), cert)?;
    let leaf = &certs[0];
    let summary = describe_cert(&format!("{section}.cert"), cert, leaf, false)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "{section}.key {}: {e}; give the PEM private key of {section}.cert",
            key.display()
        )
    })?;
    let signing = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{section}.key {}: {e}", key.display()))?;
    let spki = signing.public_key().ok_or_else(|| {
        format!(
            "{section}.key {}: its public key cannot be derived to compare with {section}.cert",
            key.display()
        )
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("{section}.cert {}: {e}", cert.display()))?;
    if parsed.public_key().raw != spki.as_ref() {
        return Err(format!(
            "{section}.key {}: does not match the certificate {section}.cert {}; give the key \
             the certificate was issued for",
            key.display(),
            cert.display()
        ));
    }
    Ok(format!(
        "{section} cert {}: {summary}, key matches",
        cert.display()
    ))
}

fn read_pem_certs(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    if !path.exists() {
        return Err(format!(
            "{field} {shown}: no such file; create it (see README, \"Certificates with openssl\") or fix the path"
        ));
    }
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{field} {shown}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{field} {shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{field} {shown}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
        ));
    }
    Ok(certs)
}

/// `CN=..., SAN ..., expires ...`; refuses what a TLS peer would refuse.
fn describe_cert(
    field: &str,
    path: &Path,
    der: &CertificateDer<'_>,
    want_ca: bool,
) -> Result<String, String> {
    use x509_parser::{prelude::GeneralName, x509::X509Version};
    let shown = path.display();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("{field} {shown}: not a valid X.509 certificate: {e}"))?;
    if cert.version() != X509Version::V3 {
        return Err(format!(
            "{field} {shown}: an X.509 v1 certificate, which TLS refuses \
             (UnsupportedCertVersion); issue a v3 certificate with extensions (see README, \
             \"Certificates with openssl\")"
        ));
    }
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if want_ca && !is_ca {
        return Err(format!(
            "{field} {shown}: not a CA certificate (basicConstraints CA:TRUE missing)"
        ));
    }
    if !want_ca && is_ca {
        return Err(format!(
            "{field} {shown}: a CA certificate used as a server certificate (CaUsedAsEndEntity); \
             issue a leaf certificate with basicConstraints=CA:FALSE from this CA"
        ));
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("-");
    let mut out = format!("CN={cn}");
    if !want_ca {
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
                        GeneralName::IPAddress(ip) => match ip.len() {
                            4 => <[u8; 4]>::try_from(*ip)
                                .ok()
                                .map(|a| format!("IP:{}", std::net::Ipv4Addr::from(a))),
                            16 => <[u8; 16]>::try_from(*ip)
                                .ok()
                                .map(|a| format!("IP:{}", std::net::Ipv6Addr::from(a))),
                            _ => None,
                        },
                        GeneralName::URI(u) => Some(format!("URI:{u}")),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if sans.is_empty() {
            return Err(format!(
                "{field} {shown}: no subjectAltName; clients match the server name against it \
                 (add subjectAltName=DNS:NAME,IP:ADDRESS; see README, \"Certificates with openssl\")"
            ));
        }
        out.push_str(&format!(", SAN {}", sans.join(",")));
    }
    let not_after = cert.validity().not_after;
    if !cert.validity().is_valid() {
        return Err(format!(
            "{field} {shown}: not valid now (valid {} to {not_after})",
            cert.validity().not_before
        ));
    }
    out.push_str(&format!(", expires {not_after}"));
    Ok(out)
}

fn check_client_ca(path: &Path) -> Result<String, String> {
    let certs = read_pem_certs("tls.client_ca", path)?;
    let mut names = Vec::new();
    for der in &certs {
        names.push(describe_cert("tls.client_ca", path, der, true)?);
    }
    Ok(format!(
        "tls client_ca {}: {} CA certificate(s): {}",
        path.display(),
        certs.len(),
        names.join("; ")
    ))
}

fn check_crl(i: usize, path: &Path) -> Result<String, String> {
    use x509_parser::prelude::FromDer;
    let field = format!("tls.crls[{i}]");
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("{field} {shown}: cannot read: {e}"))?;
    let ders: Vec<Vec<u8>> = if bytes.starts_with(b"-----") {
        rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(&bytes)
            .map(|r| r.map(|d| d.as_ref().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{field} {shown}: {e}"))?
    } else {
        vec![bytes]
    };
    if ders.is_empty() {
        return Err(format!("{field} {shown}: no PEM X509 CRL in it"));
    }
    let mut revoked = 0;
    for der in &ders {
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
            .map_err(|e| format!("{field} {shown}: not a valid CRL: {e}"))?;
        revoked += crl.iter_revoked_certificates().count();
    }
    Ok(format!(
        "tls crl {shown}: {} CRL(s), {revoked} revoked certificate(s)",
        ders.len()
    ))
}

fn check_policy(path: &Path) -> Result<String, String> {
    let shown = path.display().to_string();
    let authz = crate::authz::Authz::load(path).map_err(|e| {
        let message = e.to_string();
        match e {
            crate::authz::AuthzError::Read { source, .. } => format!(
                "authz.policy {shown}: cannot read it: {source}; write the grants there (see \
                 signet.policy.example.toml) or fix the path"
            ),
            // The loader's messages already start with the file's path.
            _ if message.starts_with(&shown) => format!("authz.policy {message}"),
            _ => format!("authz.policy {shown}: {message}"),
        }
    })?;
    Ok(format!("authz policy {shown}: {} rule(s)", authz.len()))
}

/// A file sink's directory exists (or is the data directory, created at
/// start) and this user may write there; the file is not created.
fn check_sink(i: usize, spec: &SinkSpec, data_dir: &Path) -> Result<String, String> {
    let field = format!("audit.sinks[{i}]");
    let SinkSpec::File(path) = spec else {
        return Ok(format!("audit sink {spec}"));
    };
    let shown = path.display();
    if path.exists() {
        writable(path).map_err(|e| format!("{field} {shown}: {e}"))?;
        return Ok(format!("audit sink {spec}: writable"));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir == data_dir && !dir.exists() {
        writable_ancestor(data_dir).map_err(|e| format!("{field} {shown}: {e}"))?;
        return Ok(format!(
            "audit sink {spec}: in the data directory, created with it at first start"
        ));
    }
    if !dir.is_dir() {
        return Err(format!(
            "{field} {shown}: the directory {} does not exist; create it (writable by the \
             server's user) or change audit.sinks",
            dir.display()
        ));
    }
    writable(&dir).map_err(|e| format!("{field} {shown}: {e}"))?;
    Ok(format!(
        "audit sink {spec}: directory writable (the file is created at first start)"
    ))
}

/// The gRPC socket's directory exists and is writable, or can be created.
fn check_socket_dir(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let dir = path.parent().unwrap_or(Path::new("/"));
    if dir.is_dir() {
        writable(dir).map_err(|e| format!("listen.grpc unix:{shown}: {e}"))?;
    } else {
        writable_ancestor(dir).map_err(|e| format!("listen.grpc unix:{shown}: {e}"))?;
    }
    Ok(format!("listen.grpc unix:{shown}: its directory is usable"))
}

fn writable(path: &Path) -> Result<(), String> {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).map_err(|e| {
        format!(
            "{} is not writable by this user ({e}); fix its owner or mode",
            path.display()
        )
    })
}

/// The nearest existing ancestor of `path` is a writable directory, so the
/// server can create `path` at start.
fn writable_ancestor(path: &Path) -> Result<(), String> {
    if path.exists() {
        if !path.is_dir() {
            return Err(format!("{} exists and is not a directory", path.display()));
        }
        return writable(path);
    }
    let mut dir = path;
    while let Some(parent) = dir.parent() {
        if parent.as_os_str().is_empty() {
            return writable(Path::new("."));
        }
        if parent.exists() {
            return writable(parent)
                .map_err(|e| format!("{} cannot be created: {e}", path.display()));
        }
        dir = parent;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_fine_under_a_writable_one() {
        let dir = tempfile::tempdir().unwrap();
        writable_ancestor(&dir.path().join("a/b/c")).unwrap();
        assert!(!dir.path().join("a").exists(), "nothing is created");
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let err = writable_ancestor(&file).unwrap_err();
        assert!(err.ends_with("exists and is not a directory"), "{err}");
    }

    #[test]
    fn a_sink_in_a_missing_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SinkSpec::File(dir.path().join("nowhere/audit.log"));
        let err = check_sink(0, &spec, &dir.path().join("data")).unwrap_err();
        assert!(
            err.starts_with("audit.sinks[0] ") && err.contains("does not exist; create it"),
            "{err}"
        );
        assert!(check_sink(0, &SinkSpec::Stdout, dir.path()).is_ok());
    }
}
