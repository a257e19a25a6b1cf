//! `ensure`: bring the PKI directory to the state the spec describes, writing
//! only what is missing or must be renewed.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::ca::{self, Ca, LoadedCa};
use super::error::PkiError;
use super::keys;
use super::kubeconfig::{render_kubeconfig, KubeconfigUser};
use super::leaf::{self, Leaf};
use super::paths::PkiPaths;
use super::spec::PkiSpec;
use super::store;
use super::COMPONENT;
use crate::fsutil::{self, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, PUBLIC_FILE_MODE};

/// What one `ensure` run changed, by certificate name (`ca`, `apiserver`,
/// `etcd-peer`, ..., and `sa` for the service-account key pair). A renewed
/// leaf means the component using it must be restarted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PkiReport {
    pub created: Vec<String>,
    pub renewed: Vec<String>,
}

impl PkiReport {
    /// Whether nothing was created or renewed.
    pub fn is_unchanged(&self) -> bool {
        self.created.is_empty() && self.renewed.is_empty()
    }
}

/// Ensures the full PKI of `spec` exists and is valid now.
pub fn ensure(spec: &PkiSpec) -> Result<PkiReport, PkiError> {
    ensure_at(spec, SystemTime::now())
}

/// [`ensure`] as if the clock read `now` (tests, expiry simulation).
pub fn ensure_at(spec: &PkiSpec, now: SystemTime) -> Result<PkiReport, PkiError> {
    let span = tracing::info_span!("pki", component = COMPONENT, dir = %spec.dir.display());
    let _guard = span.enter();
    spec.validate()?;
    let paths = PkiPaths::new(&spec.dir);
    for dir in [&paths.dir, &paths.etcd_dir, &paths.konnectivity_dir] {
        fsutil::ensure_dir(dir, PRIVATE_DIR_MODE)?;
    }

    let mut report = PkiReport::default();
    let mut cas: BTreeMap<Ca, LoadedCa> = BTreeMap::new();
    for ca in Ca::ALL {
        let (loaded, created) = ca::load_or_create(&paths, ca, spec, now)?;
        store::enforce_modes(paths.ca(ca))?;
        if created {
            report.created.push(ca.name().to_string());
        }
        cas.insert(ca, loaded);
    }

    for leaf in spec.leaves() {
        let Some(ca) = cas.get(&leaf.ca()) else {
            // Every CA in Ca::ALL was inserted just above.
            continue;
        };
        let files = paths.leaf(leaf);
        let profile = leaf::profile(leaf, spec)?;
        let Some(reason) =
            leaf::reissue_reason(files, &profile, ca, spec.key_type, spec.renew_before, now)
        else {
            // Kept as is; only tighten permissions someone may have loosened.
            store::enforce_modes(files)?;
            continue;
        };
        let existed = files.cert.exists();
        let issued = leaf::issue(
            &profile,
            ca,
            spec.key_type,
            spec.leaf_lifetime,
            now,
            leaf.name(),
        )?;
        leaf::write(files, &issued)?;
        if existed {
            tracing::info!(component = COMPONENT, cert = leaf.name(), %reason, "renewed certificate");
            report.renewed.push(leaf.name().to_string());
        } else {
            tracing::info!(
                component = COMPONENT,
                cert = leaf.name(),
                "created certificate"
            );
            report.created.push(leaf.name().to_string());
        }
    }

    if ensure_service_account_keys(&paths, spec)? {
        report.created.push("sa".to_string());
    }

    let ca_pem = String::from_utf8_lossy(&fsutil::read(&paths.ca.cert)?).into_owned();
    for leaf in spec.leaves() {
        // Only the leaves that have a kubeconfig (PkiPaths::kubeconfig).
        write_kubeconfig(&paths, spec, leaf, &ca_pem)?;
    }

    if report.is_unchanged() {
        tracing::debug!(component = COMPONENT, "PKI up to date");
    } else {
        tracing::info!(
            component = COMPONENT,
            created = ?report.created,
            renewed = ?report.renewed,
            "PKI updated"
        );
    }
    Ok(report)
}

/// Creates `sa.key` if absent (never rotates it) and keeps `sa.pub` derived
/// from it. Returns whether a new key was generated.
fn ensure_service_account_keys(paths: &PkiPaths, spec: &PkiSpec) -> Result<bool, PkiError> {
    let (key, created) = match store::read_optional_string(&paths.sa_key)? {
        Some(pem) => {
            let key = keys::load_pem(&pem).map_err(|source| PkiError::ParseKey {
                path: paths.sa_key.clone(),
                source,
            })?;
            // Keep its permissions tight even if someone loosened them.
            fsutil::set_mode(&paths.sa_key, PRIVATE_FILE_MODE)?;
            (key, false)
        }
        None => {
            if paths.sa_pub.exists() {
                return Err(PkiError::SaKeyMissing {
                    key: paths.sa_key.clone(),
                    public: paths.sa_pub.clone(),
                });
            }
            let key = keys::generate(spec.key_type, "service-account")?;
            store::write_key(&paths.sa_key, &key.serialize_pem())?;
            tracing::info!(component = COMPONENT, path = %paths.sa_key.display(), "created service-account signing key");
            (key, true)
        }
    };
    fsutil::write_atomic(
        &paths.sa_pub,
        key.public_key_pem().as_bytes(),
        PUBLIC_FILE_MODE,
    )?;
    Ok(created)
}

/// Renders the kubeconfig of `leaf` from its certificate files; rewritten
/// only when the content differs.
fn write_kubeconfig(
    paths: &PkiPaths,
    spec: &PkiSpec,
    leaf: Leaf,
    ca_pem: &str,
) -> Result<(), PkiError> {
    let Some(target) = paths.kubeconfig(leaf) else {
        return Ok(());
    };
    let files = paths.leaf(leaf);
    let read = |p: &std::path::Path| -> Result<String, PkiError> {
        Ok(String::from_utf8_lossy(&fsutil::read(p)?).into_owned())
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let profile = leaf::profile(leaf, spec)?;
    let server = match (&spec.kubelet_server_url, leaf) {
        (Some(url), Leaf::KubeletClient) => url.trim(),
        _ => spec.api_server_url.trim(),
    };
    let yaml = render_kubeconfig(
        &spec.cluster_name,
        server,
        ca_pem,
        &profile.common_name,
        KubeconfigUser::ClientCert {
            cert_pem: &cert_pem,
            key_pem: &key_pem,
        },
    )?;
    if fsutil::write_atomic(target, yaml.as_bytes(), PRIVATE_FILE_MODE)? {
        tracing::info!(component = COMPONENT, path = %target.display(), "wrote kubeconfig");
    }
    Ok(())
}
