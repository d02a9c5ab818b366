//! A key-encryption key inside an HSM, reached over PKCS#11.
//!
//! The KEK is an AES-256 secret key object on a token; it never leaves the
//! token. Data keys are wrapped and unwrapped by the token itself with
//! `CKM_AES_GCM`: a 12-byte IV drawn here, a 128-bit tag and the caller's
//! `aad`. The wrapped form is `iv || ciphertext || tag` (60 bytes).
//!
//! The spec names the module, the token, the key and the environment
//! variable holding the user PIN, so the PIN never sits in a config file or
//! on a command line. The PIN is read once, used to log in and wiped; it is
//! not kept for later. (The variable itself stays in the process
//! environment: removing it needs `unsafe`; scope it to the service.)

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use async_trait::async_trait;
use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11},
    error::{Error as CkError, RvError},
    mechanism::{Mechanism, aead::GcmParams},
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::{Session, UserType},
    slot::Slot,
    types::{AuthPin, Ulong},
};
use zeroize::{Zeroize, Zeroizing};

use super::kek::{DataKey, Kek, KekError};

/// The spec syntax, quoted in every parse error.
const FORMAT: &str = "format: module=PATH;token=LABEL;key=LABEL;pin-env=VAR";
/// PKCS#11 pads token labels to 32 bytes; a longer label can never match.
const MAX_TOKEN_LABEL: usize = 32;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const TAG_BITS: std::ffi::c_ulong = 128;
const DEK_LEN: usize = 32;
/// Length of everything [`Pkcs11Kek::wrap`] returns.
const WRAPPED_LEN: usize = IV_LEN + DEK_LEN + TAG_LEN;
/// Context of the self-test that tells a bad tag from a failing token.
const PROBE_AAD: &[u8] = b"signet pkcs11 KEK probe";
/// `CKR_AEAD_DECRYPT_FAILED` (PKCS#11 3.0), which cryptoki 0.12 does not name.
const CKR_AEAD_DECRYPT_FAILED: std::ffi::c_ulong = 0x35;

/// Where a PKCS#11 KEK lives: the body of a `pkcs11:` KEK spec,
/// `module=PATH;token=LABEL;key=LABEL;pin-env=VAR`.
///
/// Holds no secret: the PIN is named by its environment variable, so
/// `Debug` and `Display` show everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Spec {
    module: PathBuf,
    token: String,
    key: String,
    pin_env: String,
}

impl Pkcs11Spec {
    /// Parses the part of a spec after `pkcs11:`.
    ///
    /// All four fields are required, each exactly once, in any order.
    /// `module` must be an absolute path (a bare name would be looked up on
    /// the loader's search path); `token` is at most 32 bytes; `pin-env` is
    /// an environment variable name. Errors are [`KekError::Unavailable`]
    /// naming the field and the rule; they never echo a field's value, in
    /// case a PIN was pasted into the spec.
    pub fn parse(s: &str) -> Result<Self, KekError> {
        let mut module = None;
        let mut token = None;
        let mut key = None;
        let mut pin_env = None;
        for (index, field) in s.split(';').enumerate() {
            let Some((name, value)) = field.split_once('=') else {
                return Err(spec_error(format!("field {} has no \"=\"", index + 1)));
            };
            let slot = match name {
                "module" => &mut module,
                "token" => &mut token,
                "key" => &mut key,
                "pin-env" => &mut pin_env,
                _ => return Err(spec_error(format!("unknown field \"{name}\""))),
            };
            if slot.is_some() {
                return Err(spec_error(format!("\"{name}\" given twice")));
            }
            if value.is_empty() {
                return Err(spec_error(format!("\"{name}\" is empty")));
            }
            *slot = Some(value);
        }
        let required = |value: Option<&str>, name: &str| {
            value
                .map(str::to_owned)
                .ok_or_else(|| spec_error(format!("missing \"{name}\"")))
        };
        let spec = Self {
            module: PathBuf::from(required(module, "module")?),
            token: required(token, "token")?,
            key: required(key, "key")?,
            pin_env: required(pin_env, "pin-env")?,
        };
        if !spec.module.is_absolute() {
            return Err(spec_error(
                "\"module\" must be an absolute path to the PKCS#11 library".into(),
            ));
        }
        if spec.token.len() > MAX_TOKEN_LABEL {
            return Err(spec_error(format!(
                "\"token\" is longer than {MAX_TOKEN_LABEL} bytes, the PKCS#11 limit for token labels"
            )));
        }
        if !is_env_name(&spec.pin_env) {
            return Err(spec_error(
                "\"pin-env\" must be an environment variable name (letters, digits, '_')".into(),
            ));
        }
        Ok(spec)
    }

    /// Path of the PKCS#11 module (shared library).
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// Label of the token holding the KEK.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Label (`CKA_LABEL`) of the AES key on the token.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Name of the environment variable holding the user PIN.
    pub fn pin_env(&self) -> &str {
        &self.pin_env
    }
}

/// The spec body, as [`Pkcs11Spec::parse`] reads it.
impl fmt::Display for Pkcs11Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "module={};token={};key={};pin-env={}",
            self.module.display(),
            self.token,
            self.key,
            self.pin_env
        )
    }
}

fn spec_error(rule: String) -> KekError {
    KekError::Unavailable(format!("pkcs11 KEK spec: {rule} ({FORMAT})"))
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A KEK held by a PKCS#11 token: wrap and unwrap run inside the token.
///
/// Holds one logged-in session. Clones are not offered: share it behind an
/// `Arc<dyn Kek>`. Calls are serialised on the session (PKCS#11 sessions
/// run one operation at a time) and run on tokio's blocking pool.
///
/// After a session or device error (the session closed, the token pulled,
/// the module finalised, the login lost) it opens a new session and logs
/// in again, reading the PIN variable afresh, and says so in the log; a
/// reopen that fails is retried no sooner than a back-off that doubles
/// from 1 s to 30 s, so a dead HSM is not hammered. Callers see
/// UNAVAILABLE meanwhile and never need a Seal/Unseal.
pub struct Pkcs11Kek {
    inner: Arc<Inner>,
}

struct Inner {
    spec: Pkcs11Spec,
    ctx: Pkcs11,
    // A PKCS#11 session runs one operation at a time and cryptoki's
    // `Session` is `Send` but not `Sync`. Each call holds the lock only for
    // one single-part encrypt or decrypt (or one reopen), so a std `Mutex`
    // is enough.
    state: Mutex<State>,
}

/// The session and the key handle in it (handles are per session on some
/// tokens, so a reopen looks the key up again).
struct State {
    open: Option<(Session, ObjectHandle)>,
    /// Failed reopen attempts in a row.
    failures: u32,
    /// No reopen before this.
    next_attempt: Option<std::time::Instant>,
}

/// The first wait after a failed reopen; doubled per failure up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

impl Pkcs11Kek {
    /// Loads the module, logs in to the token and finds the key.
    ///
    /// Blocks on the module (call it at startup, or from a blocking task).
    /// Every failure is [`KekError::Unavailable`] saying which step failed
    /// and what to do. Refuses a key that is extractable or not sensitive:
    /// the KEK must never leave the HSM.
    pub fn open(spec: &Pkcs11Spec) -> Result<Self, KekError> {
        let module = spec.module.display();
        let ctx = Pkcs11::new(&spec.module).map_err(|e| {
            unavailable(format!(
                "cannot load module {module}: {e}; check the \"module\" path"
            ))
        })?;
        let open = open_session(&ctx, spec)?;
        Ok(Self {
            inner: Arc::new(Inner {
                spec: spec.clone(),
                ctx,
                state: Mutex::new(State {
                    open: Some(open),
                    failures: 0,
                    next_attempt: None,
                }),
            }),
        })
    }

    /// The spec this KEK was opened from.
    pub fn spec(&self) -> &Pkcs11Spec {
        &self.inner.spec
    }
}

impl fmt::Debug for Pkcs11Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = &self.inner.spec;
        f.debug_struct("Pkcs11Kek")
            .field("module", &spec.module)
            .field("token", &spec.token)
            .field("key", &spec.key)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Kek for Pkcs11Kek {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    async fn wrap(&self, dek: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>, KekError> {
        let mut iv = [0u8; IV_LEN];
        aws_lc_rs::rand::fill(&mut iv).map_err(|_| {
            unavailable("the system random generator failed to produce an IV".into())
        })?;
        let dek = Zeroizing::new(*dek);
        let aad = aad.to_vec();
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.encrypt(iv, &aad, &dek)).await
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, KekError> {
        // `wrap` always returns exactly this much; anything else was not
        // made by it, so it cannot open.
        if wrapped.len() != WRAPPED_LEN {
            return Err(KekError::Integrity);
        }
        let wrapped = wrapped.to_vec();
        let aad = aad.to_vec();
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.decrypt(&wrapped, &aad)).await
    }
}

/// Initialises the module (if needed), finds the token, opens a session,
/// logs in with the PIN read from its variable now, and finds the key.
fn open_session(ctx: &Pkcs11, spec: &Pkcs11Spec) -> Result<(Session, ObjectHandle), KekError> {
    let module = spec.module.display();
    // The module is process-global: a second KEK on the same module (or
    // a test harness) finds it initialised already, which is fine.
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(unavailable(format!(
                "cannot initialise module {module}: {}",
                describe(&e)
            )));
        }
    }
    let slot = find_token(ctx, spec)?;
    let pin = read_pin(&spec.pin_env)?;
    let session = ctx.open_ro_session(slot).map_err(|e| {
        unavailable(format!(
            "cannot open a session on token \"{}\": {}",
            spec.token,
            describe(&e)
        ))
    })?;
    login(&session, &pin, spec)?;
    drop(pin);
    let key = find_key(&session, spec)?;
    Ok((session, key))
}

/// Whether `e` means the session or the device is gone (rather than a bad
/// request or a bad tag): worth a new session and a new login.
fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::GeneralError
                | RvError::FunctionFailed,
            _
        )
    )
}

/// What one operation on the session returned.
enum OpError {
    /// The wrapped key did not verify: no reopen helps.
    Integrity,
    /// The token failed; `lost` if the session or device is gone.
    Token { error: KekError, lost: bool },
}

impl Inner {
    /// Runs `op` on the session, reopening it first if an earlier error
    /// lost it (subject to the back-off), and once more right away if `op`
    /// itself finds the session gone.
    fn with_session<T>(
        &self,
        op: impl Fn(&Session, ObjectHandle) -> Result<T, OpError>,
    ) -> Result<T, KekError> {
        let mut state = self.lock()?;
        for attempt in 0..2 {
            let (session, key) = self.ensure_open(&mut state)?;
            match op(session, *key) {
                Ok(v) => return Ok(v),
                Err(OpError::Integrity) => return Err(KekError::Integrity),
                Err(OpError::Token { error, lost }) if lost && attempt == 0 => {
                    tracing::warn!(
                        token = %self.spec.token,
                        error = %error,
                        "pkcs11 KEK: the session or the device failed; opening a new session \
                         and logging in again"
                    );
                    state.open = None;
                    state.next_attempt = None;
                }
                Err(OpError::Token { error, lost }) => {
                    if lost {
                        state.open = None;
                    }
                    return Err(error);
                }
            }
        }
        Err(unavailable(format!(
            "token \"{}\" failed again right after a new session was opened",
            self.spec.token
        )))
    }

    /// The open session, opening a new one (and logging in) if there is
    /// none and the back-off allows.
    fn ensure_open<'s>(
        &self,
        state: &'s mut State,
    ) -> Result<&'s (Session, ObjectHandle), KekError> {
        if state.open.is_none() {
            let now = std::time::Instant::now();
            if let Some(at) = state.next_attempt
                && now < at
            {
                return Err(unavailable(format!(
                    "token \"{}\" is unreachable; the next attempt to reopen a session is in {}",
                    self.spec.token,
                    humantime::format_duration(std::time::Duration::from_secs(
                        (at - now).as_secs().max(1)
                    ))
                )));
            }
            // A token that went away stays broken in some modules (SoftHSM2
            // keeps a token it lost as failing until C_Initialize scans
            // again): if a plain reopen fails, start the module afresh. This
            // also ends sessions other KEKs in this process hold on the same
            // module; they reopen theirs the same way on their next call.
            let reopened = open_session(&self.ctx, &self.spec).or_else(|first| {
                if self.ctx.clone().finalize().is_ok() {
                    open_session(&self.ctx, &self.spec)
                } else {
                    Err(first)
                }
            });
            match reopened {
                Ok(open) => {
                    tracing::info!(
                        token = %self.spec.token,
                        failed_attempts = state.failures,
                        "pkcs11 KEK: reopened a session and logged in again"
                    );
                    state.open = Some(open);
                    state.failures = 0;
                    state.next_attempt = None;
                }
                Err(e) => {
                    let wait = FIRST_BACKOFF
                        .saturating_mul(1 << state.failures.min(5))
                        .min(MAX_BACKOFF);
                    state.failures = state.failures.saturating_add(1);
                    state.next_attempt = Some(now + wait);
                    tracing::warn!(
                        token = %self.spec.token,
                        error = %e,
                        retry_in = %humantime::format_duration(wait),
                        "pkcs11 KEK: cannot reopen a session; will retry"
                    );
                    return Err(e);
                }
            }
        }
        state
            .open
            .as_ref()
            .ok_or_else(|| unavailable("no session".into()))
    }

    fn token_error(&self, op: &str, e: &CkError) -> OpError {
        OpError::Token {
            error: self.failed(op, e),
            lost: session_lost(e),
        }
    }

    fn encrypt(&self, iv: [u8; IV_LEN], aad: &[u8], dek: &[u8; 32]) -> Result<Vec<u8>, KekError> {
        let (iv, sealed) = self.with_session(|session, key| {
            let mut iv = iv;
            gcm_seal(session, key, &mut iv, aad, dek)
                .map(|sealed| (iv, sealed))
                .map_err(|e| self.token_error("encrypt", &e))
        })?;
        if sealed.len() != DEK_LEN + TAG_LEN {
            return Err(unavailable(format!(
                "encrypt with key \"{}\" returned {} bytes, expected {}",
                self.spec.key,
                sealed.len(),
                DEK_LEN + TAG_LEN
            )));
        }
        // Read the IV back after the call: the buffer is handed to the token
        // mutable, and some tokens in FIPS mode generate the IV themselves
        // and write it there.
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn decrypt(&self, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, KekError> {
        let (iv, sealed) = wrapped.split_at(IV_LEN);
        let iv = <[u8; IV_LEN]>::try_from(iv).map_err(|_| KekError::Integrity)?;
        let plain = self.with_session(|session, key| {
            let mut iv = iv;
            gcm_open(session, key, &mut iv, aad, sealed)
                .map_err(|e| self.decrypt_failure(session, key, &e))
        })?;
        if plain.len() != DEK_LEN {
            return Err(KekError::Integrity);
        }
        let mut dek = Zeroizing::new([0u8; DEK_LEN]);
        dek.copy_from_slice(&plain);
        Ok(dek)
    }

    /// Tells a tag that did not verify ([`KekError::Integrity`]) from a
    /// token that failed ([`KekError::Unavailable`]).
    ///
    /// Tokens disagree on the code for a bad tag: SoftHSM2 2.6 says
    /// `CKR_GENERAL_ERROR`, others `CKR_FUNCTION_FAILED`,
    /// `CKR_ENCRYPTED_DATA_INVALID` or PKCS#11 3.0's
    /// `CKR_AEAD_DECRYPT_FAILED`. The first two also mean "the device
    /// broke", so for those a fresh round trip under the same key decides:
    /// if the token still seals and opens, the blob was at fault. Only
    /// `C_Decrypt` counts; a failing `C_DecryptInit` is a key or mechanism
    /// problem.
    fn decrypt_failure(&self, session: &Session, key: ObjectHandle, e: &CkError) -> OpError {
        let CkError::Pkcs11(rv, Function::Decrypt) = e else {
            return self.token_error("decrypt", e);
        };
        match rv {
            RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::UnknownErrorCode(CKR_AEAD_DECRYPT_FAILED) => OpError::Integrity,
            RvError::GeneralError | RvError::FunctionFailed if self.round_trips(session, key) => {
                OpError::Integrity
            }
            _ => self.token_error("decrypt", e),
        }
    }

    /// Whether the token still seals and opens a zero key under the KEK.
    fn round_trips(&self, session: &Session, key: ObjectHandle) -> bool {
        let probe = [0u8; DEK_LEN];
        let mut iv = [0u8; IV_LEN];
        if aws_lc_rs::rand::fill(&mut iv).is_err() {
            return false;
        }
        let Ok(sealed) = gcm_seal(session, key, &mut iv, PROBE_AAD, &probe) else {
            return false;
        };
        gcm_open(session, key, &mut iv, PROBE_AAD, &sealed)
            .is_ok_and(|plain| plain.as_slice() == probe)
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, KekError> {
        // A panic while holding the lock may have left an operation active
        // on the session; refuse rather than guess.
        self.state.lock().map_err(|_| {
            unavailable(format!(
                "the session on token \"{}\" is unusable after an earlier panic; restart the service",
                self.spec.token
            ))
        })
    }

    fn failed(&self, op: &str, e: &CkError) -> KekError {
        unavailable(format!(
            "{op} with key \"{}\" on token \"{}\" failed: {}",
            self.spec.key,
            self.spec.token,
            describe(e)
        ))
    }
}

/// Runs a PKCS#11 call on the blocking pool: modules block on I/O (a
/// network HSM) and must stay off the async reactor.
async fn blocking<T, F>(f: F) -> Result<T, KekError>
where
    F: FnOnce() -> Result<T, KekError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| unavailable(format!("the PKCS#11 call did not complete: {e}")))?
}

fn find_token(ctx: &Pkcs11, spec: &Pkcs11Spec) -> Result<Slot, KekError> {
    let module = spec.module.display();
    let slots = ctx.get_slots_with_token().map_err(|e| {
        unavailable(format!(
            "cannot list slots of module {module}: {}",
            describe(&e)
        ))
    })?;
    let mut labels = Vec::new();
    let mut matching = Vec::new();
    for slot in slots {
        let info = ctx.get_token_info(slot).map_err(|e| {
            unavailable(format!(
                "cannot read token info in module {module}: {}",
                describe(&e)
            ))
        })?;
        if info.label() == spec.token {
            matching.push(slot);
        }
        if !info.label().is_empty() {
            labels.push(format!("\"{}\"", info.label()));
        }
    }
    match matching[..] {
        [slot] => Ok(slot),
        [] => Err(unavailable(format!(
            "token \"{}\" not found in module {module} (tokens present: {}); check the \"token\" label",
            spec.token,
            if labels.is_empty() {
                "none".to_owned()
            } else {
                labels.join(", ")
            }
        ))),
        _ => Err(unavailable(format!(
            "{} tokens labelled \"{}\" in module {module}; give the KEK's token a unique label",
            matching.len(),
            spec.token
        ))),
    }
}

fn read_pin(var: &str) -> Result<AuthPin, KekError> {
    let mut raw = std::env::var(var).map_err(|e| {
        let problem = match e {
            std::env::VarError::NotPresent => "is not set",
            std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
        };
        unavailable(format!(
            "the user PIN variable {var} {problem}; set {var} to the token's user PIN in the service's environment"
        ))
    })?;
    if raw.is_empty() {
        return Err(unavailable(format!(
            "the user PIN variable {var} is empty; set it to the token's user PIN"
        )));
    }
    let pin = AuthPin::from(raw.as_str());
    raw.zeroize();
    Ok(pin)
}

fn login(session: &Session, pin: &AuthPin, spec: &Pkcs11Spec) -> Result<(), KekError> {
    let token = &spec.token;
    let var = &spec.pin_env;
    match session.login(UserType::User, Some(pin)) {
        // PKCS#11 login state belongs to the application, not the session:
        // another KEK on this token in this process logged in already.
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(unavailable(format!(
            "login to token \"{token}\" failed: wrong PIN (CKR_PIN_INCORRECT); check {var} (repeated failures may lock the token)"
        ))),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(unavailable(format!(
            "login to token \"{token}\" failed: the user PIN is locked (CKR_PIN_LOCKED); the token's security officer must reset it"
        ))),
        Err(CkError::Pkcs11(RvError::UserPinNotInitialized, _)) => Err(unavailable(format!(
            "login to token \"{token}\" failed: the token has no user PIN yet (CKR_USER_PIN_NOT_INITIALIZED); initialise it first"
        ))),
        Err(e) => Err(unavailable(format!(
            "login to token \"{token}\" failed: {}",
            describe(&e)
        ))),
    }
}

fn find_key(session: &Session, spec: &Pkcs11Spec) -> Result<ObjectHandle, KekError> {
    let (key, token) = (&spec.key, &spec.token);
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(key.as_bytes().to_vec()),
    ];
    let found = session.find_objects(&template).map_err(|e| {
        unavailable(format!(
            "cannot search token \"{token}\" for key \"{key}\": {}",
            describe(&e)
        ))
    })?;
    let handle = match found[..] {
        [handle] => handle,
        [] => {
            return Err(unavailable(format!(
                "no AES key labelled \"{key}\" on token \"{token}\"; create an AES-256 secret key with that CKA_LABEL"
            )));
        }
        _ => {
            return Err(unavailable(format!(
                "{} AES keys labelled \"{key}\" on token \"{token}\"; the label must name exactly one key",
                found.len()
            )));
        }
    };
    let attributes = session
        .get_attributes(
            handle,
            &[
                AttributeType::Extractable,
                AttributeType::Sensitive,
                AttributeType::NeverExtractable,
                AttributeType::AlwaysSensitive,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::ValueLen,
            ],
        )
        .map_err(|e| {
            unavailable(format!(
                "cannot read the attributes of key \"{key}\" on token \"{token}\": {}",
                describe(&e)
            ))
        })?;
    let mut extractable = None;
    let mut sensitive = None;
    let mut never_extractable = None;
    let mut always_sensitive = None;
    let mut encrypt = None;
    let mut decrypt = None;
    let mut value_len = None;
    for attribute in attributes {
        match attribute {
            Attribute::Extractable(v) => extractable = Some(v),
            Attribute::Sensitive(v) => sensitive = Some(v),
            Attribute::NeverExtractable(v) => never_extractable = Some(v),
            Attribute::AlwaysSensitive(v) => always_sensitive = Some(v),
            Attribute::Encrypt(v) => encrypt = Some(v),
            Attribute::Decrypt(v) => decrypt = Some(v),
            Attribute::ValueLen(v) => value_len = Some(u64::from(v)),
            _ => {}
        }
    }
    // An attribute the token does not report counts as the unsafe answer.
    if extractable != Some(false) {
        return Err(unavailable(format!(
            "key \"{key}\" on token \"{token}\" is extractable (CKA_EXTRACTABLE is not false); \
             the KEK must never leave the HSM: create a key with CKA_EXTRACTABLE=false"
        )));
    }
    if sensitive != Some(true) {
        return Err(unavailable(format!(
            "key \"{key}\" on token \"{token}\" is not sensitive (CKA_SENSITIVE is not true); \
             the KEK must never leave the HSM: create a key with CKA_SENSITIVE=true"
        )));
    }
    // A key that was ever extractable or ever not sensitive may have left
    // the HSM before it was locked down; its copy outside would open every
    // sealed key. Only the token sets these two, at creation.
    if never_extractable != Some(true) {
        return Err(unavailable(format!(
            "key \"{key}\" on token \"{token}\" was extractable at some point \
             (CKA_NEVER_EXTRACTABLE is not true), so a copy may exist outside the HSM; \
             the KEK must never leave the HSM: create a new key with CKA_EXTRACTABLE=false \
             and re-key (`signet operator rekey`)"
        )));
    }
    if always_sensitive != Some(true) {
        return Err(unavailable(format!(
            "key \"{key}\" on token \"{token}\" was not sensitive at some point \
             (CKA_ALWAYS_SENSITIVE is not true), so its value may have been read; \
             the KEK must never leave the HSM: create a new key with CKA_SENSITIVE=true \
             and re-key (`signet operator rekey`)"
        )));
    }
    if encrypt != Some(true) || decrypt != Some(true) {
        return Err(unavailable(format!(
            "key \"{key}\" on token \"{token}\" does not allow both encrypt and decrypt; \
             create it with CKA_ENCRYPT=true and CKA_DECRYPT=true"
        )));
    }
    if value_len != Some(DEK_LEN as u64) {
        return Err(unavailable(format!(
            "key \"{key}\" on token \"{token}\" is not an AES-256 key (CKA_VALUE_LEN is not 32)"
        )));
    }
    Ok(handle)
}

/// One single-part `CKM_AES_GCM` encryption inside the token.
fn gcm_seal(
    session: &Session,
    key: ObjectHandle,
    iv: &mut [u8; IV_LEN],
    aad: &[u8],
    plain: &[u8],
) -> Result<Vec<u8>, CkError> {
    let params = GcmParams::new(iv, aad, Ulong::from(TAG_BITS))?;
    session.encrypt(&Mechanism::AesGcm(params), key, plain)
}

/// One single-part `CKM_AES_GCM` decryption inside the token; the
/// plaintext is wiped on drop.
fn gcm_open(
    session: &Session,
    key: ObjectHandle,
    iv: &mut [u8; IV_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CkError> {
    let params = GcmParams::new(iv, aad, Ulong::from(TAG_BITS))?;
    session
        .decrypt(&Mechanism::AesGcm(params), key, sealed)
        .map(Zeroizing::new)
}

/// A cryptoki error as `CKR_NAME (function)`: the name operators search
/// for, without cryptoki's paragraph-long descriptions.
fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{} in C_{function:?}", ckr_name(rv)),
        other => other.to_string(),
    }
}

/// `PinIncorrect` -> `CKR_PIN_INCORRECT`, from cryptoki's variant names.
fn ckr_name(rv: &RvError) -> String {
    match rv {
        RvError::VendorDefined(code) => format!("CKR_VENDOR_DEFINED+{code:#x}"),
        RvError::UnknownErrorCode(code) => format!("CK_RV {code:#x}"),
        known => {
            let mut name = String::from("CKR");
            for c in format!("{known:?}").chars() {
                if c.is_ascii_uppercase() {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

fn unavailable(detail: String) -> KekError {
    KekError::Unavailable(format!("pkcs11 KEK: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names_follow_the_standard() {
        assert_eq!(ckr_name(&RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            ckr_name(&RvError::UserAlreadyLoggedIn),
            "CKR_USER_ALREADY_LOGGED_IN"
        );
        assert_eq!(
            ckr_name(&RvError::EncryptedDataInvalid),
            "CKR_ENCRYPTED_DATA_INVALID"
        );
    }
}
