//! The four certificate authorities: created once, then only ever loaded and
//! checked. A CA is never replaced or overwritten by this module.

use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::error::PkiError;
use super::keys;
use super::paths::PkiPaths;
use super::spec::PkiSpec;
use super::store;
use super::x509::CertFacts;
use super::COMPONENT;

/// One of the four separate certificate authorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ca {
    /// Cluster CA (`ca.crt`): apiserver, kubelets, every Kubernetes client.
    Cluster,
    /// etcd CA (`etcd/ca.crt`): etcd serving/peer certs and etcd clients.
    Etcd,
    /// Front-proxy CA (`front-proxy-ca.crt`): aggregated API request headers.
    FrontProxy,
    /// Konnectivity CA (`konnectivity/ca.crt`): konnectivity server and agents.
    Konnectivity,
}

impl Ca {
    pub const ALL: [Ca; 4] = [Ca::Cluster, Ca::Etcd, Ca::FrontProxy, Ca::Konnectivity];

    /// Name in reports and `certs check-expiration` (kubeadm's spelling).
    pub fn name(self) -> &'static str {
        match self {
            Ca::Cluster => "ca",
            Ca::Etcd => "etcd-ca",
            Ca::FrontProxy => "front-proxy-ca",
            Ca::Konnectivity => "konnectivity-ca",
        }
    }

    fn common_name(self) -> &'static str {
        match self {
            Ca::Cluster => "kubernetes",
            Ca::Etcd => "etcd-ca",
            Ca::FrontProxy => "front-proxy-ca",
            Ca::Konnectivity => "konnectivity-ca",
        }
    }
}

impl std::fmt::Display for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A CA loaded from disk (or just created), ready to sign.
pub(crate) struct LoadedCa {
    pub ca: Ca,
    pub facts: CertFacts,
    pub issuer: Issuer<'static, KeyPair>,
}

/// Loads `ca`, creating it only when neither its certificate nor its key
/// exists. Returns whether it was created.
pub(crate) fn load_or_create(
    paths: &PkiPaths,
    ca: Ca,
    spec: &PkiSpec,
    now: SystemTime,
) -> Result<(LoadedCa, bool), PkiError> {
    let files = paths.ca(ca);
    let cert = store::read_optional_string(&files.cert)?;
    let key = store::read_optional_string(&files.key)?;
    if cert.is_none() && key.is_none() {
        return Ok((create(paths, ca, spec, now)?, true));
    }
    let loaded = load_pair(paths, ca, cert, key, now)?;
    if let Ok(left) = loaded.facts.not_after.duration_since(now) {
        if left <= spec.renew_before {
            tracing::warn!(
                component = COMPONENT,
                ca = ca.name(),
                path = %files.cert.display(),
                not_after = %humantime::format_rfc3339_seconds(loaded.facts.not_after),
                "CA expires soon; CAs are never rotated automatically, plan a CA rotation"
            );
        }
    }
    Ok((loaded, false))
}

/// Loads an existing CA; a missing CA is an error.
pub(crate) fn load_existing(
    paths: &PkiPaths,
    ca: Ca,
    now: SystemTime,
) -> Result<LoadedCa, PkiError> {
    let files = paths.ca(ca);
    let cert = store::read_optional_string(&files.cert)?;
    let key = store::read_optional_string(&files.key)?;
    if cert.is_none() && key.is_none() {
        return Err(PkiError::CaMissing {
            ca: ca.name(),
            cert: files.cert.clone(),
        });
    }
    load_pair(paths, ca, cert, key, now)
}

fn load_pair(
    paths: &PkiPaths,
    ca: Ca,
    cert: Option<String>,
    key: Option<String>,
    now: SystemTime,
) -> Result<LoadedCa, PkiError> {
    let files = paths.ca(ca);
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            return Err(PkiError::CaKeyMissing {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        (None, _) => {
            return Err(PkiError::CaCertMissing {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
    };
    let facts =
        super::x509::facts_from_pem(cert.as_bytes()).map_err(|source| PkiError::CertParse {
            path: files.cert.clone(),
            source,
        })?;
    let key = keys::load_pem(&key).map_err(|source| PkiError::ParseKey {
        path: files.key.clone(),
        source,
    })?;
    if !facts.is_ca {
        return Err(PkiError::NotACa {
            cert: files.cert.clone(),
        });
    }
    if key.public_key_raw() != facts.public_key_raw.as_slice() {
        return Err(PkiError::CaKeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        });
    }
    if facts.not_after <= now {
        return Err(PkiError::CaExpired {
            cert: files.cert.clone(),
            not_after: humantime::format_rfc3339_seconds(facts.not_after).to_string(),
        });
    }
    let issuer = Issuer::from_ca_cert_der(&facts.der.clone().into(), key).map_err(|e| {
        PkiError::ParseCert {
            path: files.cert.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(LoadedCa { ca, facts, issuer })
}

fn create(paths: &PkiPaths, ca: Ca, spec: &PkiSpec, now: SystemTime) -> Result<LoadedCa, PkiError> {
    let files = paths.ca(ca);
    let gen_err = |source| PkiError::Generate {
        what: format!("{} certificate", ca.name()),
        source,
    };
    let key = keys::generate(spec.key_type, ca.name())?;
    let (not_before, not_after) = store::validity(now, spec.ca_lifetime)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca.common_name());
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    // Path length 0: these CAs sign leaves only, never intermediates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(store::random_serial()?);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    let cert_pem = cert.pem();
    // Key first: a crash between the two writes leaves a key without a
    // certificate, which the next run reports instead of silently replacing.
    store::write_key(&files.key, &key.serialize_pem())?;
    store::write_cert(&files.cert, &cert_pem)?;
    tracing::info!(component = COMPONENT, ca = ca.name(), path = %files.cert.display(), "created CA");
    let facts = CertFacts::from_der(cert.der()).map_err(|source| PkiError::CertParse {
        path: files.cert.clone(),
        source,
    })?;
    // Same construction as a CA loaded from disk, so leaves come out
    // identical either way.
    let issuer = Issuer::from_ca_cert_der(cert.der(), key).map_err(gen_err)?;
    Ok(LoadedCa { ca, facts, issuer })
}
