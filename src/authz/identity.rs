//! Typed caller identities.
//!
//! Every name a transport establishes says where it came from, so that a
//! certificate whose subject CN merely *looks* like a SPIFFE ID can never
//! match a rule written for one:
//!
//! | kind         | from                                              |
//! |--------------|---------------------------------------------------|
//! | `uri:`       | the client certificate's URI SAN (one at most)    |
//! | `dns:`       | each DNS SAN of the client certificate            |
//! | `cn:`        | the subject CN, only with `[tls] allow_cn_identity` |
//! | `unix:uid:`  | the kernel's peer credentials on the Unix socket  |
//! | `unix:user:` | the name of that uid, when it has one             |
//!
//! Policy patterns carry the same prefix (`uri:spiffe://example.org/ns/*`);
//! a pattern without one is refused when the policy is loaded.

use std::fmt;

/// Where an identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// A URI SAN (for example a SPIFFE ID).
    Uri,
    /// A DNS SAN.
    Dns,
    /// The certificate subject's common name.
    Cn,
    /// A Unix socket peer's uid.
    UnixUid,
    /// A Unix socket peer's user name.
    UnixUser,
}

impl IdentityKind {
    /// Every kind, longest prefix first where prefixes share a start.
    pub const ALL: [IdentityKind; 5] = [
        IdentityKind::UnixUid,
        IdentityKind::UnixUser,
        IdentityKind::Uri,
        IdentityKind::Dns,
        IdentityKind::Cn,
    ];

    /// The prefix that names the kind in identities and policy patterns.
    pub fn prefix(self) -> &'static str {
        match self {
            IdentityKind::Uri => "uri:",
            IdentityKind::Dns => "dns:",
            IdentityKind::Cn => "cn:",
            IdentityKind::UnixUid => "unix:uid:",
            IdentityKind::UnixUser => "unix:user:",
        }
    }

    /// Splits `typed` into its kind and the rest.
    pub fn split(typed: &str) -> Option<(IdentityKind, &str)> {
        Self::ALL
            .into_iter()
            .find_map(|k| typed.strip_prefix(k.prefix()).map(|rest| (k, rest)))
    }

    /// `uri:, dns:, cn:, unix:uid:, unix:user:`
    pub fn list() -> String {
        [
            IdentityKind::Uri,
            IdentityKind::Dns,
            IdentityKind::Cn,
            IdentityKind::UnixUid,
            IdentityKind::UnixUser,
        ]
        .map(IdentityKind::prefix)
        .join(", ")
    }
}

/// A typed identity such as `uri:spiffe://example.org/ns/a` or
/// `unix:uid:1001`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity(String);

impl Identity {
    /// An identity of `kind` with the value `value`.
    pub fn new(kind: IdentityKind, value: &str) -> Self {
        Self(format!("{}{value}", kind.prefix()))
    }

    /// The typed form, prefix included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that a policy identity pattern names its kind; the error says
/// what is wrong and suggests the typed form.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let Some((kind, rest)) = IdentityKind::split(pattern) else {
        return Err(format!(
            "{pattern:?} does not name an identity kind; write {:?} (kinds: {})",
            suggest(pattern),
            IdentityKind::list()
        ));
    };
    if rest.is_empty() {
        return Err(format!(
            "{pattern:?} has a kind but no value; use '*' to match any {}",
            kind.prefix().trim_end_matches(':')
        ));
    }
    if kind == IdentityKind::UnixUid && !rest.bytes().all(|b| b.is_ascii_digit() || b == b'*') {
        return Err(format!(
            "{pattern:?}: a uid is a number; for a user name write \"unix:user:{rest}\""
        ));
    }
    Ok(())
}

/// The typed form an untyped pattern most likely meant.
fn suggest(pattern: &str) -> String {
    let kind = if pattern.contains("://") {
        IdentityKind::Uri
    } else if !pattern.is_empty() && pattern.bytes().all(|b| b.is_ascii_digit()) {
        IdentityKind::UnixUid
    } else if pattern.contains('.') && !pattern.contains(' ') {
        IdentityKind::Dns
    } else {
        IdentityKind::Cn
    };
    format!("{}{pattern}", kind.prefix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_must_be_typed_and_errors_suggest_the_typed_form() {
        for ok in [
            "uri:spiffe://example.org/ns/*",
            "dns:issuer.internal",
            "cn:legacy-issuer",
            "unix:uid:1001",
            "unix:uid:*",
            "unix:user:tokens",
        ] {
            check_pattern(ok).unwrap();
        }
        let cases = [
            ("spiffe://example.org/ns/*", "uri:spiffe://example.org/ns/*"),
            ("issuer.internal", "dns:issuer.internal"),
            ("legacy-issuer", "cn:legacy-issuer"),
            ("1001", "unix:uid:1001"),
            ("*", "cn:*"),
        ];
        for (pattern, suggestion) in cases {
            let e = check_pattern(pattern).unwrap_err();
            assert!(
                e.contains(&format!("write {suggestion:?}")),
                "{pattern}: {e}"
            );
            assert!(e.contains("kinds: uri:, dns:, cn:, unix:uid:, unix:user:"));
        }
        let e = check_pattern("unix:uid:tokens").unwrap_err();
        assert!(e.contains("write \"unix:user:tokens\""), "{e}");
        assert!(check_pattern("uri:").unwrap_err().contains("no value"));
    }

    #[test]
    fn split_prefers_the_longest_prefix() {
        assert_eq!(
            IdentityKind::split("unix:uid:7"),
            Some((IdentityKind::UnixUid, "7"))
        );
        assert_eq!(
            IdentityKind::split("unix:user:bob"),
            Some((IdentityKind::UnixUser, "bob"))
        );
        assert_eq!(IdentityKind::split("unix:pid:7"), None);
        assert_eq!(
            Identity::new(IdentityKind::Cn, "x").as_str(),
            "cn:x",
            "typed"
        );
    }
}
