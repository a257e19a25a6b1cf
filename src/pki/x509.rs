//! Reading certificates back from disk: an owned summary of the fields the
//! renewal checks compare, subject alternative names, and signature checks.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::SanType;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::error::PkiError;
use super::spec::KeyType;

/// A subject alternative name as the PKI compares them: DNS names lower-case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    /// An IP address if it parses as one, otherwise a DNS name (wildcard
    /// allowed in the first label only).
    pub(crate) fn parse(value: &str) -> Result<San, PkiError> {
        let v = value.trim();
        if let Ok(ip) = v.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let bad = |reason: &str| PkiError::InvalidSan {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        if v.is_empty() {
            return Err(bad("empty"));
        }
        if v.len() > 253 {
            return Err(bad("longer than 253 characters"));
        }
        for (i, label) in v.split('.').enumerate() {
            if label.is_empty() || label.len() > 63 {
                return Err(bad("every label must have 1 to 63 characters"));
            }
            if label == "*" && i == 0 {
                continue;
            }
            if !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(bad(
                    "only letters, digits, '-', '_' and a leading '*.' are allowed",
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label must not start or end with '-'"));
            }
        }
        Ok(San::Dns(v.to_ascii_lowercase()))
    }

    pub(crate) fn to_rcgen(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Dns(name) => {
                SanType::DnsName(name.clone().try_into().map_err(|e: rcgen::Error| {
                    PkiError::InvalidSan {
                        value: name.clone(),
                        reason: e.to_string(),
                    }
                })?)
            }
        })
    }
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// Owned facts about one certificate.
#[derive(Debug, Clone)]
pub(crate) struct CertFacts {
    pub der: Vec<u8>,
    pub subject: String,
    pub issuer: String,
    pub subject_raw: Vec<u8>,
    pub issuer_raw: Vec<u8>,
    pub common_name: Option<String>,
    pub organizations: BTreeSet<String>,
    pub sans: BTreeSet<San>,
    /// SANs of other kinds (URI, e-mail, ...) that the PKI never issues.
    pub foreign_sans: usize,
    pub server_auth: bool,
    pub client_auth: bool,
    pub is_ca: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The subjectPublicKey bits (what a matching private key derives).
    pub public_key_raw: Vec<u8>,
    pub key_type: Option<KeyType>,
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// OID of the named curve P-256 (prime256v1).
const OID_P256: &str = "1.2.840.10045.3.1.7";

fn key_type_of(cert: &X509Certificate<'_>) -> Option<KeyType> {
    match cert.public_key().parsed().ok()? {
        PublicKey::RSA(rsa) => {
            let modulus = rsa.modulus;
            let first = modulus.iter().position(|b| *b != 0)?;
            let bits = (modulus.len() - first) * 8;
            (bits == 2048).then_some(KeyType::Rsa2048)
        }
        PublicKey::EC(_) => {
            let params = cert.public_key().algorithm.parameters.as_ref()?;
            let oid = params.as_oid().ok()?;
            (oid.to_id_string() == OID_P256).then_some(KeyType::EcdsaP256)
        }
        _ => None,
    }
}

impl CertFacts {
    pub(crate) fn from_der(der: &[u8]) -> Result<CertFacts, CertParseError> {
        let (rest, cert) = X509Certificate::from_der(der).map_err(CertParseError::Der)?;
        if !rest.is_empty() {
            return Err(CertParseError::Trailing);
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string);
        let organizations = cert
            .subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .map(str::to_string)
            .collect();
        let mut sans = BTreeSet::new();
        let mut foreign_sans = 0;
        if let Some(ext) = cert
            .subject_alternative_name()
            .map_err(|e| CertParseError::Extension("subjectAltName", e))?
        {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => {
                        sans.insert(San::Dns(d.to_ascii_lowercase()));
                    }
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => {
                            let b: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
                            sans.insert(San::Ip(IpAddr::from(b)));
                        }
                        16 => {
                            let mut b = [0u8; 16];
                            b.copy_from_slice(bytes);
                            sans.insert(San::Ip(IpAddr::from(b)));
                        }
                        _ => foreign_sans += 1,
                    },
                    _ => foreign_sans += 1,
                }
            }
        }
        let (server_auth, client_auth) = match cert
            .extended_key_usage()
            .map_err(|e| CertParseError::Extension("extendedKeyUsage", e))?
        {
            Some(eku) => (eku.value.server_auth, eku.value.client_auth),
            None => (false, false),
        };
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| CertParseError::Extension("basicConstraints", e))?
            .is_some_and(|bc| bc.value.ca);
        Ok(CertFacts {
            der: der.to_vec(),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer_raw: cert.issuer().as_raw().to_vec(),
            common_name,
            organizations,
            sans,
            foreign_sans,
            server_auth,
            client_auth,
            is_ca,
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
            public_key_raw: cert.public_key().subject_public_key.data.to_vec(),
            key_type: key_type_of(&cert),
        })
    }

    /// Whether this certificate's signature verifies with `ca`'s public key
    /// and names `ca` as its issuer.
    pub(crate) fn signed_by(&self, ca: &CertFacts) -> bool {
        if self.issuer_raw != ca.subject_raw {
            return false;
        }
        let (Ok((_, leaf)), Ok((_, issuer))) = (
            X509Certificate::from_der(&self.der),
            X509Certificate::from_der(&ca.der),
        ) else {
            return false;
        };
        leaf.verify_signature(Some(issuer.public_key())).is_ok()
    }
}

/// Decodes the first `CERTIFICATE` block of a PEM file to DER.
pub(crate) fn cert_der_from_pem(pem_bytes: &[u8]) -> Result<Vec<u8>, CertParseError> {
    for block in x509_parser::pem::Pem::iter_from_buffer(pem_bytes) {
        let block = block.map_err(CertParseError::Pem)?;
        if block.label == "CERTIFICATE" {
            return Ok(block.contents);
        }
    }
    Err(CertParseError::NoCertificate)
}

/// Why a certificate cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CertParseError {
    #[error("not a DER certificate")]
    Der(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("trailing bytes after the certificate")]
    Trailing,
    #[error("extension {0}")]
    Extension(&'static str, #[source] x509_parser::error::X509Error),
    #[error("invalid PEM")]
    Pem(#[source] x509_parser::error::PEMError),
    #[error("no CERTIFICATE block")]
    NoCertificate,
}

/// Parses a PEM certificate into its facts.
pub(crate) fn facts_from_pem(pem_bytes: &[u8]) -> Result<CertFacts, CertParseError> {
    CertFacts::from_der(&cert_der_from_pem(pem_bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_are_classified_and_validated() {
        assert_eq!(
            San::parse("10.0.0.1").unwrap(),
            San::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            San::parse("fd00::1").unwrap(),
            San::Ip("fd00::1".parse().unwrap())
        );
        assert_eq!(
            San::parse("API.Example.com").unwrap(),
            San::Dns("api.example.com".into())
        );
        assert_eq!(
            San::parse("*.apps.example.com").unwrap(),
            San::Dns("*.apps.example.com".into())
        );
        for bad in ["", "a..b", "bad name", "-x.example", "a.*.b", "x/y"] {
            assert!(San::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
