//! The PKI error type: every variant names the file or certificate involved.

use std::path::PathBuf;

use crate::fsutil::FsError;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    Fs(#[from] FsError),

    #[error("invalid PKI setting {field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },

    #[error("invalid subject alternative name {value:?}: {reason}")]
    InvalidSan { value: String, reason: String },

    #[error("cannot parse certificate {path}: {reason}")]
    ParseCert { path: PathBuf, reason: String },

    #[error("cannot parse certificate {path}")]
    CertParse {
        path: PathBuf,
        #[source]
        source: super::x509::CertParseError,
    },

    #[error("cannot parse private key {path}")]
    ParseKey { path: PathBuf, source: rcgen::Error },

    #[error("CA certificate {cert} exists but its private key {key} is missing; refusing to create a new CA over it (restore the key or remove both files deliberately)")]
    CaKeyMissing { cert: PathBuf, key: PathBuf },

    #[error("CA private key {key} exists but its certificate {cert} is missing; refusing to overwrite it (restore the certificate or remove both files deliberately)")]
    CaCertMissing { cert: PathBuf, key: PathBuf },

    #[error("the {ca} CA does not exist ({cert} is missing); the controller creates it on its first start")]
    CaMissing { ca: &'static str, cert: PathBuf },

    #[error("CA private key {key} does not match the CA certificate {cert}")]
    CaKeyMismatch { cert: PathBuf, key: PathBuf },

    #[error("{cert} is not a CA certificate (basicConstraints CA flag missing)")]
    NotACa { cert: PathBuf },

    #[error("CA certificate {cert} expired at {not_after}; CAs are never replaced automatically, rotate it deliberately")]
    CaExpired { cert: PathBuf, not_after: String },

    #[error("service-account public key {public} exists but the private key {key} is missing; refusing to generate a new signing key over it")]
    SaKeyMissing { key: PathBuf, public: PathBuf },

    #[error("cannot generate {what}")]
    Generate { what: String, source: rcgen::Error },

    #[error("cannot generate RSA key for {what}: {reason}")]
    RsaKeygen { what: String, reason: String },

    #[error("invalid PEM ({what}): {reason}")]
    InvalidPem { what: String, reason: String },

    #[error("invalid certificate signing request: {reason}")]
    Csr { reason: String },

    #[error("cannot render kubeconfig {name}")]
    Kubeconfig {
        name: String,
        source: serde_saphyr::SerializeError,
    },
}
