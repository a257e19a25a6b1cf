//! The controller's approver for kubelet serving certificates.
//!
//! Kubelets run with `serverTLSBootstrap: true`: instead of a self-signed
//! certificate they request one from the cluster CA with a CSR for the
//! `kubernetes.io/kubelet-serving` signer. kube-controller-manager signs
//! approved CSRs but approves none of this signer itself, so without an
//! approver the kubelet API (logs, exec, port-forward through konnectivity)
//! has no trusted certificate. Approving blindly would let any node get a
//! certificate for another node's name or address, so every CSR is checked
//! by [`decide`]:
//!
//! * the requester is `system:node:<name>` in group `system:nodes`;
//! * the CSR is signed by the key it carries (proof of possession) and the
//!   key is EC or RSA of at least 2048 bits;
//! * the subject is exactly CN `system:node:<name>` (the requester) and
//!   O `system:nodes`;
//! * the usages are `server auth`, optionally with `digital signature` and
//!   `key encipherment`, nothing else;
//! * it asks for at least one DNS or IP SAN and no other kind (email, URI);
//!   every DNS SAN is the node name or a host name in the Node's
//!   `status.addresses`, every IP SAN is one of the Node's IP addresses.
//!
//! A CSR that fails a check is denied with the reason; one whose Node is not
//! registered yet is left pending and looked at again on the next resync.
//! CSRs for other signers, and ones already approved or denied, are ignored.
//!
//! Node addresses are reported by the node's own kubelet, so the address check
//! stops a node from claiming another node's *name*, and a compromised node
//! from getting a certificate for an address it did not register.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::kubeapi::{Api, KubeError, ListParams, WatchEvent};
use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::{Component, ComponentError};

pub const NAME: &str = "csr-approver";
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
pub const NODE_USER_PREFIX: &str = "system:node:";
pub const NODES_GROUP: &str = "system:nodes";
/// Usages a kubelet serving certificate may carry.
pub const ALLOWED_USAGES: &[&str] = &["digital signature", "key encipherment", "server auth"];
pub const REQUIRED_USAGE: &str = "server auth";
pub const MIN_RSA_BITS: usize = 2048;
pub const APPROVE_REASON: &str = "AutoApproved";
pub const DENY_REASON: &str = "AutoDenied";
/// Pending CSRs (e.g. waiting for their Node) are looked at again this often.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);
/// First retry after an apiserver error; doubles up to [`RETRY_MAX`].
pub const RETRY_INITIAL: Duration = Duration::from_millis(500);
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long `stop` waits for the loop to finish.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The facts of a CSR the decision needs (from the API object).
#[derive(Debug, Clone, Default)]
pub struct CsrFacts {
    pub name: String,
    pub signer_name: String,
    pub username: String,
    pub groups: Vec<String>,
    pub usages: Vec<String>,
    /// `spec.request`: the PEM `CERTIFICATE REQUEST`.
    pub request: Vec<u8>,
    /// An `Approved`, `Denied` or `Failed` condition is present.
    pub decided: bool,
}

impl CsrFacts {
    pub fn from_object(csr: &CertificateSigningRequest) -> Self {
        let decided = csr
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| {
                cs.iter()
                    .any(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed"))
            })
            .unwrap_or(false);
        Self {
            name: csr.metadata.name.clone().unwrap_or_default(),
            signer_name: csr.spec.signer_name.clone(),
            username: csr.spec.username.clone().unwrap_or_default(),
            groups: csr.spec.groups.clone().unwrap_or_default(),
            usages: csr.spec.usages.clone().unwrap_or_default(),
            request: csr.spec.request.0.clone(),
            decided,
        }
    }

    /// The node the requester claims to be, if the username is a node's.
    pub fn node_name(&self) -> Option<&str> {
        self.username
            .strip_prefix(NODE_USER_PREFIX)
            .filter(|n| !n.is_empty())
    }
}

/// A Node's name and `status.addresses` (`(type, address)`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub addresses: Vec<(String, String)>,
}

impl NodeFacts {
    pub fn from_object(node: &Node) -> Self {
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            addresses: node
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .map(|a| {
                    a.iter()
                        .map(|a| (a.type_.clone(), a.address.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn ips(&self) -> Vec<IpAddr> {
        self.addresses
            .iter()
            .filter(|(t, _)| t == "InternalIP" || t == "ExternalIP")
            .filter_map(|(_, a)| a.parse().ok())
            .collect()
    }

    fn dns_names(&self) -> Vec<&str> {
        let mut names = vec![self.name.as_str()];
        names.extend(
            self.addresses
                .iter()
                .filter(|(t, _)| matches!(t.as_str(), "Hostname" | "InternalDNS" | "ExternalDNS"))
                .map(|(_, a)| a.as_str()),
        );
        names
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve,
    /// Deny, with the reason written into the CSR's condition message.
    Deny(String),
    /// Leave it alone (not ours, already decided, or not decidable yet).
    Skip(String),
}

/// What the parsed CSR asks for.
struct Requested {
    common_names: Vec<String>,
    organizations: Vec<String>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    other_sans: Vec<String>,
}

/// Why a CSR's request cannot be approved on its face; the text becomes
/// the denial reason.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("request is not PEM")]
    NotPem(#[source] x509_parser::nom::Err<x509_parser::error::PEMError>),
    #[error("request is a PEM {0:?}, not a CERTIFICATE REQUEST")]
    WrongLabel(String),
    #[error("request does not parse")]
    Parse(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("RSA key of {bits} bits (at least {MIN_RSA_BITS} required)")]
    WeakRsa { bits: usize },
    #[error("key type not allowed (EC or RSA only)")]
    KeyType,
    #[error("public key does not parse")]
    PublicKey(#[source] x509_parser::error::X509Error),
    #[error("request signature does not verify")]
    Signature(#[source] x509_parser::error::X509Error),
}

fn parse_request(pem: &[u8]) -> Result<Requested, RequestError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(RequestError::NotPem)?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(RequestError::WrongLabel(pem.label));
    }
    let (_, csr) =
        X509CertificationRequest::from_der(&pem.contents).map_err(RequestError::Parse)?;
    let info = &csr.certification_request_info;
    match info.subject_pki.parsed() {
        Ok(PublicKey::EC(_)) => {}
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= MIN_RSA_BITS => {}
        Ok(PublicKey::RSA(rsa)) => {
            return Err(RequestError::WeakRsa {
                bits: rsa.key_size(),
            })
        }
        Ok(_) => return Err(RequestError::KeyType),
        Err(e) => return Err(RequestError::PublicKey(e)),
    }
    // After the key check: ring refuses to verify with weak keys, and the
    // reason should say why.
    csr.verify_signature().map_err(RequestError::Signature)?;
    let strings = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.map(|a| a.as_str().map(str::to_string).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let mut req = Requested {
        common_names: strings(&mut info.subject.iter_common_name()),
        organizations: strings(&mut info.subject.iter_organization()),
        dns: Vec::new(),
        ips: Vec::new(),
        other_sans: Vec::new(),
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => req.dns.push(d.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => req
                            .ips
                            .push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                        16 => req
                            .ips
                            .push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                        _ => req
                            .other_sans
                            .push(format!("malformed IP SAN ({} bytes)", b.len())),
                    },
                    other => req.other_sans.push(format!("{other:?}")),
                }
            }
        }
    }
    Ok(req)
}

/// The approval decision for one CSR; `node` is the Node object named by the
/// requester, if it exists. Pure: no I/O.
pub fn decide(csr: &CsrFacts, node: Option<&NodeFacts>) -> Decision {
    if csr.signer_name != KUBELET_SERVING_SIGNER {
        return Decision::Skip(format!("signer {} is not ours", csr.signer_name));
    }
    if csr.decided {
        return Decision::Skip("already decided".into());
    }
    let Some(node_name) = csr.node_name() else {
        return Decision::Deny(format!(
            "requester {:?} is not a node (expected {NODE_USER_PREFIX}<name>)",
            csr.username
        ));
    };
    if !csr.groups.iter().any(|g| g == NODES_GROUP) {
        return Decision::Deny(format!("requester is not in group {NODES_GROUP}"));
    }
    let mut bad_usages: Vec<&str> = csr
        .usages
        .iter()
        .map(String::as_str)
        .filter(|u| !ALLOWED_USAGES.contains(u))
        .collect();
    bad_usages.dedup();
    if !bad_usages.is_empty() {
        return Decision::Deny(format!(
            "usages {bad_usages:?} not allowed (only {})",
            ALLOWED_USAGES.join(", ")
        ));
    }
    if !csr.usages.iter().any(|u| u == REQUIRED_USAGE) {
        return Decision::Deny(format!("usage {REQUIRED_USAGE:?} missing"));
    }
    let req = match parse_request(&csr.request) {
        Ok(r) => r,
        Err(e) => return Decision::Deny(crate::telemetry::Chain(&e).to_string()),
    };
    if req.common_names != [csr.username.as_str()] {
        return Decision::Deny(format!(
            "subject CN {:?} is not the requester {:?}",
            req.common_names, csr.username
        ));
    }
    if req.organizations != [NODES_GROUP] {
        return Decision::Deny(format!(
            "subject O {:?} must be exactly [{NODES_GROUP:?}]",
            req.organizations
        ));
    }
    if !req.other_sans.is_empty() {
        return Decision::Deny(format!(
            "only DNS and IP SANs are allowed, got {:?}",
            req.other_sans
        ));
    }
    if req.dns.is_empty() && req.ips.is_empty() {
        return Decision::Deny("no DNS or IP SAN requested".into());
    }
    let Some(node) = node else {
        return Decision::Skip(format!("Node {node_name} is not registered yet"));
    };
    if node.name != node_name {
        return Decision::Skip(format!("Node {} is not {node_name}", node.name));
    }
    let names = node.dns_names();
    if let Some(d) = req.dns.iter().find(|d| !names.contains(&d.as_str())) {
        return Decision::Deny(format!(
            "DNS SAN {d:?} is neither the node name nor a host name of Node {node_name}"
        ));
    }
    let ips = node.ips();
    if let Some(ip) = req.ips.iter().find(|ip| !ips.contains(ip)) {
        return Decision::Deny(format!(
            "IP SAN {ip} is not an address of Node {node_name} ({ips:?})"
        ));
    }
    Decision::Approve
}

/// Where the approver connects and how often it relists.
#[derive(Debug, Clone)]
pub struct CsrApproverSettings {
    /// A kubeconfig allowed to approve `kubernetes.io/kubelet-serving` CSRs
    /// and to read Nodes (the controller's admin kubeconfig).
    pub kubeconfig: PathBuf,
    pub resync: Duration,
}

#[derive(Debug, Default)]
struct State {
    listed: bool,
    last_error: Option<String>,
    approved: u64,
    denied: u64,
}

/// Counters of what the approver did (status, tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApproverCounts {
    pub approved: u64,
    pub denied: u64,
}

pub struct CsrApprover {
    settings: CsrApproverSettings,
    state: Arc<Mutex<State>>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl CsrApprover {
    pub fn new(settings: CsrApproverSettings) -> Self {
        Self {
            settings,
            state: Arc::default(),
            cancel: CancellationToken::new(),
            task: None,
        }
    }

    pub fn counts(&self) -> ApproverCounts {
        let s = lock(&self.state);
        ApproverCounts {
            approved: s.approved,
            denied: s.denied,
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding this lock leaves plain counters behind: still usable.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn condition(type_: &str, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastUpdateTime": now_rfc3339(),
    })
}

/// RFC 3339 UTC timestamp for condition times.
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn handle(
    csrs: &Api<CertificateSigningRequest>,
    nodes: &Api<Node>,
    csr: &CertificateSigningRequest,
    state: &Mutex<State>,
) -> Result<(), KubeError> {
    let facts = CsrFacts::from_object(csr);
    if facts.signer_name != KUBELET_SERVING_SIGNER || facts.decided {
        return Ok(());
    }
    let node = match facts.node_name() {
        Some(n) => nodes.get_opt(n).await?.map(|n| NodeFacts::from_object(&n)),
        None => None,
    };
    let decision = decide(&facts, node.as_ref());
    let (cond, verb) = match &decision {
        Decision::Approve => (
            condition(
                "Approved",
                APPROVE_REASON,
                "mkectl: kubelet serving certificate for the node's own name and addresses",
            ),
            "approved",
        ),
        Decision::Deny(reason) => (
            condition("Denied", DENY_REASON, &format!("mkectl: {reason}")),
            "denied",
        ),
        Decision::Skip(reason) => {
            debug!(component = NAME, csr = %facts.name, reason = %reason, "left pending");
            return Ok(());
        }
    };
    let mut conditions: Vec<serde_json::Value> = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect()
        })
        .unwrap_or_default();
    conditions.push(cond);
    let patch = serde_json::json!({ "status": { "conditions": conditions } });
    csrs.merge_patch(&facts.name, Some("approval"), &patch)
        .await?;
    let mut s = lock(state);
    match decision {
        Decision::Approve => {
            s.approved += 1;
            info!(component = NAME, csr = %facts.name, user = %facts.username, "{verb}");
        }
        Decision::Deny(reason) => {
            s.denied += 1;
            warn!(component = NAME, csr = %facts.name, user = %facts.username, reason = %reason, "{verb}");
        }
        Decision::Skip(_) => {}
    }
    Ok(())
}

/// Why one list-and-watch round ended early.
#[derive(Debug, thiserror::Error)]
enum LoopError {
    #[error("cannot build the API client")]
    Client(#[source] crate::kubeapi::KubeClientError),
    #[error("no client")]
    NoClient,
    #[error("list CSRs")]
    List(#[source] KubeError),
    #[error("watch CSRs")]
    Watch(#[source] KubeError),
}

/// Lists pending kubelet-serving CSRs, then watches for new ones; relists on
/// every resync and after errors (with backoff). Runs until `cancel`.
async fn run(settings: CsrApproverSettings, state: Arc<Mutex<State>>, cancel: CancellationToken) {
    let mut retry = RETRY_INITIAL;
    let selector = format!("spec.signerName={KUBELET_SERVING_SIGNER}");
    let mut client = None;
    loop {
        let result: Result<(), LoopError> = async {
            if client.is_none() {
                client = Some(
                    crate::kubeapi::client_from_kubeconfig(&settings.kubeconfig)
                        .map_err(LoopError::Client)?,
                );
            }
            let Some(c) = client.clone() else {
                return Err(LoopError::NoClient);
            };
            let csrs: Api<CertificateSigningRequest> = Api::cluster(c.clone());
            let nodes: Api<Node> = Api::cluster(c);
            let list = csrs
                .list(&ListParams::default().fields(&selector))
                .await
                .map_err(LoopError::List)?;
            {
                let mut s = lock(&state);
                s.listed = true;
                s.last_error = None;
            }
            for csr in &list.items {
                if let Err(e) = handle(&csrs, &nodes, csr, &state).await {
                    warn!(component = NAME, csr = ?csr.metadata.name, error = %crate::telemetry::Chain(&e), "cannot decide");
                }
            }
            let version = list.metadata.resource_version.unwrap_or_default();
            let timeout = settings.resync.as_secs().clamp(1, 290) as u32;
            let stream = csrs
                .watch(&ListParams::default().fields(&selector), &version, timeout)
                .await
                .map_err(LoopError::Watch)?;
            futures::pin_mut!(stream);
            // Relist at every resync even if the server keeps the watch open
            // past its timeout: pending CSRs (Node not yet registered) are
            // only looked at again on a relist.
            let resync = tokio::time::sleep(settings.resync);
            tokio::pin!(resync);
            loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = &mut resync => return Ok(()),
                    ev = stream.next() => ev,
                };
                match ev {
                    None => return Ok(()), // server-side timeout: relist
                    Some(Ok(WatchEvent::Added(csr) | WatchEvent::Modified(csr))) => {
                        if let Err(e) = handle(&csrs, &nodes, &csr, &state).await {
                            warn!(component = NAME, csr = ?csr.metadata.name, error = %crate::telemetry::Chain(&e), "cannot decide");
                        }
                    }
                    Some(Ok(WatchEvent::Error(status))) => {
                        // 410 Gone: our resourceVersion is too old; relist.
                        debug!(component = NAME, status = ?status, "watch ended");
                        return Ok(());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(LoopError::Watch(e)),
                }
            }
        }
        .await;
        if cancel.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => retry = RETRY_INITIAL,
            Err(e) => {
                let e = crate::telemetry::Chain(&e).to_string();
                warn!(component = NAME, error = %e, retry_in = ?retry, "apiserver error");
                lock(&state).last_error = Some(e);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

#[async_trait::async_trait]
impl Component for CsrApprover {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        if !self.settings.kubeconfig.is_file() {
            return Err(ComponentError::MissingFile {
                component: NAME,
                path: self.settings.kubeconfig.clone(),
                note: "",
            });
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.task.is_some() {
            return Ok(());
        }
        self.cancel = CancellationToken::new();
        let span = tracing::info_span!("csr_approver", component = NAME);
        self.task = Some(tokio::spawn(
            run(
                self.settings.clone(),
                self.state.clone(),
                self.cancel.clone(),
            )
            .instrument(span),
        ));
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        let s = lock(&self.state);
        if s.listed {
            Ok(())
        } else {
            Err(ComponentError::NotReady {
                component: NAME,
                message: s
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "no CSR list yet".into()),
            })
        }
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(STOP_TIMEOUT, task).await.is_err() {
                warn!(component = NAME, "approver loop did not stop in time");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    const NODE: &str = "worker-1";

    fn csr_pem(cn: &str, orgs: &[&str], sans: Vec<SanType>, key: &KeyPair) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().unwrap())
    }

    fn ip(s: &str) -> SanType {
        SanType::IpAddress(s.parse().unwrap())
    }

    fn good_csr() -> CsrFacts {
        let key = KeyPair::generate().unwrap();
        CsrFacts {
            name: "csr-abc".into(),
            signer_name: KUBELET_SERVING_SIGNER.into(),
            username: format!("system:node:{NODE}"),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
            usages: vec![
                "digital signature".into(),
                "key encipherment".into(),
                "server auth".into(),
            ],
            request: csr_pem(
                &format!("system:node:{NODE}"),
                &["system:nodes"],
                vec![dns(NODE), ip("192.0.2.21")],
                &key,
            ),
            decided: false,
        }
    }

    fn node() -> NodeFacts {
        NodeFacts {
            name: NODE.into(),
            addresses: vec![
                ("InternalIP".into(), "192.0.2.21".into()),
                ("ExternalIP".into(), "2001:db8::21".into()),
                ("Hostname".into(), "worker-1.example".into()),
            ],
        }
    }

    fn denied(d: Decision, needle: &str) {
        match d {
            Decision::Deny(r) => assert!(r.contains(needle), "reason {r:?} lacks {needle:?}"),
            other => panic!("expected a denial about {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn approves_the_nodes_own_names_and_addresses() {
        assert_eq!(decide(&good_csr(), Some(&node())), Decision::Approve);
        // Only server auth (an ECDSA key needs no key encipherment).
        let mut c = good_csr();
        c.usages = vec!["server auth".into()];
        assert_eq!(decide(&c, Some(&node())), Decision::Approve);
        // Host name address, IPv6 address, IP-only request.
        let key = KeyPair::generate().unwrap();
        let mut c = good_csr();
        c.request = csr_pem(
            &format!("system:node:{NODE}"),
            &["system:nodes"],
            vec![dns("worker-1.example"), ip("2001:db8::21")],
            &key,
        );
        assert_eq!(decide(&c, Some(&node())), Decision::Approve);
        c.request = csr_pem(
            &format!("system:node:{NODE}"),
            &["system:nodes"],
            vec![ip("192.0.2.21")],
            &key,
        );
        assert_eq!(decide(&c, Some(&node())), Decision::Approve);
    }

    #[test]
    fn ignores_other_signers_and_decided_csrs() {
        let mut c = good_csr();
        c.signer_name = "kubernetes.io/kube-apiserver-client-kubelet".into();
        assert!(matches!(decide(&c, Some(&node())), Decision::Skip(_)));
        let mut c = good_csr();
        c.decided = true;
        assert!(matches!(decide(&c, Some(&node())), Decision::Skip(_)));
    }

    #[test]
    fn waits_for_the_node_to_register() {
        assert!(
            matches!(decide(&good_csr(), None), Decision::Skip(r) if r.contains("not registered"))
        );
    }

    #[test]
    fn denies_requesters_that_are_not_that_node() {
        let mut c = good_csr();
        c.username = "alice".into();
        denied(decide(&c, Some(&node())), "not a node");
        let mut c = good_csr();
        c.username = "system:node:".into();
        denied(decide(&c, Some(&node())), "not a node");
        let mut c = good_csr();
        c.groups = vec!["system:authenticated".into()];
        denied(decide(&c, Some(&node())), "system:nodes");
        // worker-2 asking for a certificate carrying worker-1's identity.
        let mut c = good_csr();
        c.username = "system:node:worker-2".into();
        let mut n2 = node();
        n2.name = "worker-2".into();
        denied(decide(&c, Some(&n2)), "CN");
    }

    #[test]
    fn denies_wrong_usages() {
        let mut c = good_csr();
        c.usages.push("client auth".into());
        denied(decide(&c, Some(&node())), "client auth");
        let mut c = good_csr();
        c.usages = vec!["digital signature".into(), "key encipherment".into()];
        denied(decide(&c, Some(&node())), "server auth");
        let mut c = good_csr();
        c.usages = vec!["server auth".into(), "cert sign".into()];
        denied(decide(&c, Some(&node())), "cert sign");
    }

    #[test]
    fn denies_wrong_subjects() {
        let key = KeyPair::generate().unwrap();
        let user = format!("system:node:{NODE}");
        let mut c = good_csr();
        c.request = csr_pem(
            "system:node:worker-2",
            &["system:nodes"],
            vec![dns(NODE)],
            &key,
        );
        denied(decide(&c, Some(&node())), "CN");
        c.request = csr_pem(&user, &["system:masters"], vec![dns(NODE)], &key);
        denied(decide(&c, Some(&node())), "subject O");
        c.request = csr_pem(
            &user,
            &["system:nodes", "system:masters"],
            vec![dns(NODE)],
            &key,
        );
        denied(decide(&c, Some(&node())), "subject O");
        c.request = csr_pem(&user, &[], vec![dns(NODE)], &key);
        denied(decide(&c, Some(&node())), "subject O");
    }

    #[test]
    fn denies_sans_that_are_not_the_nodes() {
        let key = KeyPair::generate().unwrap();
        let user = format!("system:node:{NODE}");
        let mut c = good_csr();
        c.request = csr_pem(
            &user,
            &["system:nodes"],
            vec![dns("kubernetes.default.svc")],
            &key,
        );
        denied(decide(&c, Some(&node())), "kubernetes.default.svc");
        c.request = csr_pem(
            &user,
            &["system:nodes"],
            vec![dns(NODE), ip("192.0.2.99")],
            &key,
        );
        denied(decide(&c, Some(&node())), "192.0.2.99");
        c.request = csr_pem(&user, &["system:nodes"], vec![], &key);
        denied(decide(&c, Some(&node())), "no DNS or IP SAN");
        c.request = csr_pem(
            &user,
            &["system:nodes"],
            vec![
                dns(NODE),
                SanType::Rfc822Name("a@example.com".try_into().unwrap()),
            ],
            &key,
        );
        denied(decide(&c, Some(&node())), "only DNS and IP SANs");
        c.request = csr_pem(
            &user,
            &["system:nodes"],
            vec![SanType::URI("spiffe://x/y".try_into().unwrap())],
            &key,
        );
        denied(decide(&c, Some(&node())), "only DNS and IP SANs");
        // A Node with no addresses yet: the name is fine, an IP is not.
        let bare = NodeFacts {
            name: NODE.into(),
            addresses: vec![],
        };
        c.request = csr_pem(&user, &["system:nodes"], vec![dns(NODE)], &key);
        assert_eq!(decide(&c, Some(&bare)), Decision::Approve);
        c.request = csr_pem(&user, &["system:nodes"], vec![ip("192.0.2.21")], &key);
        denied(decide(&c, Some(&bare)), "192.0.2.21");
    }

    #[test]
    fn denies_garbage_and_forged_requests() {
        let mut c = good_csr();
        c.request = b"not pem".to_vec();
        denied(decide(&c, Some(&node())), "PEM");
        // A certificate instead of a request.
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![NODE.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        c.request = cert.pem().into_bytes();
        denied(decide(&c, Some(&node())), "CERTIFICATE REQUEST");
        // A request whose signature does not match its content.
        let mut good = good_csr();
        let text = String::from_utf8(good.request.clone()).unwrap();
        let (_, body) = text.split_once('\n').unwrap();
        let b64: String = body.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
        let n = der.len();
        der[n - 5] ^= 0xff; // flip a byte inside the signature
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
        );
        good.request = pem.into_bytes();
        denied(decide(&good, Some(&node())), "signature");
    }

    /// A CSR made by openssl (as a non-rcgen client would), with `key_spec`
    /// like `rsa:2048`.
    fn openssl_csr(dir: &std::path::Path, key_spec: &str) -> Vec<u8> {
        let out = std::process::Command::new("openssl")
            .args(["req", "-new", "-nodes", "-newkey", key_spec, "-keyout"])
            .arg(dir.join(format!("{}.key", key_spec.replace(':', "-"))))
            .args([
                "-subj",
                &format!("/O=system:nodes/CN=system:node:{NODE}"),
                "-addext",
                &format!("subjectAltName=DNS:{NODE},IP:192.0.2.21"),
            ])
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn openssl_requests_decide_like_rcgen_ones_and_weak_rsa_is_denied() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = good_csr();
        c.request = openssl_csr(tmp.path(), "rsa:2048");
        assert_eq!(decide(&c, Some(&node())), Decision::Approve);
        c.request = openssl_csr(tmp.path(), "rsa:1024");
        denied(decide(&c, Some(&node())), "RSA key of 1024 bits");
    }

    #[test]
    fn facts_come_from_the_api_objects() {
        let csr: CertificateSigningRequest = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "csr-1" },
            "spec": {
                "signerName": KUBELET_SERVING_SIGNER,
                "request": "QUJD",
                "username": "system:node:w",
                "groups": ["system:nodes"],
                "usages": ["server auth"],
            },
            "status": { "conditions": [ { "type": "Denied", "status": "True" } ] }
        }))
        .unwrap();
        let f = CsrFacts::from_object(&csr);
        assert_eq!(f.name, "csr-1");
        assert_eq!(f.request, b"ABC");
        assert_eq!(f.node_name(), Some("w"));
        assert!(f.decided);
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "w" },
            "status": { "addresses": [ { "type": "InternalIP", "address": "10.0.0.5" } ] }
        }))
        .unwrap();
        assert_eq!(
            NodeFacts::from_object(&node),
            NodeFacts {
                name: "w".into(),
                addresses: vec![("InternalIP".into(), "10.0.0.5".into())]
            }
        );
    }
}
