//! `mkectl worker`: joins the cluster once with a worker token (the private
//! key of the agent certificate is generated here and never leaves the
//! node), then runs the worker's components until SIGTERM/SIGINT (a second
//! signal forces the exit). A restart reuses the saved credentials.
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
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, Instrument};

use super::controller::{
    hostname, lock_run_dir, run_until_signal, spawn_signal_handler, stop_stale_children,
};
use super::controller_join::{join_failure, read_token_file};
use crate::apilb::{ApiLbConfig, HttpsHealthCheck};
use crate::cli::{GlobalArgs, WorkerArgs};
use crate::components::api_lb::{ApiLbMonitor, ApiLbSettings, ApiLoadBalancer};
use crate::components::containerd::{self, Containerd, ContainerdSettings};
use crate::components::image_import::ImageImport;
use crate::components::konnectivity_agent::{
    KonnectivityAgent, KonnectivityAgentSettings, ServerSource,
};
use crate::components::kube_proxy::{self, KubeProxy, KubeProxySettings};
use crate::components::kubelet::{self, Kubelet, KubeletSettings, WorkerSpec};
use crate::components::Manager;
use crate::config::{ClusterConfig, NodePaths};
use crate::exit::UsageError;
use crate::fsutil;
use crate::fsutil::absolute;
use crate::https_probe::ClientIdentity;
use crate::join::client::{join_worker, refresh_controllers};
use crate::join::registry::ControllerRecord;
use crate::join::state::{self, WorkerPaths, WorkerState};
use crate::join::wire::KubeletDefaults;
use crate::join::{JoinToken, Role};
use crate::konnectivity::TlsFiles;

/// Everything the worker's components are built from.
pub struct WorkerContext {
    /// The local ClusterConfig (`--config`): `spec.worker` and the kubelet's
    /// extraArgs; cluster-wide values come from the join.
    pub cfg: ClusterConfig,
    /// `spec.worker` with `--labels` and `--taints` merged in, validated.
    pub worker_spec: WorkerSpec,
    pub paths: NodePaths,
    pub worker: WorkerPaths,
    /// Identity, address, cluster name, controllers, apiserver URLs.
    pub state: WorkerState,
    pub node_address: IpAddr,
    pub args: WorkerArgs,
    /// The live controller list (see [`refresh_controllers`]).
    pub controllers: watch::Receiver<Vec<ControllerRecord>>,
    /// Ends the tasks that follow `controllers`.
    pub cancel: CancellationToken,
}

pub async fn run(global: &GlobalArgs, args: &WorkerArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Everything from the command line and the config is checked before
    // anything is written or joined.
    let cfg = super::load_config(global.config.as_deref())?;
    for name in &args.disable_components {
        if !WORKER_OPTIONAL.contains(&name.as_str()) {
            return Err(UsageError(format!(
                "--disable-components: unknown worker component {name:?}; known: {}",
                WORKER_OPTIONAL.join(", ")
            ))
            .into());
        }
    }
    let worker_spec = worker_spec(
        &cfg,
        &args.labels,
        &args.taints,
        &crate::config::display_name(global.config.as_deref()),
    )?;
    let paths = NodePaths::new(&global.data_dir, &global.run_dir, global.bin_dir.as_deref());
    let worker = WorkerPaths::new(&paths.data_dir);
    let span = info_span!("worker", component = "worker");
    async move {
        fsutil::ensure_dir(&paths.run_dir, fsutil::PRIVATE_DIR_MODE)?;
        let _lock = lock_run_dir(&paths)?;
        // Bundled binaries (containerd, kubelet, runc) land in <data-dir>/bin.
        crate::bundle::stage(&paths).await?;
        let st = match state::read::<WorkerState>(&worker.state)? {
            Some(st) => {
                if args.token.is_some() || args.token_file.is_some() {
                    info!(state = %worker.state.display(), "already joined; the token is ignored");
                }
                if args.node_name.as_ref().is_some_and(|n| *n != st.node_name) {
                    return Err(UsageError(format!(
                        "this node joined as {:?}; --node-name {:?} differs (run `mkectl reset` to join again under another name)",
                        st.node_name,
                        args.node_name.as_deref().unwrap_or_default()
                    ))
                    .into());
                }
                st
            }
            None => first_join(args, &worker).await?,
        };
        let node_address: IpAddr = st
            .address
            .parse()
            .with_context(|| format!("{}: bad address", worker.state.display()))?;
        info!(
            node = %st.node_name,
            %node_address,
            join_ms = started.elapsed().as_millis() as u64,
            "worker joined; starting components"
        );
        // The balancer runs only beside the kubelet it serves.
        let lb_port = if args.disable_components.iter().any(|d| d == kubelet::NAME) {
            0
        } else {
            worker_spec.api_load_balancer_port
        };
        point_kubeconfigs(&paths, &worker, &st, lb_port)?;
        let cancel = CancellationToken::new();
        let (controllers_tx, controllers) = watch::channel(st.controllers.clone());
        let ctx = WorkerContext {
            cfg: cfg.clone(),
            worker_spec: worker_spec.clone(),
            paths: paths.clone(),
            worker: worker.clone(),
            state: st,
            node_address,
            args: args.clone(),
            controllers,
            cancel: cancel.clone(),
        };
        let (mut manager, api_lb) = build_components(&ctx)?;
        manager.init_all().await?;
        check_node_side(&manager, &paths, &worker_spec).await?;

        stop_stale_children(&paths, &manager).await?;

        let refresh_every = args.refresh_interval.max(Duration::from_millis(100));
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
        spawn_signal_handler(cancel.clone())?;
        // Status socket and /metrics; no rotation here: the agent
        // certificate comes from the join and kubelet rotates its own.
        let ops = crate::ops::OpsSettings {
            role: "worker",
            cfg: cfg.clone(),
            paths: paths.clone(),
            node_name: ctx.state.node_name.clone(),
            node_address,
            pki_spec: None,
            etcd: false,
            metrics: Default::default(),
            api_lb,
            front: None,
        };
        let _ops = crate::ops::start(ops, manager.handle(), &cancel).await?;
        run_until_signal(&mut manager, &cancel, started, "worker", |_| {}).await
    }
    .instrument(span)
    .await
}

/// Before a node side that runs pods starts: the host prerequisites
/// (`crate::hostcheck`) and the upstream binaries (kubelet, kube-proxy),
/// which only come with the bundle: missing or of another release, it is
/// exit 69 before anything starts.
pub async fn check_node_side(
    manager: &Manager,
    paths: &NodePaths,
    spec: &WorkerSpec,
) -> anyhow::Result<()> {
    let names = manager.names();
    if names.contains(&kubelet::NAME) {
        crate::hostcheck::enforce(&crate::hostcheck::RealHost, spec.host_checks)?;
    }
    for name in [kubelet::NAME, kube_proxy::NAME] {
        if names.contains(&name) {
            let path = crate::components::binary::find(name, paths)?;
            let found = crate::components::binary::check_kube_version(
                name,
                &path,
                kubelet::KUBERNETES_VERSION,
            )
            .await?;
            info!(binary = name, path = %path.display(), version = %found, "upstream binary checked");
        }
    }
    Ok(())
}

/// The first start: join with the token, write the credentials.
async fn first_join(args: &WorkerArgs, worker: &WorkerPaths) -> anyhow::Result<WorkerState> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => {
            let token = JoinToken::decode(t).map_err(|e| UsageError(format!("--token: {e}")))?;
            if token.role != Role::Worker {
                return Err(join_failure(crate::join::JoinError::WrongRole {
                    have: token.role,
                    want: Role::Worker,
                    what: "`mkectl worker`",
                }));
            }
            token
        }
        (None, Some(f)) => read_token_file(f, Role::Worker)?,
        (None, None) => {
            return Err(UsageError(format!(
                "this node has not joined a cluster yet ({} missing): give --token or --token-file",
                worker.state.display()
            ))
            .into())
        }
    };
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => hostname()?,
    };
    // Refused rather than guessed: a node registered under 127.0.0.1 is
    // unreachable for everyone else.
    let address =
        match args
            .address
            .or_else(crate::config::paths::detect_node_address)
        {
            Some(a) => a,
            None => return Err(UsageError(
                "this host has no global IPv4 address to register the node under: give --address"
                    .into(),
            )
            .into()),
        };
    info!(endpoints = ?token.endpoints, token_id = %token.bootstrap.id, %node_name, %address, "joining the cluster as a worker");
    join_worker(&token, &node_name, address, worker)
        .await
        .map_err(join_failure)
        .context("worker join")
}

/// The worker's components in start order, and the reader of its
/// apiserver balancer (when one runs) for the status and metrics pages.
pub fn build_components(ctx: &WorkerContext) -> anyhow::Result<(Manager, Option<ApiLbMonitor>)> {
    // Cluster DNS and domain come from the join.
    let defaults: KubeletDefaults = serde_json::from_slice(&fsutil::read(
        &ctx.worker.kubelet_defaults,
    )?)
    .with_context(|| {
        format!(
            "{}: bad kubelet defaults",
            ctx.worker.kubelet_defaults.display()
        )
    })?;
    let cluster_dns = match defaults.cluster_dns.first() {
        Some(dns) => dns.parse().with_context(|| {
            format!(
                "{}: bad clusterDNS {dns:?}",
                ctx.worker.kubelet_defaults.display()
            )
        })?,
        None => ClusterConfig::default().cluster_dns_ip(),
    };
    let mut manager = Manager::new();
    let api_lb = add_node_components(
        &mut manager,
        NodeSide {
            cfg: &ctx.cfg,
            worker_spec: &ctx.worker_spec,
            paths: &ctx.paths,
            node_name: &ctx.state.node_name,
            node_address: ctx.node_address,
            agent_tls: TlsFiles {
                cert: ctx.worker.agent_cert.clone(),
                key: ctx.worker.agent_key.clone(),
                ca: ctx.worker.konnectivity_ca.clone(),
            },
            agent_admin: (ctx.args.agent_admin_port != 0)
                .then(|| SocketAddr::new(ctx.args.agent_admin_address, ctx.args.agent_admin_port)),
            servers: ServerSource {
                controllers: ctx.controllers.clone(),
                local: None,
            },
            api_lb: (ctx.worker_spec.api_load_balancer_port != 0).then(|| {
                // What kubelet's TLS bootstrap writes: cert and key in one file.
                let client =
                    absolute(&ctx.paths.kubelet_cert_dir().join(kubelet::CLIENT_CERT_FILE));
                NodeApiLb {
                    port: ctx.worker_spec.api_load_balancer_port,
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
            disabled: &ctx.args.disable_components,
        },
    )?;
    Ok((manager, api_lb))
}

/// What the node side (containerd, konnectivity agent, kubelet) is built
/// from, under `mkectl worker` and under `mkectl controller --enable-worker`.
pub struct NodeSide<'a> {
    pub cfg: &'a ClusterConfig,
    pub worker_spec: &'a WorkerSpec,
    pub paths: &'a NodePaths,
    pub node_name: &'a str,
    pub node_address: IpAddr,
    /// Agent certificate and key, and the konnectivity CA.
    pub agent_tls: TlsFiles,
    /// The agent's /healthz /readyz /metrics; None = off.
    pub agent_admin: Option<SocketAddr>,
    pub servers: ServerSource,
    pub cluster_dns: IpAddr,
    pub cluster_domain: String,
    /// The cluster's pod CIDR (kube-proxy's `clusterCIDR`).
    pub pod_cidr: String,
    /// A kubeconfig the kubelet uses from its first start (a controller's
    /// own, issued from the local CA); None = TLS bootstrap with the
    /// bootstrap kubeconfig the join wrote.
    pub kubelet_kubeconfig: Option<PathBuf>,
    /// `--disable-components` (only names in [`WORKER_OPTIONAL`] matter).
    pub disabled: &'a [String],
    /// The node-local apiserver balancer, before the kubelet; None = off.
    pub api_lb: Option<NodeApiLb>,
}

/// What the node-local apiserver balancer needs besides the controller list.
pub struct NodeApiLb {
    /// `spec.worker.apiLoadBalancerPort` on 127.0.0.1.
    pub port: u16,
    /// The cluster CA the apiservers' serving certificates chain to.
    pub ca: PathBuf,
    /// Client certificate the `/readyz` checks present (the kubelet's own:
    /// re-read at every check, so rotation is picked up).
    pub identity: ClientIdentity,
    /// Ends the task that maps the controller list to backends.
    pub cancel: CancellationToken,
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
) -> anyhow::Result<()> {
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

/// Adds the node side in start order (docs/design.md "Process model"):
/// containerd (the kubelet needs its socket), the konnectivity agent, the
/// image import (with containerd ready, before kubelet can ask for an
/// image: the sandbox image above all), the apiserver balancer, the kubelet
/// and kube-proxy last. Returns the balancer's reader, when one runs.
pub fn add_node_components(
    manager: &mut Manager,
    n: NodeSide<'_>,
) -> anyhow::Result<Option<ApiLbMonitor>> {
    let enabled = |name: &str| !n.disabled.iter().any(|d| d == name);
    let mut monitor = None;
    let controllers = n.servers.controllers.clone();
    let driver = n.worker_spec.cgroup_driver.resolve();
    let mut containerd_settings =
        ContainerdSettings::new(n.paths, &n.worker_spec.sandbox_image, driver);
    containerd_settings.cni_bin_dir = n.worker_spec.cni_bin_dir.clone();
    containerd_settings.cni_conf_dir = n.worker_spec.cni_conf_dir.clone();
    if enabled(containerd::NAME) {
        manager.add(Box::new(Containerd::new(
            containerd_settings.clone(),
            n.paths.clone(),
        )));
    }

    manager.add(Box::new(KonnectivityAgent::new(
        KonnectivityAgentSettings {
            tls: n.agent_tls,
            agent_id: n.node_name.to_string(),
            identifiers: format!("host={}", n.node_address),
            admin_listen: n.agent_admin,
            servers: n.servers,
        },
    )));

    // Only into the containerd mkectl runs: with containerd disabled its
    // images are the operator's business.
    if enabled(containerd::NAME) {
        manager.add(Box::new(ImageImport::new(
            n.paths.clone(),
            containerd_settings.socket.clone(),
            &containerd_settings.sandbox_image,
        )));
    }

    if enabled(kubelet::NAME) {
        if let Some(lb) = &n.api_lb {
            let component = api_lb_component(controllers.clone(), lb);
            monitor = Some(component.monitor());
            manager.add(Box::new(component));
        }
        let mut k = KubeletSettings::for_node(n.paths, n.node_name, n.node_address);
        k.cluster_dns_ip = n.cluster_dns;
        k.cluster_domain = n.cluster_domain;
        k.containerd_socket = containerd_settings.socket.clone();
        k.cgroup_driver = containerd_settings.cgroup_driver;
        if let Some(kubeconfig) = n.kubelet_kubeconfig {
            k.kubeconfig = kubeconfig;
        }
        k.apply_spec(n.worker_spec)?;
        k.extra_args = n.cfg.spec.extra_args.kubelet.clone();
        let kubelet_kubeconfig = k.kubeconfig.clone();
        manager.add(Box::new(Kubelet::new(k, n.paths.clone())));

        // kube-proxy runs with the kubelet's credentials (see
        // `components::kube_proxy`), so only where a kubelet runs, after it.
        if enabled(kube_proxy::NAME) {
            let mut p =
                KubeProxySettings::for_node(n.paths, n.node_name, n.node_address, &n.pod_cidr);
            p.kubeconfig = kubelet_kubeconfig;
            p.healthz_port = n.worker_spec.kube_proxy_healthz_port;
            p.metrics_port = n.worker_spec.kube_proxy_metrics_port;
            manager.add(Box::new(KubeProxy::new(p, n.paths.clone())));
        }
    }
    Ok(monitor)
}

/// The balancer probes each apiserver's `/readyz` with the kubelet's own
/// client certificate (re-read at every probe) and verifies the serving
/// certificate against the cluster CA.
fn api_lb_component(
    controllers: watch::Receiver<Vec<ControllerRecord>>,
    lb: &NodeApiLb,
) -> ApiLoadBalancer {
    let health = HttpsHealthCheck::new(lb.ca.clone(), Some(lb.identity.clone()));
    let listen = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), lb.port);
    ApiLoadBalancer::new(ApiLbSettings {
        config: ApiLbConfig::new(listen, health),
        backends: crate::apilb::follow_records(controllers, lb.cancel.clone()),
    })
}

/// Worker components that `--disable-components` may leave out.
pub const WORKER_OPTIONAL: &[&str] = &[containerd::NAME, kubelet::NAME, kube_proxy::NAME];

/// `spec.worker` with `--labels` and `--taints` merged in, validated.
pub fn worker_spec(
    cfg: &ClusterConfig,
    labels: &[String],
    taints: &[String],
    file: &str,
) -> anyhow::Result<WorkerSpec> {
    let mut spec = cfg.spec.worker.clone();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--labels: {l:?} is not key=value")))?;
        spec.labels.insert(k.to_string(), v.to_string());
    }
    spec.taints.extend(taints.iter().cloned());
    spec.validate(file)
        .map_err(|e| UsageError(format!("--labels/--taints or {e}")))?;
    Ok(spec)
}

/// The data dir file that marks a joined worker (for `reset`).
pub fn state_file(data_dir: &std::path::Path) -> PathBuf {
    WorkerPaths::new(data_dir).state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::image_import;
    use crate::konnectivity::ServerAddr;

    fn plan(disabled: &[String]) -> Vec<&'static str> {
        let d = tempfile::tempdir().unwrap();
        let paths = NodePaths::new(&d.path().join("data"), &d.path().join("run"), None);
        let cfg = ClusterConfig::default();
        let spec = WorkerSpec::default();
        let (_tx, controllers) = tokio::sync::watch::channel(Vec::new());
        let mut manager = Manager::new();
        add_node_components(
            &mut manager,
            NodeSide {
                cfg: &cfg,
                worker_spec: &spec,
                paths: &paths,
                node_name: "w1",
                node_address: IpAddr::from([127, 0, 0, 1]),
                agent_tls: TlsFiles {
                    cert: "c".into(),
                    key: "k".into(),
                    ca: "ca".into(),
                },
                agent_admin: None,
                servers: ServerSource {
                    local: Some(ServerAddr {
                        host: "127.0.0.1".into(),
                        port: 8132,
                    }),
                    controllers: controllers.clone(),
                },
                api_lb: Some(NodeApiLb {
                    port: 7443,
                    ca: "ca".into(),
                    identity: ClientIdentity {
                        cert: "kc".into(),
                        key: "kc".into(),
                    },
                    cancel: CancellationToken::new(),
                }),
                cluster_dns: IpAddr::from([10, 96, 0, 10]),
                cluster_domain: "cluster.local".into(),
                pod_cidr: "10.244.0.0/16".into(),
                kubelet_kubeconfig: None,
                disabled,
            },
        )
        .unwrap();
        manager.names()
    }

    #[tokio::test]
    async fn images_are_imported_after_containerd_and_before_kubelet() {
        assert_eq!(
            plan(&[]),
            [
                containerd::NAME,
                "konnectivity-agent",
                image_import::NAME,
                crate::components::api_lb::NAME,
                kubelet::NAME,
                kube_proxy::NAME
            ]
        );
        // No containerd of ours, nothing to import into.
        assert_eq!(
            plan(&[containerd::NAME.to_string()]),
            [
                "konnectivity-agent",
                crate::components::api_lb::NAME,
                kubelet::NAME,
                kube_proxy::NAME
            ]
        );
        // kube-proxy uses the kubelet's credentials: not without it.
        assert_eq!(
            plan(&[kubelet::NAME.to_string()]),
            [containerd::NAME, "konnectivity-agent", image_import::NAME]
        );
    }
}
