//! Cluster PKI for controllers: four separate CAs, the kubeadm-like set of
//! leaf certificates, the service-account key pair and the kubeconfigs of the
//! admin, controller-manager and scheduler.
//!
//! [`ensure`] is the one entry point the controller calls before anything
//! starts. It is idempotent: a second run with the same [`PkiSpec`] changes no
//! byte and no mtime. Everything is written atomically through
//! [`crate::fsutil`]; keys are 0600, certificates and public keys 0644,
//! directories 0700.
//!
//! # On-disk layout (`<data-dir>/pki`)
//!
//! | file | what | signed by |
//! |---|---|---|
//! | `ca.crt` / `ca.key` | cluster CA (CN `kubernetes`) | self |
//! | `apiserver.crt` / `.key` | kube-apiserver serving (serverAuth) | cluster CA |
//! | `apiserver-kubelet-client.crt` / `.key` | CN `kube-apiserver-kubelet-client`, O `system:masters` (clientAuth) | cluster CA |
//! | `admin.crt` / `.key` | CN `kubernetes-admin`, O `system:masters` (clientAuth) | cluster CA |
//! | `controller-manager.crt` / `.key` | CN `system:kube-controller-manager` (clientAuth) | cluster CA |
//! | `scheduler.crt` / `.key` | CN `system:kube-scheduler` (clientAuth) | cluster CA |
//! | `front-proxy-ca.crt` / `.key` | front-proxy CA (CN `front-proxy-ca`) | self |
//! | `front-proxy-client.crt` / `.key` | CN `front-proxy-client` (clientAuth) | front-proxy CA |
//! | `etcd/ca.crt` / `ca.key` | etcd CA (CN `etcd-ca`) | self |
//! | `etcd/server.crt` / `.key` | etcd client-facing serving cert (serverAuth+clientAuth) | etcd CA |
//! | `etcd/peer.crt` / `.key` | etcd peer cert (serverAuth+clientAuth) | etcd CA |
//! | `apiserver-etcd-client.crt` / `.key` | CN `kube-apiserver-etcd-client` (clientAuth) | etcd CA |
//! | `konnectivity/ca.crt` / `ca.key` | konnectivity CA (CN `konnectivity-ca`) | self |
//! | `konnectivity/server.crt` / `.key` | konnectivity agent listener (serverAuth) | konnectivity CA |
//! | `sa.key` / `sa.pub` | service-account token signing pair (`PUBLIC KEY` PEM) | – |
//! | `admin.conf`, `controller-manager.conf`, `scheduler.conf` | kubeconfigs with embedded CA, cert and key (0600) | – |
//! | `kubelet-client.crt` / `.key`, `kubelet.conf` | only with [`PkiSpec::worker`] (`controller --enable-worker`): CN `system:node:<node>`, O `system:nodes` (clientAuth) and the kubelet's kubeconfig | cluster CA |
//! | `konnectivity/agent.crt` / `.key` | only with [`PkiSpec::worker`]: CN `konnectivity-agent:<node>`, IP SANs the node addresses (clientAuth) | konnectivity CA |
//!
//! The client certificates of the three kubeconfigs are kept as files as well
//! so expiry checks and renewal treat them like every other leaf; the
//! kubeconfigs are rendered from those files on every run (and only rewritten
//! when their content changes).
//!
//! # Renewal and trust rules
//!
//! * A leaf is (re)issued when it is missing, unreadable, its key does not
//!   match, it is not signed by its current CA, it expires within
//!   `renew_before`, or its identity (subject, SANs, usages, key type) no
//!   longer matches the spec, e.g. after a node address changed.
//! * Renewal **rotates the leaf key**: a fresh key is generated every time a
//!   leaf is issued, so a leaked old key dies with its certificate. The key is
//!   written before the certificate; a crash in between leaves a mismatched
//!   pair that the next run detects and reissues.
//! * A CA is never created over existing material and never replaced: an
//!   existing CA must load (cert + matching key, a CA, not expired) or
//!   [`ensure`] fails naming the file. A CA expiring within `renew_before` is
//!   kept and logged as a warning; rotating a CA is an operator action.
//! * `sa.key` is never rotated automatically (rotating it invalidates every
//!   service-account token); `sa.pub` is re-derived from it.
//! * Leaf lifetimes are not capped at the CA's expiry: an expired CA stops
//!   [`ensure`] with an error long before that matters, and capping would
//!   make a CA close to expiry reissue its leaves on every run.

mod ca;
mod ensure;
mod error;
mod expiry;
mod keys;
mod kubeconfig;
mod leaf;
mod paths;
mod spec;
mod store;
mod subject;
mod x509;

pub use ca::Ca;
pub use ensure::{ensure, ensure_at, PkiReport};
pub use error::PkiError;
pub use expiry::{list_certificates, next_renewal_due, CertInfo};
pub use keys::{spki_sha256, spki_sha256_der};
pub use kubeconfig::{render_kubeconfig, KubeconfigUser};
pub use leaf::{
    inspect_csr, issue_client_cert, issue_client_cert_at, issue_server_cert, sign_csr,
    sign_csr_adding_sans, sign_csr_at, CertUsage, CsrInfo, CsrKeyType, IssuedCert, Leaf,
};
pub use paths::{CertKeyPaths, PkiPaths};
pub use spec::{
    KeyType, PkiSpec, DEFAULT_CA_LIFETIME, DEFAULT_CLUSTER_DOMAIN, DEFAULT_CLUSTER_NAME,
    DEFAULT_FIRST_SERVICE_IP, DEFAULT_LEAF_LIFETIME, DEFAULT_RENEW_BEFORE,
};
pub use x509::CertParseError;

/// The `component` field of every span and event this module emits.
pub(crate) const COMPONENT: &str = "pki";
