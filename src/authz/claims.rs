//! Claim rules: what a `sign` grant lets its holder put in a token.
//!
//! A rule that grants `sign` may carry a `[rule.sign]` table:
//!
//! ```toml
//! [rule.sign]
//! iss = "https://orders.example.org"   # the only issuer; set when the caller omits it
//! aud = ["orders-api", "inventory"]    # every audience must be one of these
//! aud_required = true                  # a token without `aud` is refused
//! sub = "order-*"                      # glob over `sub`; `sub` then required
//! claims = ["scope", "order_id"]       # the only other claims a caller may send
//! max_ttl = "10m"                      # at most the ring's max_token_ttl
//! typ = ["JWT", "at+jwt"]              # allowed header `typ` values
//! ```
//!
//! Every constraint is optional. When several rules grant `sign` on a ring to
//! the same caller, the first (in file order) whose constraints accept the
//! request decides; a rule without `[rule.sign]` accepts anything. When none
//! accepts, the request is refused with the first rule's violation, which
//! names the claim and the rule and, for the caller, the value; the audit
//! record gets the claim name and the rule, never the value.

use std::{sync::Arc, time::Duration};

use serde_json::{Map, Value};

use super::Glob;

/// The constraints of one rule's `[rule.sign]` table.
#[derive(Debug, Clone, Default)]
pub struct ClaimRule {
    /// The only `iss`; set when the caller gives none.
    pub iss: Option<String>,
    /// Allowed audiences.
    pub aud: Option<Vec<String>>,
    /// Whether a token must have an audience.
    pub aud_required: bool,
    /// Glob over `sub` (then `sub` is required).
    pub sub: Option<String>,
    sub_glob: Option<Glob>,
    /// Claim names a caller may send besides those constrained above.
    pub claims: Option<Vec<String>>,
    /// Longest token lifetime.
    pub max_ttl: Option<Duration>,
    /// Allowed header `typ` values.
    pub typ: Option<Vec<String>>,
}

/// Claims the service sets itself, or that only their own constraint
/// governs: never refused by the `claims` allow-list.
const ALWAYS_ALLOWED: [&str; 4] = ["iat", "exp", "nbf", "jti"];

/// The fields a `[rule.sign]` table may hold.
pub(super) const FIELDS: [&str; 7] = [
    "iss",
    "aud",
    "aud_required",
    "sub",
    "claims",
    "max_ttl",
    "typ",
];

/// Longest `max_ttl` a rule may name: a policy duration is bounded by ten
/// years everywhere.
const MAX_TTL_BOUND: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl ClaimRule {
    /// Parses a `[rule.sign]` table; errors are `(field, message)` with the
    /// field relative to the table (`aud[1]`).
    pub(super) fn parse(table: &toml::Table) -> Result<Self, (String, String)> {
        if let Some(key) = table.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err((
                key.clone(),
                format!("unknown field; expected one of {}", FIELDS.join(", ")),
            ));
        }
        let string = |name: &str| -> Result<Option<String>, (String, String)> {
            match table.get(name) {
                None => Ok(None),
                Some(toml::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(_) => Err((name.to_owned(), "must be a non-empty string".to_owned())),
            }
        };
        let list = |name: &str| -> Result<Option<Vec<String>>, (String, String)> {
            let Some(v) = table.get(name) else {
                return Ok(None);
            };
            let items = v
                .as_array()
                .ok_or_else(|| (name.to_owned(), "must be a list of strings".to_owned()))?;
            if items.is_empty() {
                return Err((
                    name.to_owned(),
                    "is empty: it would allow nothing; remove it to allow anything".to_owned(),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item.as_str() {
                    Some(s) if !s.is_empty() => Ok(s.to_owned()),
                    _ => Err((
                        format!("{name}[{i}]"),
                        "must be a non-empty string".to_owned(),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        };
        let aud_required = match table.get("aud_required") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(_) => return Err(("aud_required".into(), "must be true or false".into())),
        };
        let max_ttl = match table.get("max_ttl") {
            None => None,
            Some(toml::Value::String(s)) => Some(
                humantime::parse_duration(s)
                    .map_err(|e| ("max_ttl".to_owned(), format!("{s:?}: {e} (e.g. \"10m\")")))?,
            ),
            Some(toml::Value::Integer(n)) => {
                Some(Duration::from_secs(u64::try_from(*n).map_err(|_| {
                    ("max_ttl".to_owned(), "must be positive".to_owned())
                })?))
            }
            Some(_) => {
                return Err((
                    "max_ttl".into(),
                    "must be a duration such as \"10m\" or a number of seconds".into(),
                ));
            }
        };
        if let Some(t) = max_ttl
            && (t < Duration::from_secs(1) || t > MAX_TTL_BOUND)
        {
            return Err((
                "max_ttl".into(),
                "must be between 1 second and 10 years".into(),
            ));
        }
        let aud = list("aud")?;
        if aud_required && aud.is_none() {
            return Err((
                "aud_required".into(),
                "needs aud, the list of allowed audiences".into(),
            ));
        }
        let sub = string("sub")?;
        Ok(Self {
            iss: string("iss")?,
            aud,
            aud_required,
            sub_glob: sub.as_deref().map(Glob::new),
            sub,
            claims: list("claims")?,
            max_ttl,
            typ: list("typ")?,
        })
    }

    /// Checks one request against this rule. `ttl` is the lifetime the
    /// token will get; `typ` its header `typ`. On success returns whether
    /// `iss` must be added.
    fn check(
        &self,
        claims: &Map<String, Value>,
        ttl: Duration,
        typ: &str,
    ) -> Result<bool, (String, Option<String>)> {
        let shown = |v: &Value| match v {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        if let Some(names) = &self.claims
            && let Some(name) = claims.keys().find(|k| {
                let governed = match k.as_str() {
                    "iss" => self.iss.is_some(),
                    "aud" => self.aud.is_some(),
                    "sub" => self.sub.is_some(),
                    other => ALWAYS_ALLOWED.contains(&other),
                };
                !(governed || names.iter().any(|n| n == *k))
            })
        {
            return Err((format!("claims_json.{name}"), None));
        }
        let mut add_iss = false;
        if let Some(iss) = &self.iss {
            match claims.get("iss") {
                None => add_iss = true,
                Some(Value::String(s)) if s == iss => {}
                Some(v) => return Err(("claims_json.iss".into(), Some(shown(v)))),
            }
        }
        if let Some(allowed) = &self.aud {
            match claims.get("aud") {
                None if self.aud_required => return Err(("claims_json.aud".into(), None)),
                None => {}
                Some(Value::String(s)) if allowed.contains(s) => {}
                Some(Value::Array(items)) => {
                    if let Some(bad) = items
                        .iter()
                        .find(|a| !a.as_str().is_some_and(|a| allowed.iter().any(|x| x == a)))
                    {
                        return Err(("claims_json.aud".into(), Some(shown(bad))));
                    }
                }
                Some(v) => return Err(("claims_json.aud".into(), Some(shown(v)))),
            }
        }
        if let Some(glob) = &self.sub_glob {
            match claims.get("sub") {
                Some(Value::String(s)) if glob.matches(s) => {}
                Some(v) => return Err(("claims_json.sub".into(), Some(shown(v)))),
                None => return Err(("claims_json.sub".into(), None)),
            }
        }
        if let Some(max) = self.max_ttl
            && ttl > max
        {
            return Err((
                "ttl".into(),
                Some(format!(
                    "{} (longer than {})",
                    humantime::format_duration(ttl),
                    humantime::format_duration(max)
                )),
            ));
        }
        if let Some(allowed) = &self.typ
            && !allowed.iter().any(|t| t == typ)
        {
            return Err(("header_json.typ".into(), Some(format!("{typ:?}"))));
        }
        Ok(add_iss)
    }
}

/// The `sign` grants that apply to one caller on one ring, in policy order,
/// handed from the access check to the Sign path.
#[derive(Debug, Clone)]
pub struct SignGrant {
    /// The caller, as shown in refusals.
    pub identity: String,
    /// `(rule index, its constraints)`, every one constrained: a caller that
    /// also holds an unconstrained grant gets no `SignGrant` at all.
    pub rules: Vec<(usize, Arc<ClaimRule>)>,
}

/// A request no applicable rule accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Violation {
    /// The field refused (`claims_json.aud`, `ttl`, `header_json.typ`):
    /// what the audit record names, never the value.
    pub field: String,
    /// The rule that refused it (the first applicable one).
    pub rule: usize,
    /// For the caller: field, value, identity and rule.
    pub message: String,
}

/// What the first accepting rule decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The rule.
    pub rule: usize,
    /// An `iss` to add (the caller gave none).
    pub iss: Option<String>,
    /// A shorter lifetime to use than the ring's default, when the caller
    /// gave none and the rule's `max_ttl` is below that default.
    pub ttl: Option<Duration>,
}

impl SignGrant {
    /// Checks a Sign request: `ttl` is the caller's (`None`: the ring
    /// default `default_ttl` applies), `typ` the token's header `typ`.
    pub fn check(
        &self,
        claims: &Map<String, Value>,
        ttl: Option<Duration>,
        default_ttl: Duration,
        typ: &str,
    ) -> Result<Accepted, Violation> {
        let mut first = None;
        for (index, rule) in &self.rules {
            // A caller that names no ttl gets the ring's default, capped by
            // the rule: the rule limits what is signed, not what is asked.
            let (effective, capped) = match (ttl, rule.max_ttl) {
                (None, Some(max)) if default_ttl > max => (max, Some(max)),
                (None, _) => (default_ttl, None),
                (Some(t), _) => (t, None),
            };
            match rule.check(claims, effective, typ) {
                Ok(add_iss) => {
                    return Ok(Accepted {
                        rule: *index,
                        iss: rule.iss.clone().filter(|_| add_iss),
                        ttl: capped,
                    });
                }
                Err(e) => {
                    first.get_or_insert((*index, e));
                }
            }
        }
        let (rule, (field, value)) = first.unwrap_or((0, ("claims_json".into(), None)));
        let message = match value {
            Some(v) => format!(
                "{field}: {v} is not allowed for {} (rule {rule})",
                self.identity
            ),
            None if field == "claims_json.aud" || field == "claims_json.sub" => {
                format!("{field}: is required for {} (rule {rule})", self.identity)
            }
            None => format!(
                "{field}: this claim is not allowed for {} (rule {rule})",
                self.identity
            ),
        };
        Err(Violation {
            field,
            rule,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Arc<ClaimRule> {
        Arc::new(ClaimRule::parse(&toml::from_str(text).unwrap()).unwrap())
    }

    fn claims(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    const ID: &str = "uri:spiffe://example.org/ns/orders/sa/api";
    const HOUR: Duration = Duration::from_secs(3600);

    fn grant(text: &str) -> SignGrant {
        SignGrant {
            identity: ID.into(),
            rules: vec![(3, rule(text))],
        }
    }

    #[test]
    fn each_constraint_allows_and_refuses_with_an_exact_message() {
        let g = grant(
            r#"iss = "https://orders"
               aud = ["orders-api", "inventory"]
               aud_required = true
               sub = "order-*"
               claims = ["scope"]
               max_ttl = "10m"
               typ = ["JWT", "at+jwt"]"#,
        );
        let ten_min = Some(Duration::from_secs(600));
        let ok = g
            .check(
                &claims(r#"{"aud":["orders-api","inventory"],"sub":"order-1","scope":"r"}"#),
                ten_min,
                HOUR,
                "JWT",
            )
            .unwrap();
        assert_eq!(ok.iss.as_deref(), Some("https://orders"), "iss is set");
        assert_eq!(ok.rule, 3);
        let cases: [(&str, Option<Duration>, &str, &str, &str); 9] = [
            (
                r#"{"aud":"payments-admin","sub":"order-1"}"#,
                ten_min,
                "JWT",
                "claims_json.aud",
                "claims_json.aud: \"payments-admin\" is not allowed for uri:spiffe://example.org/ns/orders/sa/api (rule 3)",
            ),
            (
                r#"{"aud":["orders-api","x"],"sub":"order-1"}"#,
                ten_min,
                "JWT",
                "claims_json.aud",
                "claims_json.aud: \"x\" is not allowed for uri:spiffe://example.org/ns/orders/sa/api (rule 3)",
            ),
            (
                r#"{"sub":"order-1"}"#,
                ten_min,
                "JWT",
                "claims_json.aud",
                "claims_json.aud: is required for uri:spiffe://example.org/ns/orders/sa/api (rule 3)",
            ),
            (
                r#"{"aud":"orders-api","sub":"admin"}"#,
                ten_min,
                "JWT",
                "claims_json.sub",
                "claims_json.sub: \"admin\" is not allowed for uri:spiffe://example.org/ns/orders/sa/api (rule 3)",
            ),
            (
                r#"{"aud":"orders-api"}"#,
                ten_min,
                "JWT",
                "claims_json.sub",
                "claims_json.sub: is required for uri:spiffe://example.org/ns/orders/sa/api (rule 3)",
            ),
            (
                r#"{"aud":"orders-api","sub":"order-1","iss":"https://evil"}"#,
                ten_min,
                "JWT",
                "claims_json.iss",
                "claims_json.iss: \"https://evil\" is not allowed for uri:spiffe://example.org/ns/orders/sa/api (rule 3)",
            ),
            (
                r#"{"aud":"orders-api","sub":"order-1","admin":true}"#,
                ten_min,
                "JWT",
                "claims_json.admin",
                "claims_json.admin: this claim is not allowed for uri:spiffe://example.org/ns/orders/sa/api (rule 3)",
            ),
            (
                r#"{"aud":"orders-api","sub":"order-1"}"#,
                Some(HOUR),
                "JWT",
                "ttl",
                "ttl: 1h (longer than 10m) is not allowed for uri:spiffe://example.org/ns/orders/sa/api (rule 3)",
            ),
            (
                r#"{"aud":"orders-api","sub":"order-1"}"#,
                ten_min,
                "secevent+jwt",
                "header_json.typ",
                "header_json.typ: \"secevent+jwt\" is not allowed for uri:spiffe://example.org/ns/orders/sa/api (rule 3)",
            ),
        ];
        for (json, ttl, typ, field, message) in cases {
            let v = g.check(&claims(json), ttl, HOUR, typ).unwrap_err();
            assert_eq!(v.field, field, "{json}");
            assert_eq!(v.message, message, "{json}");
            assert_eq!(v.rule, 3);
        }
    }

    #[test]
    fn optional_aud_and_default_ttl_capped_by_the_rule() {
        let g = grant(
            r#"aud = ["a"]
                         max_ttl = 300"#,
        );
        let ok = g.check(&claims("{}"), None, HOUR, "JWT").unwrap();
        assert_eq!(ok.ttl, Some(Duration::from_secs(300)));
        assert_eq!(ok.iss, None);
        // A caller's own iss is fine when the rule names none.
        g.check(&claims(r#"{"iss":"me","x":1}"#), None, HOUR, "JWT")
            .unwrap();
    }

    #[test]
    fn the_first_accepting_rule_decides() {
        let g = SignGrant {
            identity: ID.into(),
            rules: vec![(1, rule(r#"aud = ["a"]"#)), (4, rule(r#"aud = ["b"]"#))],
        };
        let ok = g
            .check(&claims(r#"{"aud":"b"}"#), None, HOUR, "JWT")
            .unwrap();
        assert_eq!(ok.rule, 4);
        let v = g
            .check(&claims(r#"{"aud":"c"}"#), None, HOUR, "JWT")
            .unwrap_err();
        assert_eq!(v.rule, 1, "the first rule's violation is reported");
    }

    #[test]
    fn bad_tables_are_refused_with_the_field() {
        let cases = [
            ("colour = 1", "colour", "unknown field"),
            ("aud = []", "aud", "is empty"),
            ("aud = [1]", "aud[0]", "non-empty string"),
            ("aud_required = true", "aud_required", "needs aud"),
            ("max_ttl = \"forever\"", "max_ttl", "forever"),
            ("max_ttl = 0", "max_ttl", "between 1 second and 10 years"),
            (
                "max_ttl = 9223372036854775807",
                "max_ttl",
                "between 1 second and 10 years",
            ),
            ("iss = 3", "iss", "non-empty string"),
        ];
        for (text, field, needle) in cases {
            let (f, m) = ClaimRule::parse(&toml::from_str(text).unwrap()).unwrap_err();
            assert_eq!(f, field, "{text}");
            assert!(m.contains(needle), "{text}: {m}");
        }
    }
}
