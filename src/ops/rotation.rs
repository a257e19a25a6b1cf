//! Live leaf rotation: a loop wakes when the next leaf enters `renewBefore`,
//! renews what is due through `pki::ensure` and restarts exactly the
//! components that use a renewed leaf (`Component::uses_certs`). mkectl
//! itself keeps running; CAs are never touched (`ensure` never replaces one).
//! `mkectl certs renew` forces a renewal through the same path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::OpsError;
use crate::components::ManagerHandle;
use crate::pki::{self, Leaf, PkiPaths, PkiSpec};

/// The loop looks at the certificates at least this often, so a clock jump
/// or a certificate changed on disk is noticed.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// ... and never more often than this.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Past the due time, so the check never lands a hair before it.
pub const DUE_SLACK: Duration = Duration::from_secs(1);
/// Wait after a failed renewal before trying again.
pub const RETRY_AFTER_ERROR: Duration = Duration::from_secs(30);

/// Suffix of a certificate moved aside while a forced renewal runs.
const ASIDE_SUFFIX: &str = "renewing";

/// What one renewal did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewOutcome {
    /// Leaves reissued.
    pub renewed: Vec<String>,
    /// Components restarted to load them.
    pub restarted: Vec<String>,
    /// `component: error` for restarts that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

/// How long to sleep before the next look, given when the next leaf is due.
pub fn next_check_in(due: Option<SystemTime>, now: SystemTime) -> Duration {
    let Some(due) = due else {
        return MAX_CHECK_INTERVAL;
    };
    let until = due.duration_since(now).unwrap_or(Duration::ZERO) + DUE_SLACK;
    until.clamp(MIN_CHECK_INTERVAL, MAX_CHECK_INTERVAL)
}

/// Why a list of certificate names to renew was refused.
#[derive(Debug, thiserror::Error)]
pub enum LeafSelectionError {
    #[error("give certificate names or --all, not both")]
    NamesAndAll,
    #[error("name the certificates to renew, or pass --all")]
    NothingNamed,
    #[error(
        "{name} is a CA; mkectl never renews CAs (rotating a CA means re-trusting every node)"
    )]
    Ca { name: String },
    #[error("certificate {name:?} is not maintained on this node (only a controller running with --enable-worker has it); known: {known}")]
    NotMaintained { name: String, known: String },
    #[error("certificate {name:?} is unknown; known: {known}")]
    Unknown { name: String, known: String },
}

/// Leaf names (`etcd-server`, ...) to leaves; `all` means every leaf of
/// `maintained` (the node's [`PkiSpec::leaves`]). CA names are refused: CAs
/// are never renewed by mkectl; so are leaves this node does not maintain.
pub fn parse_leaves(
    names: &[String],
    all: bool,
    maintained: &[Leaf],
) -> Result<Vec<Leaf>, LeafSelectionError> {
    match (all, names.is_empty()) {
        (true, false) => return Err(LeafSelectionError::NamesAndAll),
        (false, true) => return Err(LeafSelectionError::NothingNamed),
        (true, true) => return Ok(maintained.to_vec()),
        (false, false) => {}
    }
    let mut out = Vec::new();
    for n in names {
        if pki::Ca::ALL.iter().any(|ca| ca.name() == n) {
            return Err(LeafSelectionError::Ca { name: n.clone() });
        }
        let Some(leaf) = maintained.iter().find(|l| l.is_named(n)) else {
            let known: Vec<_> = maintained.iter().map(|l| l.name()).collect();
            let known = known.join(", ");
            return Err(if Leaf::every().any(|l| l.is_named(n)) {
                LeafSelectionError::NotMaintained {
                    name: n.clone(),
                    known,
                }
            } else {
                LeafSelectionError::Unknown {
                    name: n.clone(),
                    known,
                }
            });
        };
        if !out.contains(leaf) {
            out.push(*leaf);
        }
    }
    Ok(out)
}

fn leaves_named(names: &[String]) -> Vec<Leaf> {
    Leaf::every()
        .filter(|l| names.iter().any(|n| n == l.name()))
        .collect()
}

fn aside_path(cert: &Path) -> PathBuf {
    let mut s = cert.as_os_str().to_owned();
    s.push(".");
    s.push(ASIDE_SUFFIX);
    PathBuf::from(s)
}

/// Reissues `leaves` now, whatever their expiry, plus anything else
/// `ensure` finds due. Each forced certificate is moved aside so `ensure`
/// issues it afresh (with a new key); if `ensure` fails, the old ones are put
/// back. Returns the names of every leaf reissued. Blocking.
pub fn force_renew(spec: &PkiSpec, leaves: &[Leaf]) -> Result<Vec<String>, OpsError> {
    let paths = PkiPaths::new(&spec.dir);
    // A leaf `ensure` does not maintain would be moved aside and not
    // reissued: refuse before touching anything.
    let maintained = spec.leaves();
    if let Some(leaf) = leaves.iter().find(|l| !maintained.contains(l)) {
        return Err(OpsError::NotMaintained(leaf.name()));
    }
    let mut moved = Vec::new();
    for leaf in leaves {
        let cert = paths.leaf(*leaf).cert.clone();
        let aside = aside_path(&cert);
        match std::fs::rename(&cert, &aside) {
            Ok(()) => moved.push((cert, aside)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                restore_aside(&moved);
                return Err(OpsError::Io { path: cert, source });
            }
        }
    }
    match pki::ensure(spec) {
        Ok(report) => {
            for (_, aside) in &moved {
                let _ = std::fs::remove_file(aside);
            }
            let mut names = report.renewed;
            names.extend(
                report
                    .created
                    .into_iter()
                    .filter(|n| Leaf::every().any(|l| l.name() == n)),
            );
            Ok(names)
        }
        Err(e) => {
            restore_aside(&moved);
            Err(e.into())
        }
    }
}

fn restore_aside(moved: &[(PathBuf, PathBuf)]) {
    for (cert, aside) in moved {
        if cert.exists() {
            let _ = std::fs::remove_file(aside);
        } else if let Err(e) = std::fs::rename(aside, cert) {
            warn!(component = "rotation", path = %cert.display(), error = %e, "cannot put the old certificate back");
        }
    }
}

/// Renews leaves and restarts their users; one renewal at a time.
pub struct Rotator {
    spec: PkiSpec,
    manager: ManagerHandle,
    cancel: CancellationToken,
    lock: tokio::sync::Mutex<()>,
}

impl Rotator {
    pub fn new(spec: PkiSpec, manager: ManagerHandle, cancel: CancellationToken) -> Self {
        Self {
            spec,
            manager,
            cancel,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The leaves this node maintains.
    pub fn leaves(&self) -> Vec<Leaf> {
        self.spec.leaves()
    }

    /// Renews whatever is within `renewBefore`.
    pub async fn renew_due(&self) -> Result<RenewOutcome, OpsError> {
        self.renew(Vec::new()).await
    }

    /// Forces `leaves` (and renews whatever else is due), then restarts the
    /// components that use a renewed leaf.
    pub async fn renew(&self, leaves: Vec<Leaf>) -> Result<RenewOutcome, OpsError> {
        let _one_at_a_time = self.lock.lock().await;
        let spec = self.spec.clone();
        let renewed = tokio::task::spawn_blocking(move || force_renew(&spec, &leaves))
            .await
            .map_err(OpsError::Task)??;
        let mut outcome = RenewOutcome {
            renewed: renewed.clone(),
            ..RenewOutcome::default()
        };
        if renewed.is_empty() {
            return Ok(outcome);
        }
        info!(component = "rotation", certs = ?renewed, "renewed certificates");
        for (name, result) in self
            .manager
            .restart_using(&leaves_named(&renewed), &self.cancel)
            .await
        {
            match result {
                Ok(()) => outcome.restarted.push(name.to_string()),
                Err(e) => outcome
                    .failed
                    .push(format!("{name}: {}", crate::telemetry::Chain(&e))),
            }
        }
        Ok(outcome)
    }

    /// The periodic check, until `cancel`.
    pub async fn run(self: Arc<Self>) {
        let dir = self.spec.dir.clone();
        let renew_before = self.spec.renew_before;
        let leaves = self.spec.leaves();
        loop {
            let (d, l) = (dir.clone(), leaves.clone());
            let due =
                tokio::task::spawn_blocking(move || pki::next_renewal_due(&d, renew_before, &l))
                    .await;
            let wait = match due {
                Ok(Ok(due)) => {
                    if due.is_some_and(|t| t <= SystemTime::now()) {
                        match self.renew_due().await {
                            Ok(o) if o.renewed.is_empty() => RETRY_AFTER_ERROR,
                            Ok(o) => {
                                info!(component = "rotation", renewed = ?o.renewed, restarted = ?o.restarted, failed = ?o.failed, "certificate rotation done");
                                MIN_CHECK_INTERVAL
                            }
                            Err(e) => {
                                warn!(component = "rotation", error = %crate::telemetry::Chain(&e), "certificate renewal failed; retrying");
                                RETRY_AFTER_ERROR
                            }
                        }
                    } else {
                        next_check_in(due, SystemTime::now())
                    }
                }
                Ok(Err(e)) => {
                    warn!(component = "rotation", error = %crate::telemetry::Chain(&e), "cannot read certificate expiry");
                    RETRY_AFTER_ERROR
                }
                Err(e) => {
                    warn!(component = "rotation", error = %e, "expiry check task failed");
                    RETRY_AFTER_ERROR
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_wakes_at_the_due_time_within_bounds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(next_check_in(None, now), MAX_CHECK_INTERVAL);
        assert_eq!(
            next_check_in(Some(now + Duration::from_secs(30)), now),
            Duration::from_secs(31)
        );
        assert_eq!(
            next_check_in(Some(now + Duration::from_secs(86_400)), now),
            MAX_CHECK_INTERVAL
        );
        assert_eq!(
            next_check_in(Some(now - Duration::from_secs(5)), now),
            MIN_CHECK_INTERVAL
        );
    }

    #[test]
    fn leaf_names_are_checked() {
        let all = Leaf::ALL;
        assert_eq!(
            parse_leaves(&[], true, &all).unwrap().len(),
            Leaf::ALL.len()
        );
        assert_eq!(
            parse_leaves(&["etcd-server".into(), "etcd-server".into()], false, &all).unwrap(),
            [Leaf::EtcdServer]
        );
        assert_eq!(
            parse_leaves(
                &[
                    "kube-apiserver".into(),
                    "apiserver".into(),
                    "kube-scheduler".into()
                ],
                false,
                &all
            )
            .unwrap(),
            vec![Leaf::ApiServer, Leaf::Scheduler],
            "component names are aliases of their certificates"
        );
        assert!(parse_leaves(&[], false, &all).is_err());
        assert!(parse_leaves(&["admin".into()], true, &all).is_err());
        let e = parse_leaves(&["etcd-ca".into()], false, &all)
            .unwrap_err()
            .to_string();
        assert!(e.contains("never renews CAs"), "{e}");
        let e = parse_leaves(&["nope".into()], false, &all)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown") && e.contains("apiserver-etcd-client"),
            "{e}"
        );
        // The worker leaves exist only on a controller with --enable-worker.
        let e = parse_leaves(&["kubelet-client".into()], false, &all)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--enable-worker"), "{e}");
        let with_worker: Vec<Leaf> = Leaf::every().collect();
        assert_eq!(
            parse_leaves(&["kubelet-client".into()], false, &with_worker).unwrap(),
            [Leaf::KubeletClient]
        );
        assert_eq!(parse_leaves(&[], true, &with_worker).unwrap().len(), 12);
    }

    fn spec(dir: &Path) -> PkiSpec {
        let mut s = PkiSpec::new(dir, "n1");
        s.node_addresses = vec!["127.0.0.1".parse().unwrap()];
        s
    }

    #[test]
    fn forced_renewal_reissues_only_what_was_asked_and_keeps_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let s = spec(&tmp.path().join("pki"));
        pki::ensure(&s).unwrap();
        let paths = PkiPaths::new(&s.dir);
        let read = |p: &Path| std::fs::read(p).unwrap();
        let ca = read(&paths.etcd_ca.cert);
        let server = read(&paths.etcd_server.cert);
        let peer = read(&paths.etcd_peer.cert);
        let admin_conf = read(&paths.admin_kubeconfig);

        let renewed = force_renew(&s, &[Leaf::EtcdServer, Leaf::Admin]).unwrap();
        assert_eq!(renewed.len(), 2, "{renewed:?}");
        assert!(renewed.contains(&"etcd-server".to_string()));
        assert_ne!(read(&paths.etcd_server.cert), server);
        assert_eq!(read(&paths.etcd_peer.cert), peer);
        assert_eq!(read(&paths.etcd_ca.cert), ca);
        assert_ne!(
            read(&paths.admin_kubeconfig),
            admin_conf,
            "kubeconfig follows its cert"
        );
        assert!(!aside_path(&paths.etcd_server.cert).exists());
        assert!(pki::ensure(&s).unwrap().is_unchanged());
    }

    #[test]
    fn failed_renewal_puts_the_old_certificate_back() {
        let tmp = tempfile::tempdir().unwrap();
        let s = spec(&tmp.path().join("pki"));
        pki::ensure(&s).unwrap();
        let paths = PkiPaths::new(&s.dir);
        let before = std::fs::read(&paths.etcd_server.cert).unwrap();
        // A CA that no longer loads makes ensure fail.
        std::fs::write(&paths.etcd_ca.key, "garbage").unwrap();
        assert!(force_renew(&s, &[Leaf::EtcdServer]).is_err());
        assert_eq!(std::fs::read(&paths.etcd_server.cert).unwrap(), before);
        assert!(!aside_path(&paths.etcd_server.cert).exists());
    }

    #[test]
    fn worker_leaves_are_renewed_only_where_maintained() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = spec(&tmp.path().join("pki"));
        s.worker = true;
        pki::ensure(&s).unwrap();
        let paths = PkiPaths::new(&s.dir);
        let before = std::fs::read(&paths.kubelet_client.cert).unwrap();
        let renewed = force_renew(&s, &[Leaf::KubeletClient]).unwrap();
        assert_eq!(renewed, ["kubelet-client"]);
        assert_ne!(std::fs::read(&paths.kubelet_client.cert).unwrap(), before);

        // Without --enable-worker the file is left exactly as it is.
        s.worker = false;
        let kept = std::fs::read(&paths.kubelet_client.cert).unwrap();
        let e = force_renew(&s, &[Leaf::KubeletClient]).unwrap_err();
        assert!(e.to_string().contains("kubelet-client"), "{e}");
        assert_eq!(std::fs::read(&paths.kubelet_client.cert).unwrap(), kept);
    }
}
