//! The join half of the controller role: joining an existing cluster with
//! a controller token (once; a restart reuses `join.json`), and the settings
//! of the join API and controller registry components.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::info;

use super::controller_context::ControllerContext;
use super::join_token::TokenSource;
use super::{url_for, NodeError};
use crate::config::{ClusterConfig, NodePaths};
use crate::etcd::{EtcdClientTls, LearnerPromotion};
use crate::join::api::ApiSettings;
use crate::join::client::{join_controller, JoinPromoter};
use crate::join::tls::{ClientIdentity, ServingSpec};
use crate::join::wire::KubeletDefaults;
use crate::join::{self, ControllerJoinState, ControllerRecord, Role};
use crate::konnectivity::ServerAddr;

/// The etcd peer URL of this node.
pub fn etcd_peer_url(cfg: &ClusterConfig, node_address: std::net::IpAddr) -> String {
    url_for(cfg.etcd_peer_address(node_address), cfg.spec.etcd.peer_port)
}

/// Joins with `token` unless this node already joined (then its
/// `join.json` is returned and the token ignored). Runs before anything is
/// written to the data dir, so a refused token leaves nothing behind.
pub async fn join_if_needed(
    token: Option<&TokenSource>,
    cfg: &ClusterConfig,
    node_address: std::net::IpAddr,
    paths: &NodePaths,
    node_name: &str,
) -> Result<Option<ControllerJoinState>, NodeError> {
    let state_file = join::controller_state_file(&paths.data_dir);
    let joined = join::state::read::<ControllerJoinState>(&state_file)
        .map_err(NodeError::join("reading the controller's join state"))?;
    if let Some(st) = joined {
        if token.is_some() {
            info!(
                "already joined ({}); --token-file ignored",
                state_file.display()
            );
        }
        return Ok(Some(st));
    }
    let Some(source) = token else {
        return Ok(None);
    };
    let token = &source.read(Role::Controller)?;
    if paths.etcd_dir().join("member").exists() {
        return Err(NodeError::Usage(format!(
            "{} already holds etcd data (this node runs its own cluster); a controller joins only with a clean data dir: run `mkectl reset` first",
            paths.etcd_dir().display()
        )));
    }
    info!(endpoints = ?token.endpoints, token_id = %token.bootstrap.id, "joining the cluster as a controller");
    let st = join_controller(
        token,
        node_name,
        &etcd_peer_url(cfg, node_address),
        &paths.pki_dir(),
        &state_file,
    )
    .await
    .map_err(NodeError::join("controller join"))?;
    Ok(Some(st))
}

/// Controllers in the cluster as this node knows at start: the registry
/// cache the running controller keeps, at least 2 for a node that joined.
pub fn controller_count(ctx: &ControllerContext) -> usize {
    let cached = join::registry::read_cache(&join::controllers_cache_file(&ctx.paths.data_dir))
        .map(|v| v.len())
        .unwrap_or(0);
    let joined = if ctx.join.is_some() { 2 } else { 1 };
    cached.max(joined)
}

/// Learner promotion for a joined controller that does not vote yet.
pub fn learner_promotion(ctx: &ControllerContext) -> Option<LearnerPromotion> {
    let st = ctx.join.as_ref().filter(|s| !s.promoted)?;
    Some(LearnerPromotion {
        member_id: st.etcd_member_id,
        promoter: Arc::new(JoinPromoter {
            endpoints: st.join_endpoints.clone(),
            ca: ctx.pki.ca.cert.clone(),
            identity: ClientIdentity {
                cert: ctx.pki.etcd_peer.cert.clone(),
                key: ctx.pki.etcd_peer.key.clone(),
            },
            state_file: join::controller_state_file(&ctx.paths.data_dir),
        }),
    })
}

/// This controller as the registry lists it: the ports workers dial, which
/// under `exposeStrategy: single-port` are all `spec.api.port`.
pub fn controller_record(ctx: &ControllerContext) -> ControllerRecord {
    let cfg = &ctx.cfg;
    ControllerRecord {
        name: ctx.node_name.clone(),
        api_server: url_for(ctx.node_address, cfg.spec.api.port),
        konnectivity: ServerAddr {
            host: ctx.node_address.to_string(),
            port: cfg.exposed_konnectivity_port(),
        }
        .to_string(),
        join_api: url_for(ctx.node_address, cfg.exposed_join_port()),
        etcd_peer_url: etcd_peer_url(cfg, ctx.node_address),
    }
}

/// The apiserver's etcd client identity, used by the join API and registry.
pub fn etcd_client(ctx: &ControllerContext) -> (String, EtcdClientTls) {
    (
        crate::etcd::local_url(ctx.cfg.spec.etcd.client_port),
        EtcdClientTls::apiserver(&ctx.pki),
    )
}

/// Join API settings; `mirror` when kube-apiserver runs here.
pub fn join_api_settings(ctx: &ControllerContext, mirror: bool) -> ApiSettings {
    let cfg = &ctx.cfg;
    let (etcd_endpoint, etcd_tls) = etcd_client(ctx);
    let mut sans = vec![ctx.node_address.to_string()];
    let peer = cfg.etcd_peer_address(ctx.node_address).to_string();
    for s in [
        peer,
        ctx.node_name.clone(),
        "127.0.0.1".into(),
        "localhost".into(),
    ] {
        if !sans.contains(&s) {
            sans.push(s);
        }
    }
    sans.extend(cfg.spec.api.sans.iter().cloned());
    let pki = &cfg.spec.pki;
    ApiSettings {
        listen: SocketAddr::new(ctx.node_address, cfg.spec.join_api.port),
        routed: None,
        pki: ctx.pki.clone(),
        serving: ServingSpec {
            pki_dir: ctx.pki.dir.clone(),
            sans,
            lifetime: pki.leaf_lifetime.as_duration(),
            renew_before: pki.renew_before.as_duration(),
            key_type: pki.key_type,
        },
        etcd_endpoint,
        etcd_tls,
        this: controller_record(ctx),
        cluster_name: cfg.metadata.name.clone(),
        kubelet: KubeletDefaults {
            cluster_name: cfg.metadata.name.clone(),
            cluster_domain: cfg.spec.network.cluster_domain.clone(),
            cluster_dns: vec![cfg.cluster_dns_ip().to_string()],
            pod_cidr: cfg.spec.network.pod_cidr.to_string(),
            service_cidr: cfg.spec.network.service_cidr.to_string(),
        },
        agent_cert_lifetime: pki.leaf_lifetime.as_duration(),
        mirror_kubeconfig: mirror.then(|| ctx.pki.admin_kubeconfig.clone()),
        metrics: ctx.metrics.clone(),
    }
}
