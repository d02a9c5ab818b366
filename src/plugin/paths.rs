//! The plugin's HTTP paths under its mount, and what each operation does.
//! Every rule is the [`KeyManager`]'s, the same code the gRPC server runs;
//! this module only reads request fields and shapes answers.
//!
//! | path | operations |
//! |---|---|
//! | `rings/` | list |
//! | `rings/:name` | read; create/update: create with `alg` (`rsa_bits`) and policy fields |
//! | `rings/:name/rotate` | update: `now`, `reason` |
//! | `rings/:name/revoke` | update: `kid`, `reason` |
//! | `rings/:name/policy` | read; update: any policy fields |
//! | `sign/:name` | update: `claims`, `ttl`, `header` |
//! | `verify/:name` | update: `token` |
//! | `jwks/:name` | read, without a token: the raw JWKS |
//! | `timeline/:name` | read |

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::{
    Error,
    crypto::{Algorithm, KeySpec, claims::InputError},
    keyring::{Issuer, KeyInfo, KeyManager, Policy, RingInfo, SignParams, TickReport, project},
};

/// A successful answer.
#[derive(Debug)]
pub enum Reply {
    /// A JSON object for the response's `data`, and warnings.
    Data(Map<String, Value>, Vec<String>),
}

/// A refused request: the HTTP status OpenBao answers and the message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// One line naming the field and the rule, or the path.
    pub message: String,
}

impl Refusal {
    fn bad(field: &str, rule: &str) -> Self {
        Self {
            status: 400,
            message: format!("{field}: {rule}"),
        }
    }
}

/// Field names the key manager uses, as this API calls them.
fn rename(field: &str) -> String {
    for (ours, theirs) in [
        ("claims_json", "claims"),
        ("header_json", "header"),
        ("key_ring", "name"),
        ("algorithm", "alg"),
    ] {
        if let Some(rest) = field.strip_prefix(ours) {
            return format!("{theirs}{rest}");
        }
    }
    field.to_owned()
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        if let Error::InvalidArgument(InputError { field, rule }) = &e {
            return Self::bad(&rename(field), rule);
        }
        // The same mapping as the gRPC codes (DESIGN §5), and the same
        // messages (which carry no paths, SQL or key material).
        let status = tonic::Status::from(e);
        let code = match status.code() {
            tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::AlreadyExists
            | tonic::Code::OutOfRange => 400,
            tonic::Code::NotFound => 404,
            tonic::Code::PermissionDenied => 403,
            tonic::Code::Aborted => 409,
            tonic::Code::Unavailable => 503,
            _ => 500,
        };
        Self {
            status: code,
            message: status.message().to_owned(),
        }
    }
}

type Answer = Result<Reply, Refusal>;

/// Answers one request. `op` is OpenBao's operation name, `path` is
/// relative to the mount, `data` the request's fields.
pub async fn handle(keys: &KeyManager, op: &str, path: &str, data: &Map<String, Value>) -> Answer {
    let parts: Vec<&str> = path.split('/').collect();
    let write = matches!(op, "create" | "update");
    match (parts.as_slice(), op) {
        (["rings", ""] | ["rings"], "list" | "read") => Ok(list(keys)),
        (["rings", name], "read") => Ok(ring(&keys.ring_info(name, "name")?)),
        (["rings", name], _) if write => create(keys, name, data).await,
        (["rings", name, "rotate"], _) if write => rotate(keys, name, data).await,
        (["rings", name, "revoke"], _) if write => revoke(keys, name, data).await,
        (["rings", name, "policy"], "read") => {
            Ok(data_of(policy_json(&keys.ring_info(name, "name")?.policy)))
        }
        (["rings", name, "policy"], _) if write => set_policy(keys, name, data).await,
        (["sign", name], _) if write => sign(keys, name, data).await,
        (["verify", name], _) if write => verify(keys, name, data),
        (["jwks", name], "read") => jwks(keys, name),
        (["timeline", name], "read") => timeline(keys, name),
        _ if known(&parts) => Err(Refusal {
            status: 405,
            message: format!("operation {op:?} is not supported on {path:?}"),
        }),
        _ => Err(Refusal {
            status: 404,
            message: format!(
                "no such path {path:?}: the paths are rings/, rings/NAME, rings/NAME/rotate, \
                 rings/NAME/revoke, rings/NAME/policy, sign/NAME, verify/NAME, jwks/NAME and \
                 timeline/NAME"
            ),
        }),
    }
}

/// Whether `parts` is one of the paths above, whatever the operation.
fn known(parts: &[&str]) -> bool {
    match parts {
        ["rings", ""] | ["rings"] => true,
        ["rings", name] | ["rings", name, "rotate" | "revoke" | "policy"] => !name.is_empty(),
        ["sign" | "verify" | "jwks" | "timeline", name] => !name.is_empty(),
        _ => false,
    }
}

fn data_of(v: Value) -> Reply {
    match v {
        Value::Object(m) => Reply::Data(m, Vec::new()),
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            Reply::Data(m, Vec::new())
        }
    }
}

fn list(keys: &KeyManager) -> Reply {
    let names: Vec<String> = keys
        .ring_infos()
        .iter()
        .map(|r| r.name.to_string())
        .collect();
    data_of(json!({ "keys": names }))
}

fn key_json(k: &KeyInfo) -> Value {
    let mut v = serde_json::to_value(k.timeline).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        m.insert("kid".into(), k.kid.as_str().into());
        m.insert("alg".into(), k.alg.name().into());
        m.insert("state".into(), k.state.name().into());
        m.insert("reason".into(), k.reason.clone().into());
    }
    v
}

fn policy_json(p: &Policy) -> Value {
    serde_json::to_value(p).unwrap_or_else(|_| json!({}))
}

fn ring(r: &RingInfo) -> Reply {
    data_of(json!({
        "name": r.name.as_str(),
        "alg": r.spec.alg().name(),
        "rsa_bits": r.spec.rsa_bits(),
        "policy": policy_json(&r.policy),
        "keys": r.keys.iter().map(key_json).collect::<Vec<_>>(),
    }))
}

/// A text field; numbers and booleans are taken as their text (the CLI
/// sends `k=v` values as strings, the API may send JSON types).
fn text(data: &Map<String, Value>, field: &str) -> Result<Option<String>, Refusal> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(Refusal::bad(field, "must be a string")),
    }
}

fn flag(data: &Map<String, Value>, field: &str) -> Result<bool, Refusal> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" || s.is_empty() => Ok(false),
        Some(_) => Err(Refusal::bad(field, "must be true or false")),
    }
}

/// A duration: seconds as a number, or text such as `90s`, `15m`, `6d`.
fn duration(data: &Map<String, Value>, field: &str) -> Result<Option<Duration>, Refusal> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|s| Some(Duration::from_secs(s)))
            .ok_or_else(|| Refusal::bad(field, "must be whole, non-negative seconds")),
        Some(Value::String(s)) => crate::cli::parse_duration(s)
            .map(Some)
            .map_err(|e| Refusal::bad(field, &format!("{s:?} is not a duration: {e}"))),
        Some(_) => Err(Refusal::bad(field, "must be a duration (90s, 15m, 6d)")),
    }
}

/// A JSON object field given as an object or as its text.
fn object_bytes(data: &Map<String, Value>, field: &str) -> Result<Vec<u8>, Refusal> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(v @ Value::Object(_)) => Ok(serde_json::to_vec(v).unwrap_or_default()),
        Some(_) => Err(Refusal::bad(field, "must be a JSON object (or its text)")),
    }
}

/// `base` with every policy field `data` gives.
fn policy_from(base: Policy, data: &Map<String, Value>) -> Result<Policy, Refusal> {
    let mut p = base;
    let max = crate::keyring::MAX_DURATION;
    for (name, slot) in [
        ("rotation_period", &mut p.rotation_period),
        ("publish_lead", &mut p.publish_lead),
        ("grace", &mut p.grace),
        ("max_token_ttl", &mut p.max_token_ttl),
        ("default_token_ttl", &mut p.default_token_ttl),
        ("jwks_max_age", &mut p.jwks_max_age),
        ("clock_skew", &mut p.clock_skew),
    ] {
        if let Some(d) = duration(data, name)? {
            if d > max {
                let rule = format!("must be at most 10 years ({} s)", max.as_secs());
                return Err(Refusal::bad(name, &rule));
            }
            *slot = d;
        }
    }
    // The ring's `iss`: an https URL, or empty to have none.
    if let Some(text) = text(data, "issuer")? {
        p.issuer = match text.as_str() {
            "" => None,
            t => Some(Issuer::parse(t, "issuer").map_err(Error::InvalidArgument)?),
        };
    }
    Ok(p)
}

const POLICY_FIELDS: [&str; 8] = [
    "issuer",
    "rotation_period",
    "publish_lead",
    "grace",
    "max_token_ttl",
    "default_token_ttl",
    "jwks_max_age",
    "clock_skew",
];

fn only(data: &Map<String, Value>, allowed: &[&str]) -> Result<(), Refusal> {
    match data.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Refusal::bad(
            k,
            &format!("unknown field; this path takes {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

async fn create(keys: &KeyManager, name: &str, data: &Map<String, Value>) -> Answer {
    let mut allowed = vec!["alg", "rsa_bits"];
    allowed.extend(POLICY_FIELDS);
    only(data, &allowed)?;
    let alg = text(data, "alg")?.ok_or_else(|| {
        let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
        Refusal::bad("alg", &format!("is required: one of {}", names.join(", ")))
    })?;
    let bits = match text(data, "rsa_bits")? {
        None => 0,
        Some(s) => s
            .parse::<u32>()
            .map_err(|_| Refusal::bad("rsa_bits", "must be 2048, 3072 or 4096"))?,
    };
    let spec = alg
        .parse::<Algorithm>()
        .and_then(|a| KeySpec::new(a, bits))
        .map_err(|e| Error::InvalidArgument(InputError::from(e)))?;
    let policy = policy_from(Policy::default(), data)?;
    // The policy's hard rules are checked before the ring exists.
    policy.validate().map_err(Error::from)?;
    keys.create_ring(name, spec).await?;
    let mut warnings = Vec::new();
    if policy != Policy::default() {
        warnings = keys
            .update_policy(name, policy)
            .await?
            .iter()
            .map(ToString::to_string)
            .collect();
    }
    let Reply::Data(m, _) = ring(&keys.ring_info(name, "name")?);
    Ok(Reply::Data(m, warnings))
}

async fn rotate(keys: &KeyManager, name: &str, data: &Map<String, Value>) -> Answer {
    only(data, &["now", "reason"])?;
    let now = flag(data, "now")?;
    let reason = text(data, "reason")?.unwrap_or_default();
    if now && reason.trim().is_empty() {
        return Err(Refusal::bad(
            "reason",
            "is required for an immediate (emergency) rotation",
        ));
    }
    let (new, old) = keys.rotate(name, now, &reason, None).await?;
    Ok(data_of(json!({
        "new_key": key_json(&new),
        "previous_key": old.as_ref().map(key_json),
    })))
}

async fn revoke(keys: &KeyManager, name: &str, data: &Map<String, Value>) -> Answer {
    only(data, &["kid", "reason"])?;
    let reason = text(data, "reason")?.unwrap_or_default();
    if reason.trim().is_empty() {
        return Err(Refusal::bad("reason", "is required for a revocation"));
    }
    let kid = text(data, "kid")?.unwrap_or_default();
    if kid.is_empty() {
        return Err(Refusal::bad("kid", "is required"));
    }
    let key = keys.revoke(name, &kid, &reason).await?;
    Ok(data_of(json!({ "key": key_json(&key) })))
}

async fn set_policy(keys: &KeyManager, name: &str, data: &Map<String, Value>) -> Answer {
    only(data, &POLICY_FIELDS)?;
    let current = keys.ring_info(name, "name")?.policy;
    let policy = policy_from(current, data)?;
    let answer = policy_json(&policy);
    let warnings = keys.update_policy(name, policy).await?;
    let Reply::Data(m, _) = data_of(answer);
    Ok(Reply::Data(
        m,
        warnings.iter().map(ToString::to_string).collect(),
    ))
}

async fn sign(keys: &KeyManager, name: &str, data: &Map<String, Value>) -> Answer {
    only(data, &["claims", "ttl", "header"])?;
    let claims = object_bytes(data, "claims")?;
    if claims.is_empty() {
        return Err(Refusal::bad("claims", "is required: a JSON object"));
    }
    let header = object_bytes(data, "header")?;
    let ttl = duration(data, "ttl")?;
    let signed = keys
        .sign(SignParams {
            ring: name,
            claims_json: &claims,
            ttl,
            header_json: &header,
            grant: None,
        })
        .await?;
    Ok(data_of(json!({
        "jti": jti(&signed.token),
        "token": signed.token,
        "kid": signed.kid.as_str(),
        "alg": signed.alg.name(),
        "expires_at": signed.expires_at.as_secs(),
    })))
}

/// The `jti` of a token Signet just signed (it always sets one), so an
/// audit device told not to HMAC it can log which token a Sign made.
fn jti(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("jti")?.as_str().map(str::to_owned)
}

fn verify(keys: &KeyManager, name: &str, data: &Map<String, Value>) -> Answer {
    only(data, &["token"])?;
    let token = text(data, "token")?.unwrap_or_default();
    if token.is_empty() {
        return Err(Refusal::bad("token", "is required"));
    }
    Ok(data_of(match keys.verify(name, &token)? {
        Ok(v) => json!({ "valid": true, "kid": v.kid, "alg": v.alg, "claims": v.claims }),
        Err(r) => json!({
            "valid": false,
            "reason": r.failure.name(),
            "message": r.message,
            "kid": r.kid,
        }),
    }))
}

/// The raw JWKS, the way OpenBao's own `identity/oidc/.well-known/keys`
/// answers: OpenBao writes `http_raw_body` as the body, with this
/// content type, instead of its JSON envelope.
fn jwks(keys: &KeyManager, name: &str) -> Answer {
    use base64::Engine;
    let (set, _) = keys.jwks(name, "name")?;
    let body = serde_json::to_vec(&set).map_err(|_| Refusal {
        status: 500,
        message: "cannot encode the JWKS".into(),
    })?;
    Ok(data_of(json!({
        "http_content_type": "application/jwk-set+json",
        "http_raw_body": base64::engine::general_purpose::STANDARD.encode(body),
        "http_status_code": 200,
    })))
}

fn timeline(keys: &KeyManager, name: &str) -> Answer {
    let info = keys.ring_info(name, "name")?;
    let now = keys.now();
    let ring = keys.ring(name, "name")?;
    let horizon = crate::clock::UnixTime::from_secs(
        now.as_secs()
            .saturating_add(i64::try_from(info.policy.rotation_period.as_secs() * 3).unwrap_or(0)),
    );
    let projected = ring
        .active_at(now)
        .map(|k| project(k.timeline, &info.policy, horizon))
        .unwrap_or_default();
    Ok(data_of(json!({
        "now": now.as_secs(),
        "keys": info.keys.iter().map(key_json).collect::<Vec<_>>(),
        "projected": projected,
        "next_change": ring.next_change(now).map(|t| t.as_secs()),
    })))
}

/// One scheduler pass, logged: what OpenBao's periodic `rollback` call
/// (and the plugin's start) runs.
pub async fn scheduled(keys: &KeyManager) -> TickReport {
    let report = keys.tick().await;
    for (ring, kid) in &report.generated {
        tracing::info!(%ring, %kid, "scheduled successor generated");
    }
    for (ring, kid) in &report.destroyed {
        tracing::info!(%ring, %kid, "removed key's material destroyed");
    }
    for (ring, error) in &report.failed {
        tracing::warn!(%ring, error, "scheduler could not process ring");
    }
    report
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{ManualClock, UnixTime};

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// The rollback pass rotates a ring that is due, on the policy given
    /// at creation: a successor `publish_lead` before the active key
    /// retires, without a request.
    #[tokio::test]
    async fn the_rollback_pass_generates_a_due_successor() {
        let clock = Arc::new(ManualClock::new(UnixTime::from_secs(1_800_000_000)));
        let keys = KeyManager::ephemeral(clock.clone()).await.unwrap();
        let data =
            fields(json!({ "alg": "EdDSA", "rotation_period": "30d", "publish_lead": "2d" }));
        handle(&keys, "update", "rings/auto", &data).await.unwrap();
        assert!(
            scheduled(&keys).await.generated.is_empty(),
            "nothing due yet"
        );
        clock.advance(Duration::from_secs(29 * 86_400));
        let report = scheduled(&keys).await;
        assert_eq!(report.generated.len(), 1, "{report:?}");
        let Reply::Data(ring, _) = handle(&keys, "read", "rings/auto", &Map::new())
            .await
            .unwrap();
        let states: Vec<&str> = ring["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["active", "published"]);
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_wrong_operations_405() {
        let keys = KeyManager::ephemeral(Arc::new(crate::clock::SystemClock))
            .await
            .unwrap();
        let none = Map::new();
        for (op, path, status) in [
            ("read", "nothing", 404),
            ("read", "sign/x/y", 404),
            ("delete", "sign/x", 405),
            ("read", "sign/x", 405),
            ("update", "jwks/x", 405),
            ("list", "rings/x/rotate", 405),
        ] {
            let err = handle(&keys, op, path, &none).await.unwrap_err();
            assert_eq!(err.status, status, "{op} {path}: {err:?}");
        }
    }
}
