//! The Sign path: strict input parsing, service-set claims, JWS assembly.

use std::{borrow::Cow, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use serde_json::Value;

use super::KeyManager;
use crate::{
    Error,
    clock::UnixTime,
    crypto::{
        Algorithm, Kid,
        claims::{self, InputError, Limits},
        jws::{self, ExtraHeader},
        random_bytes,
    },
};

/// What a caller asks to have signed.
#[derive(Clone, Copy, Debug)]
pub struct SignParams<'a> {
    /// Ring name.
    pub ring: &'a str,
    /// The claims, as received: checked strictly here.
    pub claims_json: &'a [u8],
    /// Requested lifetime; `None` for the ring's default.
    pub ttl: Option<Duration>,
    /// Extra header members (`typ`, `cty`); empty for none.
    pub header_json: &'a [u8],
    /// The caller's claim rules (`None`: it may sign any claims).
    pub grant: Option<&'a crate::authz::SignGrant>,
}

/// A signed token and what a caller needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The token, JWS compact serialization.
    pub token: String,
    /// The kid in its header.
    pub kid: Kid,
    /// The alg in its header.
    pub alg: Algorithm,
    /// Its `exp` claim.
    pub expires_at: UnixTime,
}

impl KeyManager {
    /// Signs a token with the ring's Active key.
    ///
    /// Every input is checked before any key is touched; `iat` and `exp` are
    /// set from the service clock, and a random `jti` is added when the
    /// caller gave none, so every token can be told apart in audit records.
    pub async fn sign(&self, p: SignParams<'_>) -> Result<Signed, Error> {
        let ring = self.ring(p.ring, "key_ring")?;
        self.check_fresh()?;
        if let Some(refusal) = &ring.refused {
            return Err(Error::RingRefused {
                ring: ring.name().clone(),
                reason: refusal.to_string(),
            });
        }
        let policy = &ring.record().policy;
        let mut ttl = match p.ttl {
            None => policy.default_token_ttl,
            Some(t) if t < Duration::from_secs(1) => {
                return Err(InputError::new("ttl", "must be at least 1 second").into());
            }
            Some(t) if t > policy.max_token_ttl => {
                return Err(InputError::new(
                    "ttl",
                    format!(
                        "{} exceeds the ring's max_token_ttl of {}",
                        humantime::format_duration(t),
                        humantime::format_duration(policy.max_token_ttl)
                    ),
                )
                .into());
            }
            Some(t) => t,
        };
        let mut claims = claims::parse_object(p.claims_json, Limits::CLAIMS, "claims_json")?;
        claims::check_registered(&claims)?;
        let extra = ExtraHeader::parse(p.header_json)?;
        // A ring with an issuer names it in every token; a caller's own
        // `iss` is refused rather than silently replaced, so a caller that
        // meant another issuer learns it at once.
        if let Some(issuer) = &policy.issuer
            && claims.contains_key("iss")
        {
            return Err(InputError::new(
                "claims_json.iss",
                format!(
                    "must not be given: ring {} sets iss to its issuer {issuer}",
                    ring.name()
                ),
            )
            .into());
        }
        if let Some(grant) = p.grant {
            let typ = extra.typ.as_deref().unwrap_or("JWT");
            let accepted = grant
                .check(&claims, p.ttl, policy.default_token_ttl, typ)
                .map_err(Error::ClaimRule)?;
            match (accepted.iss, &policy.issuer) {
                // The caller's rule allows one issuer and the ring sets
                // another: the token would carry an iss the rule forbids.
                (Some(allowed), Some(issuer)) if allowed != issuer.as_str() => {
                    return Err(Error::ClaimRule(crate::authz::Violation {
                        field: "claims_json.iss".into(),
                        rule: accepted.rule,
                        message: format!(
                            "claims_json.iss: ring {} sets iss {:?}, which is not allowed \
                             for {} (rule {}: {allowed:?} only)",
                            ring.name(),
                            issuer.as_str(),
                            grant.identity,
                            accepted.rule
                        ),
                    }));
                }
                (Some(iss), None) => {
                    claims.insert("iss".into(), Value::from(iss));
                }
                _ => {}
            }
            if let Some(capped) = accepted.ttl {
                ttl = capped;
            }
        }
        if let Some(issuer) = &policy.issuer {
            claims.insert("iss".into(), Value::from(issuer.as_str()));
        }

        let now = self.now();
        let exp = now.saturating_add(ttl);
        if let Some(nbf) = claims::not_before(&claims)
            && nbf >= exp.as_secs()
        {
            return Err(InputError::new(
                "claims_json.nbf",
                format!(
                    "{nbf} is not before the token's exp {}; the token would never be valid",
                    exp.as_secs()
                ),
            )
            .into());
        }
        let active = ring
            .active_at(now)
            .ok_or_else(|| Error::NoActiveKey(ring.name().clone()))?;
        let loaded = match ring.loaded(&active.kid) {
            Some(loaded) => loaded.clone(),
            None if ring.is_broken(&active.kid) => {
                return Err(Error::DataLoss {
                    ring: ring.name().clone(),
                    kid: active.kid.clone(),
                });
            }
            None if self.is_sealed() => return Err(Error::Sealed),
            None => {
                return Err(Error::KeyUnavailable {
                    ring: ring.name().clone(),
                    kid: active.kid.clone(),
                });
            }
        };

        claims.insert("iat".into(), Value::from(now.as_secs()));
        claims.insert("exp".into(), Value::from(exp.as_secs()));
        if !claims.contains_key("jti") {
            claims.insert("jti".into(), Value::from(B64.encode(random_bytes::<16>()?)));
        }
        // Serializing a map of JSON values cannot fail.
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let alg = loaded.key.alg();
        let kid = active.kid.clone();

        let token = if alg.is_cpu_heavy() {
            let header = if extra.is_default() {
                None
            } else {
                Some(jws::encode_header(alg, kid.as_str(), &extra))
            };
            let key = loaded.clone();
            self.on_pool(move || {
                let header = header.as_deref().unwrap_or(&key.header_b64);
                jws::sign_compact(header, &payload, &key.key)
            })
            .await??
        } else {
            let header = if extra.is_default() {
                Cow::Borrowed(loaded.header_b64.as_str())
            } else {
                Cow::Owned(jws::encode_header(alg, kid.as_str(), &extra))
            };
            jws::sign_compact(&header, &payload, &loaded.key)?
        };
        Ok(Signed {
            token,
            kid,
            alg,
            expires_at: exp,
        })
    }
}
