//! The controller role: PKI, then every controller component in order
//! (docs/design.md "Process model"), with the node side last under
//! `--enable-worker`, until the first signal.

use std::net::IpAddr;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::controller_context::{ControllerContext, ControllerWorker};
use super::join_token::TokenSource;
use super::node_side::{add_node_components, check_node_side, NodeApiLb, NodeSide};
use super::{controller_join, lifecycle, url_for, NodeError};
use crate::components::konnectivity_agent::ServerSource;
use crate::components::kube_common::{LocalKubeComponent, LocalKubeSettings, KUBERNETES_VERSION};
use crate::components::{
    api_front, binary, controller_registry, csr_approver, etcd, join_api, konnectivity_server,
    kube_apiserver as kas, kube_controller_manager as kcm, kube_scheduler as ksch,
    manifest_applier, Manager,
};
use crate::config::{ClusterConfig, NodePaths};
use crate::https_probe::ClientIdentity;
use crate::{fsutil, ops, pki};

/// Every component a controller can run, in start order; the names
/// `--disable-components` accepts.
pub const COMPONENTS: &[&str] = &[
    etcd::NAME,
    konnectivity_server::NAME,
    kas::NAME,
    join_api::NAME,
    controller_registry::NAME,
    kcm::NAME,
    ksch::NAME,
    manifest_applier::NAME,
    csr_approver::NAME,
];

/// Upstream control-plane binaries that only exist with the bundle: checked
/// before anything starts rather than in `init`, so `--init-only` works
/// without them (the node side's are `check_node_side`'s).
const CONTROL_PLANE_BINARIES: &[&str] = &[kas::NAME, kcm::NAME, ksch::NAME];

/// The taint a controller running the worker side registers its node with
/// (unless `--no-taints`), so only pods that tolerate it land there.
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane:NoSchedule";

/// A controller as the command line and the config describe it, checked.
pub struct ControllerPlan {
    pub cfg: ClusterConfig,
    pub paths: NodePaths,
    pub node_name: String,
    pub node_address: IpAddr,
    /// `--disable-components`.
    pub disabled: Vec<String>,
    /// `--enable-worker`.
    pub worker: Option<ControllerWorker>,
    /// `--token-file`: join an existing cluster (once; read only then).
    pub token: Option<TokenSource>,
    /// `--init-only`: write the PKI and configuration, then exit.
    pub init_only: bool,
}

/// Runs the controller until the first signal.
pub async fn run(plan: ControllerPlan) -> Result<(), NodeError> {
    let started = Instant::now();
    let ControllerPlan {
        cfg,
        paths,
        node_name,
        node_address,
        disabled,
        worker,
        token,
        init_only,
    } = plan;
    let enabled = |name: &str| !disabled.iter().any(|d| d == name);
    let enable_worker = worker.is_some();
    let span = info_span!("controller", component = "controller", node = %node_name);
    async move {
        info!(%node_address, data_dir = %paths.data_dir.display(), "starting controller");
        if cfg.single_port() && node_address.is_loopback() {
            // The front takes <node address>:<port> and kube-apiserver
            // moves to loopback: both cannot have the same address.
            return Err(NodeError::Usage(format!(
                "spec.api.exposeStrategy single-port needs a node address other than loopback ({node_address}): set spec.api.address"
            )));
        }
        if node_address.is_loopback() {
            // kube-apiserver refuses loopback endpoints: the `kubernetes`
            // Service then has no EndpointSlice and pods cannot reach it.
            warn!(
                %node_address,
                "node address is loopback: fine for a single host, but the `kubernetes` Service gets no endpoints; set spec.api.address to a routable address for pods to reach the apiserver"
            );
        }
        let _lock = lifecycle::lock(&paths)?;
        // Before anything is written to the data dir: a refused token
        // leaves nothing behind.
        let join =
            controller_join::join_if_needed(token.as_ref(), &cfg, node_address, &paths, &node_name)
                .await?;
        fsutil::ensure_dir(&paths.data_dir, fsutil::PRIVATE_DIR_MODE)?;
        // Bundled binaries go to <data-dir>/bin before any component looks
        // one up (lookup order in components/binary.rs).
        crate::bundle::stage(&paths).await?;

        let spec = pki_spec(&cfg, node_address, &paths, &node_name, enable_worker);
        let ensure_spec = spec.clone();
        let report = tokio::task::spawn_blocking(move || pki::ensure(&ensure_spec))
            .await
            .map_err(|source| NodeError::Task {
                what: "PKI generation",
                source,
            })??;
        info!(
            created = report.created.len(),
            renewed = report.renewed.len(),
            "PKI in place"
        );
        let ctx = ControllerContext {
            pki: pki::PkiPaths::new(&paths.pki_dir()),
            cfg: cfg.clone(),
            paths: paths.clone(),
            node_name: node_name.clone(),
            node_address,
            join,
            metrics: Default::default(),
            worker,
        };
        let Built {
            mut manager,
            live_count,
            front,
            api_lb,
        } = build_components(&ctx, &enabled)?;
        manager.init_all().await?;
        if init_only {
            info!("--init-only: PKI and configuration written, exiting");
            return Ok(());
        }

        // Every upstream kube binary is found and is the right release
        // before anything starts, so a wrong one starts nothing half-way.
        for name in manager.names() {
            if CONTROL_PLANE_BINARIES.contains(&name) {
                let path = binary::find(name, &paths)?;
                let found = binary::check_kube_version(name, &path, KUBERNETES_VERSION).await?;
                info!(binary = name, path = %path.display(), version = %found, "upstream binary checked");
            }
        }
        if let Some(w) = &ctx.worker {
            check_node_side(&manager, &paths, &w.spec).await?;
        }

        let cancel = CancellationToken::new();
        let role = if enable_worker {
            "controller+worker"
        } else {
            "controller"
        };
        // Status socket, /metrics and certificate rotation (issue 7).
        let ops = ops::OpsSettings {
            role,
            cfg: cfg.clone(),
            paths: paths.clone(),
            node_name: node_name.clone(),
            node_address,
            pki_spec: Some(spec),
            etcd: enabled(etcd::NAME),
            metrics: ctx.metrics.clone(),
            api_lb,
            front,
        };
        let started_with = controller_join::controller_count(&ctx) as u32;
        // Once everything runs, so a component still starting is not skipped.
        let watch_count = |m: &Manager| {
            if let Some(count) = live_count {
                tokio::spawn(leader_election_on_growth(
                    m.handle(),
                    started_with,
                    count,
                    cancel.clone(),
                ));
            }
        };
        let run = lifecycle::Run {
            role,
            paths: paths.clone(),
            ops,
            cancel: cancel.clone(),
            started,
        };
        lifecycle::run(manager, run, watch_count).await
    }
    .instrument(span)
    .await
}

/// Receives the number of live controllers (the registry's count).
type LiveCount = tokio::sync::watch::Receiver<u32>;

/// The controller's components in start order (docs/design.md "Process model"),
/// minus the disabled ones; with `--enable-worker` the worker side last.
/// Also the live controller count when the registry runs.
fn build_components(
    ctx: &ControllerContext,
    enabled: &dyn Fn(&str) -> bool,
) -> Result<Built, NodeError> {
    let mut manager = Manager::new();
    let mut front_monitor = None;
    // The live controller list, for an embedded agent.
    let mut controllers = None;
    // Controllers in the cluster as known at start: drives leader election,
    // the apiserver's shutdown delay and the first konnectivity server count.
    let n = controller_join::controller_count(ctx);
    // The registry counts live controllers; the konnectivity server announces it.
    let (server_count, server_count_rx) = tokio::sync::watch::channel(n as u32);
    let live_count = enabled(controller_registry::NAME).then(|| server_count_rx.clone());
    if enabled(etcd::NAME) {
        let mut settings = etcd_settings(
            &ctx.cfg,
            ctx.node_address,
            &ctx.paths,
            &ctx.pki,
            &ctx.node_name,
        );
        if let Some(st) = &ctx.join {
            settings.initial_cluster = Some(st.initial_cluster.clone());
            settings.initial_cluster_state = "existing".into();
            settings.learner = controller_join::learner_promotion(ctx);
        }
        manager.add(Box::new(etcd::Etcd::new(settings, ctx.paths.clone())));
    }
    // Single port: the front hands the konnectivity and join connections
    // to their listeners, which then bind nothing themselves.
    let front = ctx.cfg.single_port().then(|| {
        let listen = std::net::SocketAddr::new(ctx.node_address, ctx.cfg.spec.api.port);
        let apiserver = std::net::SocketAddr::new(
            kas::KubeApiserverSettings::from_config(
                &ctx.cfg,
                &ctx.paths,
                &ctx.pki,
                ctx.node_address,
                n,
            )
            .bind_address,
            ctx.cfg.spec.api.port,
        );
        let mut front = crate::expose::FrontConfig::new(listen, apiserver);
        let (ktx, konnectivity) = crate::expose::RoutedIncoming::channel(listen);
        let (jtx, join) = crate::expose::RoutedIncoming::channel(listen);
        if enabled(konnectivity_server::NAME) {
            front.konnectivity = Some(ktx);
        }
        if enabled(join_api::NAME) {
            front.join = Some(jtx);
        }
        (front, konnectivity, join)
    });
    if enabled(konnectivity_server::NAME) {
        let k = &ctx.cfg.spec.konnectivity;
        let admin_ip = k.admin_address;
        let settings = konnectivity_server::KonnectivityServerSettings {
            server_id: ctx.node_name.clone(),
            server_count: n as u32,
            agent_listen: std::net::SocketAddr::new(ctx.node_address, k.agent_port),
            admin_listen: std::net::SocketAddr::new(admin_ip, k.admin_port),
            tls: crate::konnectivity::TlsFiles {
                cert: ctx.pki.konnectivity_server.cert.clone(),
                key: ctx.pki.konnectivity_server.key.clone(),
                ca: ctx.pki.konnectivity_ca.cert.clone(),
            },
            server_count_updates: live_count.clone(),
            agent_identity: k.agent_identity,
            agent_routed: front.as_ref().map(|(_, k, _)| k.clone()),
        };
        manager.add(Box::new(konnectivity_server::KonnectivityServer::new(
            settings,
            ctx.paths.clone(),
        )));
    }
    if let Some((config, _, _)) = &front {
        let component = api_front::ApiFront::new(config.clone());
        front_monitor = Some(component.monitor());
        manager.add(Box::new(component));
    }
    let (cfg, paths, pki) = (&ctx.cfg, &ctx.paths, &ctx.pki);
    if enabled(kas::NAME) {
        let s = kas::KubeApiserverSettings::from_config(cfg, paths, pki, ctx.node_address, n);
        manager.add(Box::new(kas::KubeApiserver::new(s, paths.clone())));
    }
    if enabled(join_api::NAME) {
        let mut settings = controller_join::join_api_settings(ctx, enabled(kas::NAME));
        settings.routed = front.as_ref().map(|(_, _, j)| j.clone());
        manager.add(Box::new(join_api::JoinApi::new(settings)));
    }
    if enabled(controller_registry::NAME) {
        let (endpoint, tls) = controller_join::etcd_client(ctx);
        let registry = controller_registry::ControllerRegistry::new(
            endpoint,
            tls,
            controller_join::controller_record(ctx),
            crate::join::controllers_cache_file(&ctx.paths.data_dir),
            server_count,
        );
        controllers = Some(registry.controllers());
        manager.add(Box::new(registry));
    }
    // Both read the live count at every (re)start: see leader_election_on_growth.
    if enabled(kcm::NAME) {
        let s = kcm::KubeControllerManagerSettings::from_config(cfg, paths, pki, n);
        let c = kcm::KubeControllerManager::new(s, paths.clone());
        manager.add(Box::new(follow_count(c, &live_count)));
    }
    if enabled(ksch::NAME) {
        let s = ksch::KubeSchedulerSettings::from_config(cfg, paths, pki, n);
        let c = ksch::KubeScheduler::new(s, paths.clone());
        manager.add(Box::new(follow_count(c, &live_count)));
    }
    // These talk to the local kube-apiserver with the admin identity.
    let apiserver_runs = manager.names().contains(&kas::NAME);
    for name in [manifest_applier::NAME, csr_approver::NAME] {
        if !enabled(name) {
            continue;
        }
        if !apiserver_runs {
            info!(
                component = name,
                "not started: it needs kube-apiserver, which is not running here"
            );
            continue;
        }
        let admin = ctx.pki.admin_kubeconfig.clone();
        manager.add(if name == manifest_applier::NAME {
            Box::new(manifest_applier::ApplierComponent::new(
                &ctx.cfg,
                ctx.node_address,
                ctx.paths.clone(),
                admin,
                ctx.node_name.clone(),
            ))
        } else {
            Box::new(csr_approver::CsrApprover::new(
                csr_approver::CsrApproverSettings {
                    kubeconfig: admin,
                    resync: csr_approver::DEFAULT_RESYNC,
                },
            ))
        });
    }
    let mut api_lb = None;
    if let Some(w) = &ctx.worker {
        api_lb = add_worker_side(&mut manager, ctx, w, controllers)?;
    }
    Ok(Built {
        manager,
        live_count,
        front: front_monitor,
        api_lb,
    })
}

/// The components in start order and the readers the ops pages need.
struct Built {
    manager: Manager,
    live_count: Option<LiveCount>,
    /// The single-port front, when `exposeStrategy: single-port`.
    front: Option<api_front::FrontMonitor>,
    /// The node-local apiserver balancer of `--enable-worker`.
    api_lb: Option<crate::components::api_lb::ApiLbMonitor>,
}

fn follow_count<S: LocalKubeSettings>(
    c: LocalKubeComponent<S>,
    live: &Option<LiveCount>,
) -> LocalKubeComponent<S> {
    match live {
        Some(rx) => c.with_controller_count(rx.clone()),
        None => c,
    }
}

/// A controller that started as the only one runs kube-controller-manager
/// and kube-scheduler without leader election. When a second controller
/// registers, both are restarted once with leader election on (they read
/// the live count at every start), so two controller-managers never act at
/// the same time. Leader election stays on from then on.
async fn leader_election_on_growth(
    manager: crate::components::ManagerHandle,
    started_with: u32,
    mut count: LiveCount,
    cancel: CancellationToken,
) {
    if started_with > 1 {
        return; // configured with leader election from the start
    }
    loop {
        let n = *count.borrow_and_update();
        if n > 1 {
            let why = format!(
                "{n} controllers now: restarting with leader election (started as the only one)"
            );
            for (name, result) in manager
                .restart_named(&[kcm::NAME, ksch::NAME], &why, &cancel)
                .await
            {
                if let Err(e) = result {
                    warn!(component = name, error = %crate::telemetry::Chain(&e), "restart for leader election failed");
                }
            }
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = count.changed() => if changed.is_err() { return },
        }
    }
}

/// containerd, the konnectivity agent, the node-local apiserver balancer and
/// the kubelet, with credentials issued from the local CAs
/// (`PkiSpec::worker`) instead of a join: the agent dials this controller's
/// own agent listener (and every other controller's, from the registry),
/// the kubelet uses `pki/kubelet.conf`, which points at the balancer (whose
/// backends are every live apiserver, this one included), so the kubelet
/// keeps an apiserver when this one fails while mkectl runs on.
fn add_worker_side(
    manager: &mut Manager,
    ctx: &ControllerContext,
    w: &ControllerWorker,
    controllers: Option<tokio::sync::watch::Receiver<Vec<crate::join::registry::ControllerRecord>>>,
) -> Result<Option<crate::components::api_lb::ApiLbMonitor>, NodeError> {
    let local = crate::konnectivity::ServerAddr {
        host: ctx.node_address.to_string(),
        port: ctx.cfg.exposed_konnectivity_port(),
    };
    // Without the registry: this controller only.
    let controllers = controllers.unwrap_or_else(|| {
        tokio::sync::watch::channel(vec![controller_join::controller_record(ctx)]).1
    });
    add_node_components(
        manager,
        NodeSide {
            cfg: &ctx.cfg,
            worker_spec: &w.spec,
            paths: &ctx.paths,
            node_name: &ctx.node_name,
            node_address: ctx.node_address,
            agent_tls: crate::konnectivity::TlsFiles {
                cert: ctx.pki.konnectivity_agent.cert.clone(),
                key: ctx.pki.konnectivity_agent.key.clone(),
                ca: ctx.pki.konnectivity_ca.cert.clone(),
            },
            agent_admin: w.agent_admin,
            servers: ServerSource {
                controllers,
                local: Some(local),
            },
            api_lb: (w.spec.api_load_balancer_port != 0).then(|| NodeApiLb {
                port: w.spec.api_load_balancer_port,
                ca: ctx.pki.ca.cert.clone(),
                identity: ClientIdentity {
                    cert: ctx.pki.kubelet_client.cert.clone(),
                    key: ctx.pki.kubelet_client.key.clone(),
                },
                // Follows the registry for the life of the process.
                cancel: CancellationToken::new(),
            }),
            cluster_dns: ctx.cfg.cluster_dns_ip(),
            cluster_domain: ctx.cfg.spec.network.cluster_domain.clone(),
            pod_cidr: ctx.cfg.spec.network.pod_cidr.to_string(),
            kubelet_kubeconfig: Some(ctx.pki.kubelet_kubeconfig.clone()),
            disabled: &w.disabled,
        },
    )
}

/// Maps the cluster config onto the PKI's inputs; `worker` adds the
/// kubelet and konnectivity agent certificates of `--enable-worker`.
pub fn pki_spec(
    cfg: &ClusterConfig,
    node: std::net::IpAddr,
    paths: &NodePaths,
    node_name: &str,
    worker: bool,
) -> pki::PkiSpec {
    let mut node_addresses = vec![node];
    let peer = cfg.etcd_peer_address(node);
    if peer != node {
        node_addresses.push(peer);
    }
    let mut extra_sans = cfg.spec.api.sans.clone();
    if let Some(ext) = &cfg.spec.api.external_address {
        extra_sans.push(ext.clone());
    }
    let pki = &cfg.spec.pki;
    pki::PkiSpec {
        dir: paths.pki_dir(),
        key_type: pki.key_type,
        ca_lifetime: pki.ca_lifetime.as_duration(),
        leaf_lifetime: pki.leaf_lifetime.as_duration(),
        renew_before: pki.renew_before.as_duration(),
        cluster_name: cfg.metadata.name.clone(),
        cluster_domain: cfg.spec.network.cluster_domain.clone(),
        first_service_ip: cfg.first_service_ip(),
        node_name: node_name.to_string(),
        node_addresses,
        extra_sans,
        api_server_url: url_for(node, cfg.spec.api.port),
        // The kubelet of `--enable-worker` goes through its node-local
        // balancer like any worker's.
        kubelet_server_url: (worker && cfg.spec.worker.api_load_balancer_port != 0).then(|| {
            crate::apilb::kubeconfig::local_server(cfg.spec.worker.api_load_balancer_port)
        }),
        worker,
    }
}

fn etcd_settings(
    cfg: &ClusterConfig,
    node_address: std::net::IpAddr,
    paths: &NodePaths,
    pki: &pki::PkiPaths,
    node_name: &str,
) -> etcd::EtcdSettings {
    etcd::EtcdSettings {
        member_name: node_name.to_string(),
        data_dir: paths.etcd_dir(),
        client_port: cfg.spec.etcd.client_port,
        peer_address: cfg.etcd_peer_address(node_address),
        peer_port: cfg.spec.etcd.peer_port,
        initial_cluster: None,
        initial_cluster_state: "new".into(),
        trusted_ca: pki.etcd_ca.cert.clone(),
        server_cert: pki.etcd_server.cert.clone(),
        server_key: pki.etcd_server.key.clone(),
        peer_cert: pki.etcd_peer.cert.clone(),
        peer_key: pki.etcd_peer.key.clone(),
        probe_client: crate::etcd::EtcdClientTls::apiserver(pki),
        extra_args: cfg.spec.etcd.extra_args.clone(),
        learner: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::{Component, ComponentError};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Counts its starts; ready once started.
    struct Counted(&'static str, Arc<AtomicUsize>);

    #[async_trait::async_trait]
    impl Component for Counted {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn init(&mut self) -> Result<(), ComponentError> {
            Ok(())
        }
        async fn start(&mut self) -> Result<(), ComponentError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn ready(&self) -> Result<(), ComponentError> {
            Ok(())
        }
        async fn stop(&mut self) -> Result<(), ComponentError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_controller_restarts_controller_manager_and_scheduler_once() {
        let starts: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
        let mut m = Manager::new();
        for (name, n) in [kcm::NAME, ksch::NAME, etcd::NAME].into_iter().zip(&starts) {
            m.add(Box::new(Counted(name, n.clone())));
        }
        let cancel = CancellationToken::new();
        m.start_all(&cancel).await.unwrap();
        let (tx, rx) = tokio::sync::watch::channel(1u32);
        let task = tokio::spawn(leader_election_on_growth(m.handle(), 1, rx, cancel.clone()));
        tx.send_replace(2);
        task.await.unwrap();
        let n: Vec<usize> = starts.iter().map(|s| s.load(Ordering::SeqCst)).collect();
        assert_eq!(n, [2, 2, 1], "kcm and scheduler restarted, etcd untouched");

        // Started with several controllers: nothing to switch on.
        let (_tx, rx) = tokio::sync::watch::channel(3u32);
        leader_election_on_growth(m.handle(), 3, rx, cancel.clone()).await;
        let n: Vec<usize> = starts.iter().map(|s| s.load(Ordering::SeqCst)).collect();
        assert_eq!(n, [2, 2, 1]);
        m.stop_all(Duration::from_secs(5)).await;
    }
}
