//! etcd, the first real component: a supervised child serving clients on
//! 127.0.0.1 only and peers on the node address, both with certificate auth.
//! Readiness is a quorum read through the `etcd-client` crate with the
//! apiserver's etcd client certificate, so "ready" means what the apiserver
//! will see.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::{binary, Component, ComponentError};
use crate::config::NodePaths;
use crate::etcd::{connect, EtcdClientTls, LearnerPromotion, MKECTL_PREFIX};
use crate::fsutil;
use crate::pki::Leaf;
use crate::supervisor::{ChildSpec, Supervised};

pub const NAME: &str = "etcd";
/// etcd flushes and leaves the raft group quickly; beyond this it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);
/// One readiness probe may take this long before it counts as a failure.
pub const PROBE_TIMEOUT: Duration = crate::etcd::REQUEST_TIMEOUT;
/// A cold etcd on a slow disk can take a while to elect itself.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between promotion attempts while the learner catches up.
pub const PROMOTE_EVERY: Duration = Duration::from_millis(250);

/// Everything the etcd component needs, resolved from config and PKI.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub member_name: String,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_address: IpAddr,
    pub peer_port: u16,
    /// `--initial-cluster`; `None` bootstraps a single-member cluster.
    pub initial_cluster: Option<String>,
    /// `new` for a bootstrap, `existing` when joining.
    pub initial_cluster_state: String,
    pub trusted_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
    /// The identity the readiness probe uses (the apiserver's).
    pub probe_client: EtcdClientTls,
    pub extra_args: BTreeMap<String, String>,
    /// Set when this member joined as a learner: after start it is promoted
    /// (a learner refuses the linearizable readiness read, so `ready` turns
    /// true only once it votes).
    pub learner: Option<LearnerPromotion>,
}

impl EtcdSettings {
    pub fn client_url(&self) -> String {
        crate::etcd::local_url(self.client_port)
    }

    pub fn peer_url(&self) -> String {
        match self.peer_address {
            IpAddr::V4(a) => format!("https://{a}:{}", self.peer_port),
            IpAddr::V6(a) => format!("https://[{a}]:{}", self.peer_port),
        }
    }

    /// The argv (without the program) for etcd. `extraArgs` override ours.
    pub fn args(&self) -> Vec<String> {
        let mut flags: BTreeMap<String, String> = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            flags.insert(k.to_string(), v);
        };
        let p = |p: &PathBuf| p.display().to_string();
        set("name", self.member_name.clone());
        set("data-dir", p(&self.data_dir));
        set("listen-client-urls", self.client_url());
        set("advertise-client-urls", self.client_url());
        set("listen-peer-urls", self.peer_url());
        set("initial-advertise-peer-urls", self.peer_url());
        set(
            "initial-cluster",
            self.initial_cluster
                .clone()
                .unwrap_or_else(|| format!("{}={}", self.member_name, self.peer_url())),
        );
        set("initial-cluster-state", self.initial_cluster_state.clone());
        set("client-cert-auth", "true".into());
        set("trusted-ca-file", p(&self.trusted_ca));
        set("cert-file", p(&self.server_cert));
        set("key-file", p(&self.server_key));
        set("peer-client-cert-auth", "true".into());
        set("peer-trusted-ca-file", p(&self.trusted_ca));
        set("peer-cert-file", p(&self.peer_cert));
        set("peer-key-file", p(&self.peer_key));
        set("cipher-suites", crate::tlspolicy::etcd_cipher_suites_flag());
        set("auto-compaction-mode", "periodic".into());
        set("auto-compaction-retention", "5m".into());
        set("quota-backend-bytes", (4u64 << 30).to_string());
        set("logger", "zap".into());
        set("log-outputs", "stderr".into());
        for (k, v) in &self.extra_args {
            set(k.trim_start_matches('-'), v.clone());
        }
        flags
            .into_iter()
            .map(|(k, v)| format!("--{k}={v}"))
            .collect()
    }
}

/// etcd 3.4 refuses to start on architectures other than amd64 (and warns
/// about an unknown variable on amd64), so the override is set only there.
fn unsupported_arch_env() -> Vec<(String, String)> {
    match std::env::consts::ARCH {
        "x86_64" => Vec::new(),
        "aarch64" => vec![("ETCD_UNSUPPORTED_ARCH".into(), "arm64".into())],
        other => vec![("ETCD_UNSUPPORTED_ARCH".into(), other.into())],
    }
}

pub struct Etcd {
    settings: EtcdSettings,
    paths: NodePaths,
    child: Option<Supervised>,
    client: Mutex<Option<etcd_client::Client>>,
    promotion: CancellationToken,
}

impl Etcd {
    pub fn new(settings: EtcdSettings, paths: NodePaths) -> Self {
        Self {
            settings,
            paths,
            child: None,
            client: Mutex::new(None),
            promotion: CancellationToken::new(),
        }
    }

    /// The supervised child, once started (status, pid, restarts).
    pub fn child(&self) -> Option<&Supervised> {
        self.child.as_ref()
    }
}

fn not_ready(message: impl Into<String>) -> ComponentError {
    ComponentError::NotReady {
        component: NAME,
        message: message.into(),
    }
}

#[async_trait::async_trait]
impl Component for Etcd {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn init(&mut self) -> Result<(), ComponentError> {
        // etcd refuses a data dir looser than 0700 in 3.5+, and it holds
        // every secret of the cluster.
        fsutil::ensure_dir(&self.settings.data_dir, fsutil::PRIVATE_DIR_MODE).map_err(
            |source| ComponentError::Fs {
                component: NAME,
                source,
            },
        )?;
        // Resolve the binary now so a missing etcd fails before anything starts.
        binary::find(NAME, &self.paths)?;
        Ok(())
    }

    async fn start(&mut self) -> Result<(), ComponentError> {
        if self.child.is_some() {
            return Ok(());
        }
        let program = binary::find(NAME, &self.paths)?;
        let spec = ChildSpec {
            name: NAME.into(),
            program,
            args: self.settings.args(),
            env: unsupported_arch_env(),
            cwd: Some(self.settings.data_dir.clone()),
            run_dir: self.paths.run_dir.clone(),
            stop_grace: STOP_GRACE,
            backoff: Default::default(),
        };
        let child = super::start_supervised(NAME, spec).await?;
        self.child = Some(child);
        if let Some(learner) = self.settings.learner.clone() {
            self.promotion = CancellationToken::new();
            tokio::spawn(promote_until_voting(learner, self.promotion.clone()));
        }
        Ok(())
    }

    async fn ready(&self) -> Result<(), ComponentError> {
        let mut guard = self.client.lock().await;
        if guard.is_none() {
            let c = connect(&self.settings.client_url(), &self.settings.probe_client)
                .await
                .map_err(|e| not_ready(crate::telemetry::Chain(&e).to_string()))?;
            *guard = Some(c);
        }
        let Some(client) = guard.as_mut() else {
            return Err(not_ready("no client"));
        };
        // A linearizable read needs a quorum: the same bar the apiserver has.
        let key = format!("{MKECTL_PREFIX}health");
        let result = match tokio::time::timeout(PROBE_TIMEOUT, client.get(key, None)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => not_ready(e.to_string()),
            Err(_) => not_ready("probe timed out"),
        };
        // Reconnect next time: the client certificate may have been renewed.
        *guard = None;
        Err(result)
    }

    async fn stop(&mut self) -> Result<(), ComponentError> {
        self.promotion.cancel();
        *self.client.lock().await = None;
        if let Some(child) = self.child.take() {
            child.stop().await;
        }
        Ok(())
    }

    fn ready_timeout(&self) -> Duration {
        READY_TIMEOUT
    }

    fn supervised(&self) -> Option<&Supervised> {
        self.child.as_ref()
    }

    fn uses_certs(&self) -> &[Leaf] {
        // The probe's client certificate is re-read on reconnect, which a
        // failed probe triggers; only the serving and peer certs need a restart.
        &[Leaf::EtcdServer, Leaf::EtcdPeer]
    }

    async fn restart(&mut self) -> Result<(), ComponentError> {
        *self.client.lock().await = None;
        if let Some(child) = &self.child {
            child.restart().await;
        }
        Ok(())
    }
}

/// Asks for promotion until the member votes, `READY_TIMEOUT` passes (the
/// manager gives up on readiness then) or the component stops.
async fn promote_until_voting(learner: LearnerPromotion, cancel: CancellationToken) {
    let begin = tokio::time::Instant::now();
    let mut last_log = begin;
    tracing::info!(
        component = NAME,
        member_id = format!("{:x}", learner.member_id),
        "etcd started as a learner; waiting to be promoted"
    );
    while begin.elapsed() < READY_TIMEOUT {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return,
            r = learner.promoter.promote(learner.member_id) => r,
        };
        match attempt {
            Ok(true) => {
                tracing::info!(
                    component = NAME,
                    elapsed_ms = begin.elapsed().as_millis() as u64,
                    "etcd member promoted to a voting member"
                );
                return;
            }
            Ok(false) => {}
            Err(e) if last_log.elapsed() >= Duration::from_secs(5) => {
                tracing::info!(component = NAME, error = %crate::telemetry::Chain(&e), "etcd learner not promoted yet");
                last_log = tokio::time::Instant::now();
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PROMOTE_EVERY) => {}
        }
    }
    tracing::warn!(component = NAME, "gave up promoting the etcd learner");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EtcdSettings {
        let tls = EtcdClientTls {
            ca: "/p/etcd/ca.crt".into(),
            cert: "/p/c.crt".into(),
            key: "/p/c.key".into(),
        };
        EtcdSettings {
            member_name: "n1".into(),
            data_dir: "/d/etcd".into(),
            client_port: 2379,
            peer_address: "192.0.2.10".parse().unwrap(),
            peer_port: 2380,
            initial_cluster: None,
            initial_cluster_state: "new".into(),
            trusted_ca: "/p/etcd/ca.crt".into(),
            server_cert: "/p/etcd/server.crt".into(),
            server_key: "/p/etcd/server.key".into(),
            peer_cert: "/p/etcd/peer.crt".into(),
            peer_key: "/p/etcd/peer.key".into(),
            probe_client: tls,
            extra_args: BTreeMap::new(),
            learner: None,
        }
    }

    #[test]
    fn client_on_loopback_peer_on_node_with_cert_auth() {
        let args = settings().args();
        let has = |f: &str| args.iter().any(|a| a == f);
        assert!(has("--listen-client-urls=https://127.0.0.1:2379"));
        assert!(has("--listen-peer-urls=https://192.0.2.10:2380"));
        assert!(has("--initial-cluster=n1=https://192.0.2.10:2380"));
        assert!(has("--client-cert-auth=true"));
        assert!(has("--peer-client-cert-auth=true"));
    }

    #[test]
    fn extra_args_override() {
        let mut s = settings();
        s.extra_args
            .insert("--quota-backend-bytes".into(), "1".into());
        s.extra_args
            .insert("heartbeat-interval".into(), "250".into());
        let args = s.args();
        assert!(args.contains(&"--quota-backend-bytes=1".to_string()));
        assert!(args.contains(&"--heartbeat-interval=250".to_string()));
        assert_eq!(args.iter().filter(|a| a.starts_with("--quota")).count(), 1);
    }

    #[test]
    fn ipv6_peer_url_is_bracketed() {
        let mut s = settings();
        s.peer_address = "2001:db8::1".parse().unwrap();
        assert_eq!(s.peer_url(), "https://[2001:db8::1]:2380");
    }
}
