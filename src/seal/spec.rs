//! KEK provider spec strings: `file:PATH`, `env:VAR`,
//! `pkcs11:module=PATH;token=LABEL;key=LABEL;pin-env=VAR`.

use std::{fmt, path::PathBuf, str::FromStr, sync::Arc};

use super::{Kek, KekError, LocalKek, Pkcs11Kek, Pkcs11Spec};

/// Where the KEK comes from. Holds no key material: opening reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KekSpec {
    /// 32 raw bytes in a file readable by its owner only.
    File(PathBuf),
    /// Base64 of 32 bytes in an environment variable.
    Env(String),
    /// An AES-256 key inside an HSM, used through PKCS#11.
    Pkcs11(Pkcs11Spec),
}

impl FromStr for KekSpec {
    type Err = KekError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            KekError::Unavailable(format!(
                "KEK spec {s:?}: {why} (use file:PATH, env:VAR or \
                 pkcs11:module=PATH;token=LABEL;key=LABEL;pin-env=VAR)"
            ))
        };
        let (kind, rest) = s.split_once(':').ok_or_else(|| bad("no provider prefix"))?;
        if rest.is_empty() {
            return Err(bad("empty after the prefix"));
        }
        match kind {
            "file" => Ok(KekSpec::File(PathBuf::from(rest))),
            "env" => Ok(KekSpec::Env(rest.to_owned())),
            "pkcs11" => Ok(KekSpec::Pkcs11(Pkcs11Spec::parse(rest)?)),
            _ => Err(bad("unknown provider")),
        }
    }
}

impl fmt::Display for KekSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KekSpec::File(p) => write!(f, "file:{}", p.display()),
            KekSpec::Env(v) => write!(f, "env:{v}"),
            KekSpec::Pkcs11(p) => write!(f, "pkcs11:{p}"),
        }
    }
}

impl KekSpec {
    /// The provider kind: `file`, `env` or `pkcs11`.
    pub fn kind(&self) -> &'static str {
        match self {
            KekSpec::File(_) => "file",
            KekSpec::Env(_) => "env",
            KekSpec::Pkcs11(_) => "pkcs11",
        }
    }

    /// Opens the provider. May block (file reads, HSM login): runs on the
    /// blocking pool.
    pub async fn open(&self) -> Result<Arc<dyn Kek>, KekError> {
        let spec = self.clone();
        tokio::task::spawn_blocking(move || -> Result<Arc<dyn Kek>, KekError> {
            match spec {
                KekSpec::File(path) => Ok(Arc::new(LocalKek::from_file(&path)?)),
                KekSpec::Env(var) => Ok(Arc::new(LocalKek::from_env(&var)?)),
                KekSpec::Pkcs11(p) => Ok(Arc::new(Pkcs11Kek::open(&p)?)),
            }
        })
        .await
        .map_err(|_| KekError::Unavailable("KEK provider task failed".into()))?
    }
}

/// Something that can open the KEK on demand: at start, and at every
/// Unseal. Holds no key material itself.
#[async_trait::async_trait]
pub trait KekProvider: Send + Sync + 'static {
    /// The provider kind: `file`, `env`, `pkcs11` or `ephemeral`.
    fn kind(&self) -> &'static str;
    /// A description for logs and Status, without secrets.
    fn describe(&self) -> String;
    /// Opens the KEK.
    async fn open(&self) -> Result<Arc<dyn Kek>, KekError>;
}

#[async_trait::async_trait]
impl KekProvider for KekSpec {
    fn kind(&self) -> &'static str {
        KekSpec::kind(self)
    }

    fn describe(&self) -> String {
        self.to_string()
    }

    async fn open(&self) -> Result<Arc<dyn Kek>, KekError> {
        KekSpec::open(self).await
    }
}

/// A KEK that exists only in this process's memory, for tests and the
/// in-process benchmark. Anything sealed under it is lost with the process.
pub struct EphemeralKek(Arc<dyn Kek>);

impl EphemeralKek {
    /// A fresh random KEK.
    pub fn new() -> Result<Self, KekError> {
        Ok(Self(Arc::new(LocalKek::random()?)))
    }
}

#[async_trait::async_trait]
impl KekProvider for EphemeralKek {
    fn kind(&self) -> &'static str {
        "ephemeral"
    }

    fn describe(&self) -> String {
        "ephemeral (in memory, lost on exit)".to_owned()
    }

    async fn open(&self) -> Result<Arc<dyn Kek>, KekError> {
        Ok(self.0.clone())
    }
}
