//! Which algorithms a ring may use, and with which key sizes.

use std::{fmt, str::FromStr};

use super::claims::InputError;

/// A JWS signature algorithm Signet signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256 and MGF1 with SHA-256.
    Ps256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519, published under the polymorphic name `EdDSA` (RFC 8037).
    EdDsa,
    /// Ed25519, published under its fully specified name `Ed25519` (RFC 9864).
    Ed25519,
}

impl Algorithm {
    /// Every supported algorithm, in the order `--help` lists them.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Rs256,
        Algorithm::Ps256,
        Algorithm::Es256,
        Algorithm::EdDsa,
        Algorithm::Ed25519,
    ];

    /// The `alg` value in JOSE headers and JWKs.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Ps256 => "PS256",
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
            Algorithm::Ed25519 => "Ed25519",
        }
    }

    /// Whether keys are RSA (and so take a modulus size).
    pub fn is_rsa(self) -> bool {
        matches!(self, Algorithm::Rs256 | Algorithm::Ps256)
    }

    /// Whether signing is slow enough (RSA: about a millisecond) that it must
    /// run off the async reactor.
    pub fn is_cpu_heavy(self) -> bool {
        self.is_rsa()
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = KeySpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| KeySpecError::UnknownAlgorithm(s.to_owned()))
    }
}

/// What kind of key a ring generates: an algorithm and, for RSA, a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeySpec {
    alg: Algorithm,
    rsa_bits: u32,
}

/// RSA modulus sizes a ring may use. Below 2048 bits is refused outright.
pub const RSA_SIZES: [u32; 3] = [2048, 3072, 4096];

/// RSA modulus size when none is given.
pub const DEFAULT_RSA_BITS: u32 = 2048;

impl KeySpec {
    /// Validates an algorithm and size. `rsa_bits == 0` means the default
    /// (2048) for RSA and is required for other algorithms.
    pub fn new(alg: Algorithm, rsa_bits: u32) -> Result<Self, KeySpecError> {
        if alg.is_rsa() {
            let bits = if rsa_bits == 0 {
                DEFAULT_RSA_BITS
            } else {
                rsa_bits
            };
            if !RSA_SIZES.contains(&bits) {
                return Err(KeySpecError::RsaBits(bits));
            }
            Ok(Self {
                alg,
                rsa_bits: bits,
            })
        } else if rsa_bits != 0 {
            Err(KeySpecError::BitsForNonRsa(alg))
        } else {
            Ok(Self { alg, rsa_bits: 0 })
        }
    }

    /// The algorithm.
    pub fn alg(self) -> Algorithm {
        self.alg
    }

    /// The RSA modulus size in bits; 0 for non-RSA algorithms.
    pub fn rsa_bits(self) -> u32 {
        self.rsa_bits
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.alg.is_rsa() {
            write!(f, "{} ({} bits)", self.alg, self.rsa_bits)
        } else {
            write!(f, "{}", self.alg)
        }
    }
}

/// Why an algorithm or key size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeySpecError {
    /// The algorithm name is not one Signet signs with.
    #[error("{0:?} is not supported (use RS256, PS256, ES256, EdDSA or Ed25519)")]
    UnknownAlgorithm(String),
    /// An RSA size outside 2048, 3072, 4096.
    #[error("{0} is not supported (use 2048, 3072 or 4096; below 2048 is never allowed)")]
    RsaBits(u32),
    /// A size was given for an algorithm that has none.
    #[error("must be 0 for {0}, which is not an RSA algorithm")]
    BitsForNonRsa(Algorithm),
}

impl KeySpecError {
    /// The request field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            KeySpecError::UnknownAlgorithm(_) => "algorithm",
            KeySpecError::RsaBits(_) | KeySpecError::BitsForNonRsa(_) => "rsa_bits",
        }
    }
}

impl From<KeySpecError> for InputError {
    fn from(e: KeySpecError) -> Self {
        InputError::new(e.field(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>(), Ok(a));
        }
        assert!(matches!(
            "HS256".parse::<Algorithm>(),
            Err(KeySpecError::UnknownAlgorithm(_))
        ));
        // Case matters in JOSE.
        assert!("rs256".parse::<Algorithm>().is_err());
    }

    #[test]
    fn rsa_sizes() {
        assert_eq!(
            KeySpec::new(Algorithm::Rs256, 0).map(|s| s.rsa_bits()),
            Ok(2048)
        );
        assert_eq!(
            KeySpec::new(Algorithm::Ps256, 4096).map(|s| s.rsa_bits()),
            Ok(4096)
        );
        assert_eq!(
            KeySpec::new(Algorithm::Rs256, 1024),
            Err(KeySpecError::RsaBits(1024))
        );
        assert_eq!(
            KeySpec::new(Algorithm::Es256, 2048),
            Err(KeySpecError::BitsForNonRsa(Algorithm::Es256))
        );
    }
}
