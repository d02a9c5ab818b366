//! The reloadable policy the server holds.

use std::{path::Path, sync::Arc};

use arc_swap::ArcSwap;

use tokio::sync::watch;

use super::{Action, Authz, AuthzError, Decision, Glob, Names, Rule, SERVICE_WIDE};

/// A cheap-to-clone handle on the current policy, swapped atomically on
/// reload: checks never take a lock and always see one whole policy.
#[derive(Debug, Clone)]
pub struct SharedAuthz(Arc<ArcSwap<Authz>>, Arc<watch::Sender<u64>>);

impl SharedAuthz {
    /// Holds `authz` as the current policy.
    pub fn new(authz: Authz) -> Self {
        Self(
            Arc::new(ArcSwap::from_pointee(authz)),
            Arc::new(watch::channel(0).0),
        )
    }

    /// Changes each time a reload makes a new policy current, so that
    /// long-lived streams re-check their caller.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.1.subscribe()
    }

    /// The policy of `signet dev`: the local caller is granted everything.
    /// One rule: identity `"*"`, actions `["admin"]`, rings `["*"]`;
    /// `identity_label` (who the local caller is) goes in its description.
    pub fn allow_all(identity_label: &str) -> Self {
        let rule = Rule {
            identity: SERVICE_WIDE.to_owned(),
            identity_glob: Glob::new(SERVICE_WIDE),
            actions: vec![Action::Admin],
            rings: vec![SERVICE_WIDE.to_owned()],
            ring_globs: vec![Glob::new(SERVICE_WIDE)],
            description: Some(format!(
                "signet dev: {identity_label} is granted everything"
            )),
            sign: None,
        };
        Self::new(Authz { rules: vec![rule] })
    }

    /// The current policy. Hold it for one request, not longer, so that a
    /// reload takes effect.
    pub fn current(&self) -> Arc<Authz> {
        self.0.load_full()
    }

    /// [`Authz::check`] against the current policy.
    pub fn check(&self, identity: &(impl Names + ?Sized), action: Action, ring: &str) -> Decision {
        self.0.load().check(identity, action, ring)
    }

    /// Loads and validates the file at `path` and makes it current. On any
    /// error the previous policy stays in force and the error is returned
    /// for the caller to log: a typo never opens or closes the service.
    pub fn reload(&self, path: &Path) -> Result<(), AuthzError> {
        let new = Authz::load(path)?;
        self.0.store(Arc::new(new));
        self.1.send_modify(|generation| *generation += 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_swaps_valid_policies_and_keeps_the_old_one_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(
            &path,
            "[[rule]]\nidentity = \"cn:a\"\nactions = [\"read\"]\nrings = [\"r\"]\n",
        )
        .unwrap();
        let shared = SharedAuthz::new(Authz::load(&path).unwrap());
        let clone = shared.clone();
        let changes = shared.changes();
        assert!(shared.check("cn:a", Action::Read, "r").allowed);
        assert!(!shared.check("cn:b", Action::Read, "r").allowed);

        std::fs::write(
            &path,
            "[[rule]]\nidentity = \"cn:b\"\nactions = [\"read\"]\nrings = [\"r\"]\n",
        )
        .unwrap();
        shared.reload(&path).unwrap();
        assert_eq!(*changes.borrow(), 1, "a reload is announced");
        assert!(
            clone.check("cn:b", Action::Read, "r").allowed,
            "clones see the reload"
        );
        assert!(!clone.current().check("cn:a", Action::Read, "r").allowed);

        std::fs::write(
            &path,
            "[[rule]]\nidentity = \"cn:c\"\nactions = [\"raed\"]\nrings = [\"r\"]\n",
        )
        .unwrap();
        let e = shared.reload(&path).unwrap_err();
        assert!(e.to_string().contains("rule[0].actions[0]"), "{e}");
        assert!(
            shared.check("cn:b", Action::Read, "r").allowed,
            "old rules kept"
        );
        assert!(!shared.check("cn:c", Action::Read, "r").allowed);

        assert_eq!(*changes.borrow(), 1, "a refused file announces nothing");
        let e = shared.reload(&dir.path().join("missing.toml")).unwrap_err();
        assert!(matches!(e, AuthzError::Read { .. }), "{e:?}");
        assert!(shared.check("cn:b", Action::Read, "r").allowed);
    }

    #[test]
    fn allow_all_grants_everything_everywhere() {
        let shared = SharedAuthz::allow_all("the local caller");
        assert_eq!(shared.current().len(), 1);
        for a in Action::ALL {
            for ring in ["default", "payments-eu", SERVICE_WIDE] {
                let d = shared.check("anyone", a, ring);
                assert!(d.allowed, "{a} {ring}");
                assert_eq!(d.rule, Some(0));
            }
        }
        assert!(
            shared
                .check("x", Action::Seal, SERVICE_WIDE)
                .explanation
                .contains("signet dev: the local caller is granted everything")
        );
    }
}
