//! The join half of `mkectl controller`: joining an existing cluster with
//! `--token-file` (once; a restart reuses `join.json`), and the settings of
//! the join API and controller registry components.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tracing::info;

use super::controller::{url_for, ControllerContext};
use crate::config::{ClusterConfig, NodePaths};
use crate::etcd::{EtcdClientTls, LearnerPromotion};
use crate::exit::{UnavailableError, UsageError};
use crate::join::api::ApiSettings;
use crate::join::client::{join_controller, JoinPromoter};
use crate::join::tls::{ClientIdentity, ServingSpec};
use crate::join::wire::KubeletDefaults;
use crate::join::{self, ControllerJoinState, ControllerRecord, JoinError, JoinToken, Role};
use crate::konnectivity::ServerAddr;

/// Maps a join failure to the exit code it deserves: a bad token or usage
/// is 64, no reachable controller is 69, a refusal is 1.
pub fn join_failure(e: JoinError) -> anyhow::Error {
    match e {
        JoinError::Token(_) | JoinError::WrongRole { .. } => UsageError(e.to_string()).into(),
        JoinError::Unreachable { .. } => UnavailableError(e.to_string()).into(),
        other => anyhow::Error::new(other),
    }
}

/// Largest token file read (a token is well under 1 KiB per controller).
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Reads and decodes a token file (at most [`MAX_TOKEN_FILE_BYTES`]);
/// errors name the file (exit 64).
pub fn read_token_file(path: &Path, want: Role) -> anyhow::Result<JoinToken> {
    let cannot = |e: String| UsageError(format!("--token-file {}: {e}", path.display()));
    let bytes = std::fs::File::open(path)
        .and_then(|f| crate::fsutil::read_at_most(f, MAX_TOKEN_FILE_BYTES))
        .map_err(|e| cannot(format!("cannot read: {e}")))?
        .ok_or_else(|| {
            cannot(format!(
                "larger than {MAX_TOKEN_FILE_BYTES} bytes; not a join token"
            ))
        })?;
    let text = String::from_utf8(bytes).map_err(|_| cannot("not UTF-8 text".into()))?;
    let token = JoinToken::decode(&text)
        .map_err(|e| UsageError(format!("--token-file {}: {e}", path.display())))?;
    if token.role != want {
        return Err(join_failure(JoinError::WrongRole {
            have: token.role,
            want,
            what: if want == Role::Controller {
                "`mkectl controller --token-file`"
            } else {
                "`mkectl worker`"
            },
        }));
    }
    Ok(token)
}

/// The etcd peer URL of this node.
pub fn etcd_peer_url(cfg: &ClusterConfig, node_address: std::net::IpAddr) -> String {
    url_for(cfg.etcd_peer_address(node_address), cfg.spec.etcd.peer_port)
}

/// Joins with `token_file` unless this node already joined (then its
/// `join.json` is returned and the token ignored). Runs before anything is
/// written to the data dir, so a refused token leaves nothing behind.
pub async fn join_if_needed(
    token_file: Option<&Path>,
    cfg: &ClusterConfig,
    node_address: std::net::IpAddr,
    paths: &NodePaths,
    node_name: &str,
) -> anyhow::Result<Option<ControllerJoinState>> {
    let state_file = join::controller_state_file(&paths.data_dir);
    if let Some(st) = join::state::read::<ControllerJoinState>(&state_file)? {
        if token_file.is_some() {
            info!(
                "already joined ({}); --token-file ignored",
                state_file.display()
            );
        }
        return Ok(Some(st));
    }
    let Some(file) = token_file else {
        return Ok(None);
    };
    let token = read_token_file(file, Role::Controller)?;
    if paths.etcd_dir().join("member").exists() {
        return Err(UsageError(format!(
            "{} already holds etcd data (this node runs its own cluster); a controller joins only with a clean data dir: run `mkectl reset` first",
            paths.etcd_dir().display()
        ))
        .into());
    }
    info!(endpoints = ?token.endpoints, token_id = %token.bootstrap.id, "joining the cluster as a controller");
    let st = join_controller(
        &token,
        node_name,
        &etcd_peer_url(cfg, node_address),
        &paths.pki_dir(),
        &state_file,
    )
    .await
    .map_err(join_failure)
    .context("controller join")?;
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
