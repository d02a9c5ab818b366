//! A ring's issuer: the `iss` Signet puts in every token of the ring, and the
//! identifier its OpenID Connect discovery document names.
//!
//! OIDC Discovery (section 3) and RFC 8414 require an issuer to be an
//! `https` URL without query or fragment, compared as an exact string. A
//! verifier finds the discovery document at `{issuer}/.well-known/openid-configuration`,
//! so the issuer is kept exactly as written, in normal form and without a
//! trailing `/` (which would make that path `//.well-known`).

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::crypto::claims::InputError;

/// The longest issuer accepted: it is copied into every token.
const MAX_LEN: usize = 512;

/// An issuer URL that passed [`Issuer::parse`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Issuer(String);

impl Issuer {
    /// Parses `text` as an issuer: an `https://` URL (or `http://` to a
    /// loopback host, for a verifier on the same machine), with a host, no
    /// user info, query or fragment, no trailing `/`, in normal form.
    /// `field` names the request or config field in the error.
    pub fn parse(text: &str, field: &str) -> Result<Self, InputError> {
        let fail = |rule: String| Err(InputError::new(field, rule));
        if text.len() > MAX_LEN {
            return fail(format!("is {} bytes; the limit is {MAX_LEN}", text.len()));
        }
        let url = match url::Url::parse(text) {
            Ok(url) => url,
            Err(e) => return fail(format!("{text:?} is not a URL ({e})")),
        };
        let Some(host) = url.host() else {
            return fail(format!("{text:?} has no host"));
        };
        let loopback = match host {
            url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
            url::Host::Ipv4(ip) => IpAddr::V4(ip).is_loopback(),
            url::Host::Ipv6(ip) => IpAddr::V6(ip).is_loopback(),
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return fail(format!(
                    "{text:?} must be an https:// URL (http:// only to a loopback host): \
                     verifiers fetch keys from it"
                ));
            }
            other => return fail(format!("{text:?} must be an https:// URL, not {other}:")),
        }
        if url.query().is_some() || url.fragment().is_some() {
            return fail(format!(
                "{text:?} must have no query (?) or fragment (#) (OpenID Connect Discovery 1.0, \
                 section 3)"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return fail(format!("{text:?} must carry no user name or password"));
        }
        if text.ends_with('/') {
            return fail(format!(
                "{text:?} must not end with '/' (verifiers append \
                 /.well-known/openid-configuration to it); write {:?}",
                text.trim_end_matches('/')
            ));
        }
        // The URL parser lower-cases the host, drops a default port and
        // escapes what needs it. Verifiers compare `iss` as a string, so
        // keep only a spelling that every parser turns back into itself.
        let normal = url.as_str().trim_end_matches('/');
        if normal != text {
            return fail(format!("{text:?} is not in normal form; write {normal:?}"));
        }
        Ok(Self(text.to_owned()))
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the discovery document is: `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.0)
    }

    /// Where the discovery document says the JWKS is:
    /// `{issuer}/.well-known/jwks.json`. Signet serves both paths under `/`
    /// for the default ring and under `/v1/rings/{ring}` for every ring, so
    /// an issuer that names either prefix (directly, or through a proxy that
    /// maps a host onto one) finds both documents.
    pub fn jwks_uri(&self) -> String {
        format!("{}/.well-known/jwks.json", self.0)
    }
}

impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Issuer {
    type Error = InputError;

    fn try_from(s: String) -> Result<Self, InputError> {
        Self::parse(&s, "issuer")
    }
}

impl From<Issuer> for String {
    fn from(i: Issuer) -> String {
        i.0
    }
}

#[cfg(test)]
mod tests {
    use super::Issuer;

    #[test]
    fn accepted() {
        for ok in [
            "https://issuer.example.org",
            "https://issuer.example.org/v1/rings/payments",
            "https://issuer.example.org:8444",
            "http://127.0.0.1:8080",
            "http://localhost:8080/v1/rings/a",
            "http://[::1]:8080",
        ] {
            assert_eq!(Issuer::parse(ok, "issuer").unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refused_with_field_and_rule() {
        let cases = [
            (
                "http://issuer.example.org",
                "must be an https:// URL (http:// only to a loopback host)",
            ),
            (
                "ftp://issuer.example.org",
                "must be an https:// URL, not ftp:",
            ),
            (
                "https://issuer.example.org?a=b",
                "must have no query (?) or fragment (#)",
            ),
            (
                "https://issuer.example.org#x",
                "must have no query (?) or fragment (#)",
            ),
            ("https://issuer.example.org/", "must not end with '/'"),
            (
                "https://u:p@issuer.example.org",
                "must carry no user name or password",
            ),
            (
                "https://Issuer.Example.org",
                "is not in normal form; write \"https://issuer.example.org\"",
            ),
            ("https://issuer.example.org:443", "is not in normal form"),
            ("issuer.example.org", "is not a URL"),
            ("", "is not a URL"),
        ];
        for (text, want) in cases {
            let e = Issuer::parse(text, "rings[0].issuer")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("rings[0].issuer: "), "{e}");
            assert!(e.contains(want), "{text}: {e}\nwanted {want}");
        }
        let long = format!("https://a.example/{}", "x".repeat(600));
        assert!(Issuer::parse(&long, "issuer").is_err());
    }

    #[test]
    fn serde_round_trip_and_refusal() {
        let i = Issuer::parse("https://a.example", "issuer").unwrap();
        let json = serde_json::to_string(&i).unwrap();
        assert_eq!(json, "\"https://a.example\"");
        assert_eq!(serde_json::from_str::<Issuer>(&json).unwrap(), i);
        assert!(serde_json::from_str::<Issuer>("\"http://a.example\"").is_err());
    }

    #[test]
    fn derived_urls() {
        let i = Issuer::parse("https://a.example/v1/rings/p", "issuer").unwrap();
        assert_eq!(
            i.discovery_url(),
            "https://a.example/v1/rings/p/.well-known/openid-configuration"
        );
        assert_eq!(
            i.jwks_uri(),
            "https://a.example/v1/rings/p/.well-known/jwks.json"
        );
    }
}
