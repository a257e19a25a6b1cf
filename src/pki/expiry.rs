//! Expiry overview for `mkectl certs check-expiration` and the renewal timer.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::ca::Ca;
use super::error::PkiError;
use super::leaf::Leaf;
use super::paths::PkiPaths;
use super::store;
use super::x509::facts_from_pem;

/// One certificate of the PKI as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// `ca`, `etcd-ca`, `apiserver`, `etcd-peer`, `admin`, ...
    pub name: String,
    pub path: PathBuf,
    /// RFC 4514-style subject, e.g. `O=system:masters, CN=kubernetes-admin`.
    pub subject: String,
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    /// For a leaf, the name of the CA that signs it (`None` for CAs).
    pub authority: Option<String>,
}

impl CertInfo {
    /// Time left until expiry at `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or(Duration::ZERO)
    }
}

/// Every CA and leaf certificate present in `pki_dir` (CAs first, then
/// leaves in a fixed order). Missing files are skipped; an unreadable or
/// unparseable certificate is an error naming the file.
pub fn list_certificates(pki_dir: &Path) -> Result<Vec<CertInfo>, PkiError> {
    let paths = PkiPaths::new(pki_dir);
    let mut entries: Vec<(String, PathBuf, Option<String>)> = Ca::ALL
        .iter()
        .map(|ca| (ca.name().to_string(), paths.ca(*ca).cert.clone(), None))
        .collect();
    entries.extend(Leaf::every().map(|leaf| {
        (
            leaf.name().to_string(),
            paths.leaf(leaf).cert.clone(),
            Some(leaf.ca().name().to_string()),
        )
    }));
    let mut out = Vec::new();
    for (name, path, authority) in entries {
        let Some(pem) = store::read_optional(&path)? else {
            continue;
        };
        let facts = facts_from_pem(&pem).map_err(|source| PkiError::CertParse {
            path: path.clone(),
            source,
        })?;
        out.push(CertInfo {
            name,
            path,
            subject: facts.subject,
            issuer: facts.issuer,
            not_before: facts.not_before,
            not_after: facts.not_after,
            is_ca: facts.is_ca,
            authority,
        });
    }
    Ok(out)
}

/// When the next of `leaves` falls into the renewal window (its expiry
/// minus `renew_before`), so the controller can schedule the next `ensure`.
/// Leaves left on disk that `ensure` no longer maintains (a controller that
/// ran with `--enable-worker` once) do not count. `None` when there are no
/// leaves yet.
pub fn next_renewal_due(
    pki_dir: &Path,
    renew_before: Duration,
    leaves: &[Leaf],
) -> Result<Option<SystemTime>, PkiError> {
    Ok(list_certificates(pki_dir)?
        .iter()
        .filter(|c| !c.is_ca && leaves.iter().any(|l| l.name() == c.name))
        .map(|c| {
            c.not_after
                .checked_sub(renew_before)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        })
        .min())
}
