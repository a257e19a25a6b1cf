//! The worker role: joins the cluster once with a worker token (the private
//! key of the agent certificate is generated here and never leaves the
//! node), then runs the node side until the first signal. A restart reuses
//! the saved credentials.
//!
//! Order (docs/design.md "Process model"): join/bootstrap → containerd →
//! konnectivity agent → image import (`<data-dir>/images/` and the sandbox
//! image, see `crate::images`) → node-local apiserver balancer
//! (`crate::apilb`) → kubelet → kube-proxy.
//!
//! One task refreshes the controller list from the join API; the agent (one
//! tunnel per controller) and the balancer (one backend per apiserver)
//! follow it.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, Instrument};

use super::join_token::TokenSource;
use super::node_side::{add_node_components, check_node_side, NodeApiLb, NodeSide};
use super::{lifecycle, NodeError};
use crate::components::api_lb::ApiLbMonitor;
use crate::components::konnectivity_agent::ServerSource;
use crate::components::kubelet;
use crate::components::Manager;
use crate::config::worker::WorkerSpec;
use crate::config::{ClusterConfig, NodePaths};
use crate::fsutil::{self, absolute};
use crate::https_probe::ClientIdentity;
use crate::join::client::{join_worker, refresh_controllers};
use crate::join::registry::ControllerRecord;
use crate::join::state::{self, WorkerPaths, WorkerState};
use crate::join::wire::KubeletDefaults;
use crate::join::Role;
use crate::konnectivity::TlsFiles;

/// Shortest controller list refresh interval honoured.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// A worker as the command line and the config describe it, checked.
pub struct WorkerPlan {
    /// The local ClusterConfig (`--config`): `spec.worker` and the kubelet's
    /// extraArgs; cluster-wide values come from the join.
    pub cfg: ClusterConfig,
    /// `spec.worker` with `--labels` and `--taints` merged in, validated.
    pub worker_spec: WorkerSpec,
    pub paths: NodePaths,
    /// The token of a first join (ignored once joined: read only then).
    pub token: Option<TokenSource>,
    /// `--node-name`: the name of a first join; a restart must agree.
    pub node_name: Option<String>,
    /// `--address`: the address of a first join.
    pub address: Option<IpAddr>,
    pub refresh_interval: Duration,
    pub agent_admin: Option<SocketAddr>,
    /// `--disable-components` (names in `node_side::WORKER_OPTIONAL`).
    pub disabled: Vec<String>,
}

/// Everything the worker's components are built from.
struct WorkerContext<'a> {
    plan: &'a WorkerPlan,
    worker: WorkerPaths,
    /// Identity, address, cluster name, controllers, apiserver URLs.
    state: WorkerState,
    node_address: IpAddr,
    /// The live controller list (see [`refresh_controllers`]).
    controllers: watch::Receiver<Vec<ControllerRecord>>,
    /// Ends the tasks that follow `controllers`.
    cancel: CancellationToken,
}

/// Joins (first start) or reuses the saved join, then runs the worker until
/// the first signal.
pub async fn run(plan: WorkerPlan) -> Result<(), NodeError> {
    let started = Instant::now();
    let span = info_span!("worker", component = "worker");
    async move {
        let paths = plan.paths.clone();
        let worker = WorkerPaths::new(&paths.data_dir);
        let _lock = lifecycle::lock(&paths)?;
        // Bundled binaries (containerd, kubelet, runc) land in <data-dir>/bin.
        crate::bundle::stage(&paths).await?;
        let st = match state::read::<WorkerState>(&worker.state)
            .map_err(NodeError::join("reading the worker's join state"))?
        {
            Some(st) => {
                if plan.token.is_some() {
                    info!(state = %worker.state.display(), "already joined; the token is ignored");
                }
                if plan.node_name.as_ref().is_some_and(|n| *n != st.node_name) {
                    return Err(NodeError::Usage(format!(
                        "this node joined as {:?}; --node-name {:?} differs (run `mkectl reset` to join again under another name)",
                        st.node_name,
                        plan.node_name.as_deref().unwrap_or_default()
                    )));
                }
                st
            }
            None => first_join(&plan, &worker).await?,
        };
        let node_address: IpAddr = st.address.parse().map_err(|e: std::net::AddrParseError| {
            NodeError::BadState {
                path: worker.state.clone(),
                what: "address",
                source: e.into(),
            }
        })?;
        info!(
            node = %st.node_name,
            %node_address,
            join_ms = started.elapsed().as_millis() as u64,
            "worker joined; starting components"
        );
        // The balancer runs only beside the kubelet it serves.
        let lb_port = if plan.disabled.iter().any(|d| d == kubelet::NAME) {
            0
        } else {
            plan.worker_spec.api_load_balancer_port
        };
        point_kubeconfigs(&paths, &worker, &st, lb_port)?;
        let cancel = CancellationToken::new();
        let (controllers_tx, controllers) = watch::channel(st.controllers.clone());
        let ctx = WorkerContext {
            plan: &plan,
            worker: worker.clone(),
            state: st,
            node_address,
            controllers,
            cancel: cancel.clone(),
        };
        let (mut manager, api_lb) = build_components(&ctx)?;
        manager.init_all().await?;
        check_node_side(&manager, &paths, &plan.worker_spec).await?;

        let refresh_every = plan.refresh_interval.max(MIN_REFRESH_INTERVAL);
        info!(
            controllers = ?ctx.state.controllers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            refresh_every = ?refresh_every,
            "following the controller list"
        );
        tokio::spawn(refresh_controllers(
            worker.clone(),
            ctx.state.clone(),
            refresh_every,
            controllers_tx,
            cancel.clone(),
        ));
        // Status socket and /metrics; no rotation here: the agent
        // certificate comes from the join and kubelet rotates its own.
        let ops = crate::ops::OpsSettings {
            role: "worker",
            cfg: plan.cfg.clone(),
            paths: paths.clone(),
            node_name: ctx.state.node_name.clone(),
            node_address,
            pki_spec: None,
            etcd: false,
            metrics: Default::default(),
            api_lb,
            front: None,
        };
        let run = lifecycle::Run {
            role: "worker",
            paths: paths.clone(),
            ops,
            cancel,
            started,
        };
        lifecycle::run(manager, run, |_| {}).await
    }
    .instrument(span)
    .await
}

/// The first start: join with the token, write the credentials.
async fn first_join(plan: &WorkerPlan, worker: &WorkerPaths) -> Result<WorkerState, NodeError> {
    let Some(source) = &plan.token else {
        return Err(NodeError::Usage(format!(
            "this node has not joined a cluster yet ({} missing): give --token or --token-file",
            worker.state.display()
        )));
    };
    let token = &source.read(Role::Worker)?;
    let node_name = super::identity::node_name(plan.node_name.as_deref())?;
    // Refused rather than guessed: a node registered under 127.0.0.1 is
    // unreachable for everyone else.
    let Some(address) = plan
        .address
        .or_else(crate::config::paths::detect_node_address)
    else {
        return Err(NodeError::Usage(
            "this host has no global IPv4 address to register the node under: give --address"
                .into(),
        ));
    };
    info!(endpoints = ?token.endpoints, token_id = %token.bootstrap.id, %node_name, %address, "joining the cluster as a worker");
    join_worker(token, &node_name, address, worker)
        .await
        .map_err(NodeError::join("worker join"))
}

/// The worker's components in start order, and the reader of its
/// apiserver balancer (when one runs) for the status and metrics pages.
fn build_components(ctx: &WorkerContext) -> Result<(Manager, Option<ApiLbMonitor>), NodeError> {
    // Cluster DNS and domain come from the join.
    let defaults_file = &ctx.worker.kubelet_defaults;
    let bad = |what, source: Box<dyn std::error::Error + Send + Sync>| NodeError::BadState {
        path: defaults_file.clone(),
        what,
        source,
    };
    let defaults: KubeletDefaults = serde_json::from_slice(&fsutil::read(defaults_file)?)
        .map_err(|e| bad("kubelet defaults", e.into()))?;
    let cluster_dns = match defaults.cluster_dns.first() {
        Some(dns) => dns
            .parse()
            .map_err(|e: std::net::AddrParseError| bad("clusterDNS", e.into()))?,
        None => ClusterConfig::default().cluster_dns_ip(),
    };
    let plan = ctx.plan;
    let mut manager = Manager::new();
    let api_lb = add_node_components(
        &mut manager,
        NodeSide {
            cfg: &plan.cfg,
            worker_spec: &plan.worker_spec,
            paths: &plan.paths,
            node_name: &ctx.state.node_name,
            node_address: ctx.node_address,
            agent_tls: TlsFiles {
                cert: ctx.worker.agent_cert.clone(),
                key: ctx.worker.agent_key.clone(),
                ca: ctx.worker.konnectivity_ca.clone(),
            },
            agent_admin: plan.agent_admin,
            servers: ServerSource {
                controllers: ctx.controllers.clone(),
                local: None,
            },
            api_lb: (plan.worker_spec.api_load_balancer_port != 0).then(|| {
                // What kubelet's TLS bootstrap writes: cert and key in one file.
                let client = absolute(
                    &plan
                        .paths
                        .kubelet_cert_dir()
                        .join(kubelet::CLIENT_CERT_FILE),
                );
                NodeApiLb {
                    port: plan.worker_spec.api_load_balancer_port,
                    ca: ctx.worker.ca_cert.clone(),
                    identity: ClientIdentity {
                        cert: client.clone(),
                        key: client,
                    },
                    cancel: ctx.cancel.clone(),
                }
            }),
            cluster_dns,
            cluster_domain: defaults.cluster_domain.clone(),
            pod_cidr: defaults.pod_cidr.clone(),
            // The join wrote the bootstrap kubeconfig (with the worker token,
            // which the join API mirrors as a bootstrap-token Secret).
            kubelet_kubeconfig: None,
            disabled: &plan.disabled,
        },
    )?;
    Ok((manager, api_lb))
}

/// Points the kubelet's bootstrap kubeconfig and its kubeconfig (which
/// kube-proxy shares) at the node-local balancer, or, with it off, back at
/// the first controller's apiserver, so that turning the balancer on or off
/// in the config takes effect at the next start.
fn point_kubeconfigs(
    paths: &NodePaths,
    worker: &WorkerPaths,
    st: &WorkerState,
    lb_port: u16,
) -> Result<(), NodeError> {
    let server = if lb_port != 0 {
        crate::apilb::kubeconfig::local_server(lb_port)
    } else {
        match st.controllers.first() {
            Some(c) => c.api_server.clone(),
            None => return Ok(()),
        }
    };
    for file in [
        &worker.kubelet_bootstrap_kubeconfig,
        &paths.kubelet_kubeconfig(),
    ] {
        if crate::apilb::kubeconfig::point_at(file, &server)? {
            info!(file = %file.display(), %server, "kubeconfig points at the apiserver through {}", if lb_port != 0 { "the node-local balancer" } else { "the first controller (balancer off)" });
        }
    }
    Ok(())
}
