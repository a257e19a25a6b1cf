//! Key generation and loading. Every key is stored as unencrypted PKCS#8 PEM
//! (`PRIVATE KEY`), which Go's crypto/tls (etcd, Kubernetes) and openssl read.

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};
use rsa::pkcs8::EncodePrivateKey;
use rustls_pki_types::PrivatePkcs8KeyDer;

use super::error::PkiError;
use super::spec::KeyType;
use super::x509::cert_der_from_pem;

/// RSA modulus size for [`KeyType::Rsa2048`].
const RSA_BITS: usize = 2048;

/// Generates a fresh key of `key_type`. `what` names the key in errors.
pub(crate) fn generate(key_type: KeyType, what: &str) -> Result<KeyPair, PkiError> {
    match key_type {
        KeyType::EcdsaP256 => {
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate {
                what: format!("{what} key"),
                source,
            })
        }
        KeyType::Rsa2048 => {
            // ring cannot generate RSA keys: the `rsa` crate makes the key,
            // ring (through rcgen) does all signing with it.
            let rsa_err = |reason: String| PkiError::RsaKeygen {
                what: what.to_string(),
                reason,
            };
            let mut rng = rsa::rand_core::OsRng;
            let key =
                rsa::RsaPrivateKey::new(&mut rng, RSA_BITS).map_err(|e| rsa_err(e.to_string()))?;
            let der = key.to_pkcs8_der().map_err(|e| rsa_err(e.to_string()))?;
            KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(der.as_bytes()),
                &PKCS_RSA_SHA256,
            )
            .map_err(|source| PkiError::Generate {
                what: format!("{what} key"),
                source,
            })
        }
    }
}

/// Loads a PKCS#8 PEM private key (ECDSA P-256/P-384, Ed25519 or RSA).
pub(crate) fn load_pem(pem: &str) -> Result<KeyPair, rcgen::Error> {
    KeyPair::from_pem(pem)
}

/// The `sha256:<hex>` pin of a certificate's public key: SHA-256 over the
/// DER SubjectPublicKeyInfo, the same value kubeadm's
/// `--discovery-token-ca-cert-hash` uses.
pub fn spki_sha256(cert_pem: &[u8]) -> Result<String, PkiError> {
    let der = cert_der_from_pem(cert_pem).map_err(|e| PkiError::InvalidPem {
        what: "certificate".to_string(),
        reason: crate::telemetry::Chain(&e).to_string(),
    })?;
    spki_sha256_der(&der)
}

/// [`spki_sha256`] for a DER certificate.
pub fn spki_sha256_der(cert_der: &[u8]) -> Result<String, PkiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| PkiError::InvalidPem {
        what: "certificate".to_string(),
        reason: e.to_string(),
    })?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    Ok(format!("sha256:{}", hex::encode(digest.as_ref())))
}
