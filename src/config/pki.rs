//! `spec.pki` types shared with the PKI module (which re-exports them).

use serde::{Deserialize, Serialize};

/// Key algorithm of every key the PKI generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256 signatures: small and fast (the default).
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256 signatures, for environments that
    /// require RSA.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

impl KeyType {
    /// The config spelling (`ecdsa-p256`, `rsa-2048`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Rsa2048 => "rsa-2048",
        }
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
