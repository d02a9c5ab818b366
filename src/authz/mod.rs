//! Access control: the grants policy, Vault-style.
//!
//! A policy file (TOML) is a list of `[[rule]]` tables. Each rule grants a
//! set of [`Action`]s to callers whose identity matches a pattern, on the
//! rings whose names match one of its ring patterns:
//!
//! ```toml
//! [[rule]]
//! identity = "uri:spiffe://example.org/ns/payments/*"
//! actions = ["sign", "read"]
//! rings = ["payments-*", "default"]
//! description = "payments issuers"   # optional
//! ```
//!
//! Semantics, all of which [`Authz::check`] implements:
//!
//! - **Deny by default.** A request is allowed only if some rule matches its
//!   identity, grants its action and matches its ring. A policy with no rules
//!   denies everything.
//! - **Typed identities.** An identity pattern names its kind:
//!   `uri:spiffe://example.org/ns/*`, `dns:issuer.internal`, `cn:legacy`,
//!   `unix:uid:1001`, `unix:user:tokens` (see [`identity`]). A pattern
//!   without a kind is refused at load, with the typed form suggested.
//!   After the kind, `*` matches any run of characters, `/` and `.`
//!   included. There is no other wildcard: `?` is a literal character.
//!   Matching is byte-for-byte and case-sensitive. A caller may hold several
//!   names (a certificate's URI and DNS SANs; a uid and its user name); a
//!   rule applies when its pattern matches any of them.
//! - **`admin`** grants every action, on the rings the rule lists.
//! - **Service-wide actions** (`seal`, and anything the RPC layer checks
//!   against the whole service) are checked with the ring `"*"`. A literal
//!   `"*"` ring means "the service", and only a rule whose ring list contains
//!   the pattern `"*"` grants on it: a rule that lists specific rings
//!   (`payments-*`, `default`) never grants a service-wide action.
//! - **First match wins.** The first allowing rule in file order is the one
//!   reported; the decision itself does not depend on order.
//!
//! - **Claim rules.** A rule granting `sign` may constrain the claims its
//!   holder signs (`[rule.sign]`, see [`claims`]).

mod action;
pub mod claims;
pub mod identity;
mod shared;

use std::path::{Path, PathBuf};

use serde::{Deserialize, de::DeserializeOwned};

use crate::keyring::RingName;

pub use action::{Action, UnknownAction};
pub use claims::{ClaimRule, SignGrant, Violation};
pub use identity::{Identity, IdentityKind};
pub use shared::SharedAuthz;

/// The ring that stands for the whole service in [`Authz::check`].
pub const SERVICE_WIDE: &str = "*";

/// Glob with `*` as the only wildcard. The single-character wildcard is set
/// to NUL, which validation refuses in every pattern, so `?` stays literal.
type Glob = wildmatch::WildMatchPattern<'*', '\0'>;

/// Why a policy was refused. Every message says where: the file (or
/// `policy` for text given directly) and, for a bad rule, its index and
/// field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthzError {
    /// The policy file could not be read.
    #[error("cannot read policy file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not TOML, or its top level holds something other than
    /// `[[rule]]` tables.
    #[error("{origin}: {message}")]
    Syntax {
        /// The file, or `policy`.
        origin: String,
        /// What the TOML parser said, with line and column.
        message: String,
    },
    /// A rule is invalid: an unknown or missing field, a wrong type, an
    /// unknown action, an empty list or a malformed pattern.
    #[error("{origin}: rule[{index}].{field}: {message}")]
    Rule {
        /// The file, or `policy`.
        origin: String,
        /// Index of the rule in file order, from 0.
        index: usize,
        /// The field, with an element index for lists (`actions[2]`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A validated rule.
#[derive(Debug, Clone)]
struct Rule {
    identity: String,
    identity_glob: Glob,
    actions: Vec<Action>,
    rings: Vec<String>,
    ring_globs: Vec<Glob>,
    description: Option<String>,
    /// `[rule.sign]`: what a `sign` grant lets its holder sign.
    sign: Option<std::sync::Arc<ClaimRule>>,
}

impl Rule {
    fn matches_identity(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.identity_glob.matches(n))
    }

    fn grants(&self, action: Action) -> bool {
        self.actions.iter().any(|a| a.grants(action))
    }

    fn matches_ring(&self, ring: &str) -> bool {
        if ring == SERVICE_WIDE {
            // Explicit rather than left to the glob: only the pattern "*"
            // itself stands for the whole service.
            self.rings.iter().any(|r| r == SERVICE_WIDE)
        } else {
            self.ring_globs.iter().any(|g| g.matches(ring))
        }
    }

    /// `rule 0 (payments issuers): identity "...", actions [sign, read],
    /// rings ["payments-*"]`
    fn describe(&self, index: usize) -> String {
        let actions: Vec<&str> = self.actions.iter().map(|a| a.name()).collect();
        let description = match &self.description {
            Some(d) => format!(" ({d})"),
            None => String::new(),
        };
        format!(
            "rule {index}{description}: identity {:?}, actions [{}], rings {:?}",
            self.identity,
            actions.join(", "),
            self.rings
        )
    }
}

/// The outcome of [`Authz::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Index of the first rule (file order) that allows it; `None` when
    /// denied.
    pub rule: Option<usize>,
    /// One line for logs and operators: which rule allowed, or why none did.
    pub explanation: String,
}

impl Decision {
    fn deny(explanation: String) -> Self {
        Self {
            allowed: false,
            rule: None,
            explanation,
        }
    }
}

/// A caller's names, for the checks: one typed identity, or every name the
/// transport established.
pub trait Names {
    /// The names, the one audit records first.
    fn names(&self) -> Vec<&str>;
}

impl Names for str {
    fn names(&self) -> Vec<&str> {
        vec![self]
    }
}

impl Names for String {
    fn names(&self) -> Vec<&str> {
        vec![self.as_str()]
    }
}

impl Names for [String] {
    fn names(&self) -> Vec<&str> {
        self.iter().map(String::as_str).collect()
    }
}

/// The file's top level: only `[[rule]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rule: Vec<toml::Table>,
}

/// The fields a `[[rule]]` table may hold.
const RULE_FIELDS: [&str; 5] = ["identity", "actions", "rings", "description", "sign"];

/// A validated, immutable grants policy.
#[derive(Debug, Clone)]
pub struct Authz {
    rules: Vec<Rule>,
}

impl Authz {
    /// Parses and validates a policy; errors name the rule and field.
    pub fn from_toml(text: &str) -> Result<Authz, AuthzError> {
        Self::parse(text, "policy")
    }

    /// Reads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Authz, AuthzError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthzError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rules (and so denies everything).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides whether `identity` may perform `action` on `ring`; pass
    /// [`SERVICE_WIDE`] (`"*"`) as the ring for service-wide actions such as
    /// `seal`. Denies anything no rule allows, and any `ring` that is neither
    /// a valid ring name nor `"*"`.
    pub fn check(&self, identity: &(impl Names + ?Sized), action: Action, ring: &str) -> Decision {
        let names = identity.names();
        let identity = names.first().copied().unwrap_or_default();
        if ring != SERVICE_WIDE && RingName::parse(ring, "ring").is_err() {
            return Decision::deny(format!(
                "denied: {ring:?} is neither a ring name nor \"*\" (the whole service)"
            ));
        }
        let mut identity_matches = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.matches_identity(&names) {
                continue;
            }
            if rule.grants(action) && rule.matches_ring(ring) {
                return Decision {
                    allowed: true,
                    rule: Some(index),
                    explanation: format!("allowed by {}", rule.describe(index)),
                };
            }
            // Say what this rule lacks: the action, or the ring.
            identity_matches.push(if !rule.grants(action) {
                format!("rule {index} lacks the action '{action}'")
            } else if ring == SERVICE_WIDE {
                format!(
                    "rule {index} grants it on rings {:?} only, and service-wide actions need rings = [\"*\"]",
                    rule.rings
                )
            } else {
                format!("rule {index} grants it on rings {:?} only", rule.rings)
            });
        }
        if self.rules.is_empty() {
            return Decision::deny("denied: the policy has no rules".to_owned());
        }
        if identity_matches.is_empty() {
            return Decision::deny(format!("denied: no rule matches identity {identity:?}"));
        }
        let target = if ring == SERVICE_WIDE {
            "the whole service (ring '*')".to_owned()
        } else {
            format!("ring '{ring}'")
        };
        Decision::deny(format!(
            "denied: no rule grants '{action}' on {target} to identity {identity:?}: {}",
            identity_matches.join("; ")
        ))
    }

    /// The claim rules that apply when `identity` signs on `ring`: `None`
    /// when some rule grants `sign` there without constraints (the caller
    /// may sign anything), else every constrained rule that grants it, in
    /// file order. Call after [`Authz::check`] allowed the request.
    pub fn sign_grant(&self, identity: &(impl Names + ?Sized), ring: &str) -> Option<SignGrant> {
        let names = identity.names();
        let mut rules = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if !(rule.matches_identity(&names)
                && rule.grants(Action::Sign)
                && rule.matches_ring(ring))
            {
                continue;
            }
            match &rule.sign {
                None => return None,
                Some(c) => rules.push((index, c.clone())),
            }
        }
        if rules.is_empty() {
            return None;
        }
        Some(SignGrant {
            identity: names.first().copied().unwrap_or_default().to_owned(),
            rules,
        })
    }

    fn parse(text: &str, origin: &str) -> Result<Authz, AuthzError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| AuthzError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let rules = file
            .rule
            .iter()
            .enumerate()
            .map(|(index, table)| parse_rule(table, index, origin))
            .collect::<Result<_, _>>()?;
        Ok(Authz { rules })
    }
}

fn parse_rule(table: &toml::Table, index: usize, origin: &str) -> Result<Rule, AuthzError> {
    let err = |field: &str, message: String| AuthzError::Rule {
        origin: origin.to_owned(),
        index,
        field: field.to_owned(),
        message,
    };
    if let Some(key) = table.keys().find(|k| !RULE_FIELDS.contains(&k.as_str())) {
        return Err(err(
            key,
            format!("unknown field; expected one of {}", RULE_FIELDS.join(", ")),
        ));
    }
    let field = |name: &str| -> Result<toml::Value, AuthzError> {
        table
            .get(name)
            .cloned()
            .ok_or_else(|| err(name, "is missing".to_owned()))
    };

    let identity: String = typed(field("identity")?, "a string").map_err(|m| err("identity", m))?;
    if identity.is_empty() {
        return Err(err("identity", "is empty".to_owned()));
    }
    if let Some(c) = identity.chars().find(|c| c.is_control()) {
        return Err(err(
            "identity",
            format!("contains the control character {c:?}"),
        ));
    }
    identity::check_pattern(&identity).map_err(|m| err("identity", m))?;

    let names: Vec<String> =
        typed(field("actions")?, "a list of strings").map_err(|m| err("actions", m))?;
    if names.is_empty() {
        return Err(err(
            "actions",
            "is empty; a rule must grant at least one action".to_owned(),
        ));
    }
    let actions = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            n.parse::<Action>()
                .map_err(|e| err(&format!("actions[{i}]"), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let rings: Vec<String> =
        typed(field("rings")?, "a list of strings").map_err(|m| err("rings", m))?;
    if rings.is_empty() {
        return Err(err(
            "rings",
            "is empty; list ring patterns, or \"*\" for every ring and the whole service"
                .to_owned(),
        ));
    }
    for (i, r) in rings.iter().enumerate() {
        let valid = |b: u8| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'*' | b'-')
        };
        if r.is_empty() || !r.bytes().all(valid) {
            return Err(err(
                &format!("rings[{i}]"),
                format!("{r:?} is not a ring pattern: use a-z, 0-9, '.', '_', '-' and '*'"),
            ));
        }
    }

    let description = match table.get("description") {
        Some(v) => Some(typed(v.clone(), "a string").map_err(|m| err("description", m))?),
        None => None,
    };

    let sign = match table.get("sign") {
        None => None,
        Some(toml::Value::Table(t)) => {
            if !actions.iter().any(|a| a.grants(Action::Sign)) {
                return Err(err(
                    "sign",
                    "constrains signing, but the rule does not grant sign".to_owned(),
                ));
            }
            Some(std::sync::Arc::new(ClaimRule::parse(t).map_err(
                |(field, message)| err(&format!("sign.{field}"), message),
            )?))
        }
        Some(_) => {
            return Err(err(
                "sign",
                "must be a table ([rule.sign]) of claim rules".to_owned(),
            ));
        }
    };

    Ok(Rule {
        identity_glob: Glob::new(&identity),
        identity,
        actions,
        ring_globs: rings.iter().map(|r| Glob::new(r)).collect(),
        rings,
        description,
        sign,
    })
}

/// Deserializes one field's value; the message says what was expected and
/// what was found, the caller adds the rule and field.
fn typed<T: DeserializeOwned>(value: toml::Value, expected: &str) -> Result<T, String> {
    T::deserialize(value).map_err(|e| format!("must be {expected}: {}", e.message().trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
        [[rule]]
        identity = "uri:spiffe://example.org/ns/payments/*"
        actions = ["sign", "read"]
        rings = ["payments-*", "default"]
        description = "payments issuers"

        [[rule]]
        identity = "dns:gateway.internal.example.org"
        actions = ["verify", "read"]
        rings = ["*"]

        [[rule]]
        identity = "uri:spiffe://example.org/ns/payments/rotator"
        actions = ["rotate"]
        rings = ["payments-us"]

        [[rule]]
        identity = "cn:billing-service"
        actions = ["revoke", "policy"]
        rings = ["billing"]

        [[rule]]
        identity = "uri:spiffe://example.org/ns/security/*"
        actions = ["admin"]
        rings = ["*"]

        [[rule]]
        identity = "cn:ops-admin"
        actions = ["admin"]
        rings = ["payments-*"]

        [[rule]]
        identity = "cn:oncall?"
        actions = ["seal"]
        rings = ["*"]
    "#;

    fn policy() -> Authz {
        Authz::from_toml(POLICY).unwrap()
    }

    const PAY: &str = "uri:spiffe://example.org/ns/payments/api";

    #[test]
    fn spiffe_glob_identity_matches_across_slashes() {
        let p = policy();
        let d = p.check(PAY, Action::Sign, "payments-eu");
        assert!(d.allowed);
        assert_eq!(d.rule, Some(0));
        assert!(
            p.check(
                "uri:spiffe://example.org/ns/payments/team/a/b",
                Action::Sign,
                "default"
            )
            .allowed
        );
        assert!(
            !p.check(
                "uri:spiffe://example.org/ns/billing/api",
                Action::Sign,
                "default"
            )
            .allowed
        );
        // The prefix must match exactly: no implicit trailing wildcard.
        assert!(
            !p.check(
                "uri:spiffe://example.org/ns/payments",
                Action::Sign,
                "default"
            )
            .allowed
        );
    }

    #[test]
    fn exact_identities_dns_and_cn() {
        let p = policy();
        assert!(
            p.check(
                "dns:gateway.internal.example.org",
                Action::Verify,
                "any-ring"
            )
            .allowed
        );
        assert!(
            !p.check("dns:gateway.internal.example.org.evil", Action::Verify, "x")
                .allowed
        );
        assert!(
            !p.check("dns:GATEWAY.internal.example.org", Action::Verify, "x")
                .allowed
        );
        assert!(
            p.check("cn:billing-service", Action::Revoke, "billing")
                .allowed
        );
        assert!(
            !p.check("cn:billing-service-2", Action::Revoke, "billing")
                .allowed
        );
    }

    #[test]
    fn question_mark_is_literal() {
        let p = policy();
        assert!(p.check("cn:oncall?", Action::Seal, SERVICE_WIDE).allowed);
        assert!(!p.check("cn:oncall1", Action::Seal, SERVICE_WIDE).allowed);
    }

    #[test]
    fn each_action_is_granted_only_where_listed() {
        let p = policy();
        let cases = [
            (PAY, Action::Sign, "payments-eu", true),
            (PAY, Action::Read, "default", true),
            (PAY, Action::Verify, "default", false),
            (PAY, Action::Rotate, "payments-eu", false),
            (
                "dns:gateway.internal.example.org",
                Action::Verify,
                "x",
                true,
            ),
            ("dns:gateway.internal.example.org", Action::Read, "x", true),
            ("dns:gateway.internal.example.org", Action::Sign, "x", false),
            (
                "uri:spiffe://example.org/ns/payments/rotator",
                Action::Rotate,
                "payments-us",
                true,
            ),
            ("cn:billing-service", Action::Revoke, "billing", true),
            ("cn:billing-service", Action::Policy, "billing", true),
            ("cn:billing-service", Action::Sign, "billing", false),
            ("cn:oncall?", Action::Seal, SERVICE_WIDE, true),
            ("cn:oncall?", Action::Admin, SERVICE_WIDE, false),
        ];
        for (id, action, ring, allowed) in cases {
            let d = p.check(id, action, ring);
            assert_eq!(
                d.allowed, allowed,
                "{id} {action} {ring}: {}",
                d.explanation
            );
            assert_eq!(d.rule.is_some(), allowed);
        }
    }

    #[test]
    fn admin_implies_every_action() {
        let p = policy();
        let sec = "uri:spiffe://example.org/ns/security/alice";
        for a in Action::ALL {
            assert!(p.check(sec, a, "payments-eu").allowed, "{a}");
            assert!(p.check(sec, a, SERVICE_WIDE).allowed, "{a}");
            assert!(p.check("cn:ops-admin", a, "payments-eu").allowed, "{a}");
            assert!(!p.check("cn:ops-admin", a, "billing").allowed, "{a}");
        }
    }

    #[test]
    fn service_wide_needs_a_star_ring() {
        let p = policy();
        // Admin on specific rings does not reach the whole service.
        let d = p.check("cn:ops-admin", Action::Seal, SERVICE_WIDE);
        assert!(!d.allowed);
        assert!(
            d.explanation.contains("the whole service"),
            "{}",
            d.explanation
        );
        assert!(!p.check(PAY, Action::Read, SERVICE_WIDE).allowed);
        // rings = ["*"] covers every ring and the service.
        assert!(
            p.check(
                "dns:gateway.internal.example.org",
                Action::Read,
                SERVICE_WIDE
            )
            .allowed
        );
    }

    #[test]
    fn invalid_ring_is_denied() {
        let p = policy();
        let d = p.check(
            "uri:spiffe://example.org/ns/security/a",
            Action::Read,
            "Bad Ring",
        );
        assert!(!d.allowed);
        assert!(
            d.explanation.contains("neither a ring name"),
            "{}",
            d.explanation
        );
    }

    #[test]
    fn deny_by_default() {
        let empty = Authz::from_toml("").unwrap();
        assert!(empty.is_empty());
        let d = empty.check(PAY, Action::Read, "default");
        assert!(!d.allowed);
        assert_eq!(d.explanation, "denied: the policy has no rules");
        let d = policy().check("cn:stranger", Action::Read, "default");
        assert_eq!(
            d,
            Decision {
                allowed: false,
                rule: None,
                explanation: "denied: no rule matches identity \"cn:stranger\"".to_owned(),
            }
        );
    }

    #[test]
    fn explanations_name_the_rule_or_the_near_misses() {
        let p = policy();
        let d = p.check(
            "uri:spiffe://example.org/ns/payments/rotator",
            Action::Sign,
            "default",
        );
        assert_eq!(d.rule, Some(0), "first allowing rule wins");
        assert_eq!(
            d.explanation,
            "allowed by rule 0 (payments issuers): identity \
             \"uri:spiffe://example.org/ns/payments/*\", actions [sign, read], \
             rings [\"payments-*\", \"default\"]"
        );
        let d = p.check(
            "uri:spiffe://example.org/ns/payments/rotator",
            Action::Rotate,
            "payments-eu",
        );
        assert_eq!(
            d.explanation,
            "denied: no rule grants 'rotate' on ring 'payments-eu' to identity \
             \"uri:spiffe://example.org/ns/payments/rotator\": rule 0 lacks the action 'rotate'; \
             rule 2 grants it on rings [\"payments-us\"] only"
        );
        let d = p.check("cn:billing-service", Action::Sign, "billing");
        assert!(
            d.explanation.ends_with(": rule 3 lacks the action 'sign'"),
            "{}",
            d.explanation
        );
        let d = p.check("dns:gateway.internal.example.org", Action::Read, "x");
        assert!(
            d.explanation.starts_with("allowed by rule 1: identity"),
            "{}",
            d.explanation
        );
    }

    fn rule_error(body: &str) -> (usize, String, String) {
        let text = format!(
            "[[rule]]\nidentity = \"cn:a\"\nactions = [\"read\"]\nrings = [\"*\"]\n\n[[rule]]\n{body}"
        );
        match Authz::from_toml(&text) {
            Err(AuthzError::Rule {
                index,
                field,
                message,
                ..
            }) => (index, field, message),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn validation_errors_name_rule_and_field() {
        let ok = "identity = \"cn:a\"\nactions = [\"read\"]\nrings = [\"r\"]\n";
        let cases = [
            (format!("{ok}colour = 1"), "colour", "unknown field"),
            (
                "identity = \"\"\nactions = [\"read\"]\nrings = [\"r\"]".to_owned(),
                "identity",
                "is empty",
            ),
            (
                "identity = \"cn:a\\u0007\"\nactions = [\"read\"]\nrings = [\"r\"]".to_owned(),
                "identity",
                "control character",
            ),
            (
                "actions = [\"read\"]\nrings = [\"r\"]".to_owned(),
                "identity",
                "is missing",
            ),
            (
                "identity = 7\nactions = [\"read\"]\nrings = [\"r\"]".to_owned(),
                "identity",
                "must be a string",
            ),
            (
                "identity = \"cn:a\"\nactions = []\nrings = [\"r\"]".to_owned(),
                "actions",
                "is empty",
            ),
            (
                "identity = \"cn:a\"\nactions = \"read\"\nrings = [\"r\"]".to_owned(),
                "actions",
                "must be a list of strings",
            ),
            (
                "identity = \"cn:a\"\nactions = [\"read\", \"sing\"]\nrings = [\"r\"]".to_owned(),
                "actions[1]",
                "unknown action \"sing\"",
            ),
            (
                "identity = \"cn:a\"\nactions = [\"read\"]\nrings = []".to_owned(),
                "rings",
                "is empty",
            ),
            (
                "identity = \"cn:a\"\nactions = [\"read\"]\nrings = [\"ok\", \"Pay/*\"]".to_owned(),
                "rings[1]",
                "not a ring pattern",
            ),
            (
                "identity = \"cn:a\"\nactions = [\"read\"]\nrings = [\"\"]".to_owned(),
                "rings[0]",
                "not a ring pattern",
            ),
            (
                "identity = \"cn:a\"\nactions = [\"read\"]\nrings = [\"r\"]\ndescription = 1"
                    .to_owned(),
                "description",
                "must be a string",
            ),
        ];
        for (body, field, needle) in cases {
            let (i, f, m) = rule_error(&body);
            assert_eq!((i, f.as_str()), (1, field), "{body}: {m}");
            assert!(m.contains(needle), "{body}: {m}");
        }
    }

    #[test]
    fn error_display_names_origin_rule_and_field() {
        let e =
            Authz::from_toml("[[rule]]\nidentity = \"cn:a\"\nactions = [\"x\"]\nrings = [\"r\"]")
                .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("policy: rule[0].actions[0]: unknown action \"x\""),
            "{e}"
        );
        let e = Authz::from_toml("[[rules]]\nidentity = \"cn:a\"").unwrap_err();
        assert!(matches!(e, AuthzError::Syntax { .. }), "{e:?}");
        assert!(e.to_string().contains("unknown field `rules`"), "{e}");
    }

    #[test]
    fn example_policy_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("signet.policy.example.toml");
        let p = Authz::load(&path).unwrap();
        assert!(p.len() >= 4);
        let issuer = "uri:spiffe://example.org/ns/payments/sa/checkout";
        assert!(p.check(issuer, Action::Sign, "payments-eu").allowed);
        assert!(!p.check(issuer, Action::Rotate, "payments-eu").allowed);
        assert!(!p.check(issuer, Action::Sign, "identity").allowed);
        let gateway = "uri:spiffe://example.org/ns/edge/sa/gateway";
        assert!(p.check(gateway, Action::Verify, "payments-eu").allowed);
        assert!(p.check(gateway, Action::Read, "identity").allowed);
        assert!(!p.check(gateway, Action::Sign, "identity").allowed);
        let security = "uri:spiffe://example.org/ns/security/sa/alice";
        for a in Action::ALL {
            assert!(p.check(security, a, "identity").allowed, "{a}");
            assert!(p.check(security, a, SERVICE_WIDE).allowed, "{a}");
        }
        assert!(
            p.check("dns:ops-oncall.example.org", Action::Seal, SERVICE_WIDE)
                .allowed
        );
        assert!(
            !p.check("dns:ops-oncall.example.org", Action::Sign, "identity")
                .allowed
        );
        assert!(!p.check("cn:stranger", Action::Read, "identity").allowed);
    }

    #[test]
    fn untyped_patterns_are_refused_with_the_typed_form() {
        let e = Authz::from_toml(
            "[[rule]]\nidentity = \"spiffe://example.org/ns/security/*\"\nactions = [\"admin\"]\nrings = [\"*\"]",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "policy: rule[0].identity: \"spiffe://example.org/ns/security/*\" does not name an \
             identity kind; write \"uri:spiffe://example.org/ns/security/*\" (kinds: uri:, dns:, \
             cn:, unix:uid:, unix:user:)"
        );
    }

    #[test]
    fn a_cn_that_looks_like_a_spiffe_id_gets_no_uri_grant() {
        let p = policy();
        let sec = "spiffe://example.org/ns/security/x";
        assert!(p.check(&format!("uri:{sec}"), Action::Admin, "x").allowed);
        for name in [format!("cn:{sec}"), format!("dns:{sec}"), sec.to_owned()] {
            assert!(!p.check(&name, Action::Read, "x").allowed, "{name}");
        }
    }

    #[test]
    fn any_of_a_callers_names_may_match() {
        let p = policy();
        let names = [
            "uri:spiffe://example.org/ns/other/a".to_owned(),
            "dns:gateway.internal.example.org".to_owned(),
        ];
        let d = p.check(&names[..], Action::Verify, "x");
        assert_eq!(d.rule, Some(1));
        let d = p.check(&names[..], Action::Sign, "x");
        assert!(
            d.explanation
                .contains("to identity \"uri:spiffe://example.org/ns/other/a\""),
            "the first name is the one shown: {}",
            d.explanation
        );
    }

    #[test]
    fn sign_grants_carry_constrained_rules_only() {
        let p = Authz::from_toml(
            r#"
            [[rule]]
            identity = "uri:spiffe://t/orders"
            actions = ["sign"]
            rings = ["shared"]
            [rule.sign]
            aud = ["orders"]

            [[rule]]
            identity = "uri:spiffe://t/*"
            actions = ["sign"]
            rings = ["shared"]
            [rule.sign]
            aud = ["common"]

            [[rule]]
            identity = "uri:spiffe://t/root"
            actions = ["admin"]
            rings = ["*"]
            "#,
        )
        .unwrap();
        let g = p.sign_grant("uri:spiffe://t/orders", "shared").unwrap();
        assert_eq!(g.rules.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(g.identity, "uri:spiffe://t/orders");
        assert!(p.sign_grant("uri:spiffe://t/root", "shared").is_none());
        assert!(p.sign_grant("uri:spiffe://t/other", "elsewhere").is_none());
        let e = Authz::from_toml(
            "[[rule]]\nidentity = \"cn:a\"\nactions = [\"read\"]\nrings = [\"r\"]\n[rule.sign]\naud = [\"x\"]",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("rule[0].sign: constrains signing, but the rule does not grant sign"),
            "{e}"
        );
        let e = Authz::from_toml(
            "[[rule]]\nidentity = \"cn:a\"\nactions = [\"sign\"]\nrings = [\"r\"]\n[rule.sign]\naud = []",
        )
        .unwrap_err();
        assert!(e.to_string().contains("rule[0].sign.aud: is empty"), "{e}");
    }
}
