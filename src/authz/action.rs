//! What a caller may do: the actions a policy rule grants.

use std::{fmt, str::FromStr};

/// Something a caller may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Sign claims with a ring's key.
    Sign,
    /// Verify a token against a ring's keys.
    Verify,
    /// Read a ring's keys, JWKS, timeline and policy.
    Read,
    /// Rotate a ring.
    Rotate,
    /// Revoke a key.
    Revoke,
    /// Change a ring's rotation and token policy.
    Policy,
    /// Seal the service: drop every private key from memory (service-wide:
    /// checked with ring `"*"`). An emergency brake any on-call operator
    /// may pull.
    Seal,
    /// Unseal the service: re-open the KEK and the keys (service-wide).
    /// Separate from `seal`, so an identity that may stop signing in an
    /// emergency cannot also restart it.
    Unseal,
    /// Every action above, on the rings the rule lists.
    Admin,
}

impl Action {
    /// Every action, in the order the policy file documents them.
    pub const ALL: [Action; 9] = [
        Action::Sign,
        Action::Verify,
        Action::Read,
        Action::Rotate,
        Action::Revoke,
        Action::Policy,
        Action::Seal,
        Action::Unseal,
        Action::Admin,
    ];

    /// The name used in policy files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Action::Sign => "sign",
            Action::Verify => "verify",
            Action::Read => "read",
            Action::Rotate => "rotate",
            Action::Revoke => "revoke",
            Action::Policy => "policy",
            Action::Seal => "seal",
            Action::Unseal => "unseal",
            Action::Admin => "admin",
        }
    }

    /// Whether holding `self` grants `wanted`: itself, or anything for
    /// `admin`.
    pub fn grants(self, wanted: Action) -> bool {
        self == Action::Admin || self == wanted
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An action name that is not one of [`Action::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown action {0:?}; expected one of sign, verify, read, rotate, revoke, policy, seal, unseal, \
     admin"
)]
pub struct UnknownAction(pub String);

impl FromStr for Action {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_round_trip() {
        for a in Action::ALL {
            assert_eq!(a.name().parse::<Action>().unwrap(), a);
            assert_eq!(a.to_string(), a.name());
        }
        assert_eq!("unseal".parse::<Action>().unwrap(), Action::Unseal);
        let e = "Sign".parse::<Action>().unwrap_err();
        assert!(e.to_string().contains("unknown action \"Sign\""), "{e}");
    }

    /// `seal` alone does not grant `unseal`; `admin` grants both.
    #[test]
    fn seal_does_not_grant_unseal() {
        assert!(Action::Seal.grants(Action::Seal));
        assert!(!Action::Seal.grants(Action::Unseal));
        assert!(!Action::Unseal.grants(Action::Seal));
        assert!(Action::Admin.grants(Action::Unseal));
        let policy = crate::authz::Authz::from_toml(
            r#"
[[rule]]
identity = "dns:ops-oncall.example.org"
actions = ["seal"]
rings = ["*"]

[[rule]]
identity = "cn:security"
actions = ["admin"]
rings = ["*"]
"#,
        )
        .unwrap();
        assert!(
            policy
                .check("dns:ops-oncall.example.org", Action::Seal, "*")
                .allowed
        );
        assert!(
            !policy
                .check("dns:ops-oncall.example.org", Action::Unseal, "*")
                .allowed
        );
        assert!(policy.check("cn:security", Action::Unseal, "*").allowed);
    }
}
