//! `mkectl controller`: PKI, then every controller component in order, until
//! SIGTERM/SIGINT (a second signal forces the exit).

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::controller_join;
use super::worker::{add_node_components, worker_spec, NodeApiLb, NodeSide, WORKER_OPTIONAL};
use crate::cli::{ControllerArgs, GlobalArgs};
use crate::components::konnectivity_agent::ServerSource;
use crate::components::kube_common::{LocalKubeComponent, LocalKubeSettings, KUBERNETES_VERSION};
use crate::components::kubelet::{self, WorkerSpec};
use crate::components::{
    api_front, binary, controller_registry, csr_approver, etcd, join_api, konnectivity_server,
    kube_apiserver as kas, kube_controller_manager as kcm, kube_scheduler as ksch,
    manifest_applier, Manager,
};
use crate::config::{ClusterConfig, NodePaths};
use crate::exit::UsageError;
use crate::https_probe::ClientIdentity;
use crate::{fsutil, ops, pki, supervisor};

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

/// Upstream binaries that only exist with the bundle: checked before anything
/// starts rather than in `init`, so `--init-only` works without them.
const KUBE_BINARIES: &[&str] = &[
    kas::NAME,
    kcm::NAME,
    ksch::NAME,
    kubelet::NAME,
    crate::components::kube_proxy::NAME,
];

/// The taint a controller running the worker side registers its node with
/// (unless `--no-taints`), so only pods that tolerate it land there.
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane:NoSchedule";

/// Upper bound for stopping every component on shutdown: covers the
/// apiserver's drain (`kube_apiserver` stop grace, 70 s by default) plus etcd.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(120);

pub async fn run(global: &GlobalArgs, args: &ControllerArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let cfg = super::load_config(global.config.as_deref())?;
    for name in &args.disable_components {
        let worker_side = WORKER_OPTIONAL.contains(&name.as_str());
        if worker_side && !args.enable_worker {
            return Err(UsageError(format!(
                "--disable-components: {name:?} runs only with --enable-worker"
            ))
            .into());
        }
        if !COMPONENTS.contains(&name.as_str()) && !worker_side {
            let mut known = COMPONENTS.to_vec();
            if args.enable_worker {
                known.extend(WORKER_OPTIONAL);
            }
            return Err(UsageError(format!(
                "--disable-components: unknown component {name:?}; known: {}",
                known.join(", ")
            ))
            .into());
        }
    }
    // The worker side's labels and taints are checked before anything is
    // written, like the rest of the config.
    let worker = if args.enable_worker {
        let mut taints = args.taints.clone();
        if !args.no_taints {
            taints.push(CONTROL_PLANE_TAINT.to_string());
        }
        let file = crate::config::display_name(global.config.as_deref());
        Some(ControllerWorker {
            spec: worker_spec(&cfg, &args.labels, &taints, &file)?,
            agent_admin: (args.agent_admin_port != 0).then(|| {
                std::net::SocketAddr::new(
                    std::net::IpAddr::from([127, 0, 0, 1]),
                    args.agent_admin_port,
                )
            }),
            disabled: args.disable_components.clone(),
        })
    } else {
        None
    };
    let enabled = |name: &str| !args.disable_components.iter().any(|d| d == name);
    // Absolute, so the paths in component flags and files mean the same thing
    // whatever directory a child runs in (etcd runs in its data dir).
    let abs = |p: &std::path::Path| {
        std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
    };
    let bin_dir = global.bin_dir.as_deref().map(abs).transpose()?;
    let paths = NodePaths::new(
        &abs(&global.data_dir)?,
        &abs(&global.run_dir)?,
        bin_dir.as_deref(),
    );
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => hostname()?,
    };
    let node_address = cfg.node_address(&crate::config::display_name(global.config.as_deref()))?;
    let span = info_span!("controller", component = "controller", node = %node_name);
    async move {
        info!(%node_address, data_dir = %paths.data_dir.display(), "starting controller");
        if cfg.single_port() && node_address.is_loopback() {
            // The front takes <node address>:<port> and kube-apiserver
            // moves to loopback: both cannot have the same address.
            return Err(UsageError(format!(
                "spec.api.exposeStrategy single-port needs a node address other than loopback ({node_address}): set spec.api.address"
            ))
            .into());
        }
        if node_address.is_loopback() {
            // kube-apiserver refuses loopback endpoints: the `kubernetes`
            // Service then has no EndpointSlice and pods cannot reach it.
            warn!(
                %node_address,
                "node address is loopback: fine for a single host, but the `kubernetes` Service gets no endpoints; set spec.api.address to a routable address for pods to reach the apiserver"
            );
        }
        fsutil::ensure_dir(&paths.run_dir, fsutil::PRIVATE_DIR_MODE)?;
        let _lock = lock_run_dir(&paths)?;
        // Before anything is written to the data dir: a refused token
        // leaves nothing behind.
        let join =
            controller_join::join_if_needed(
                args.token_file.as_deref(),
                &cfg,
                node_address,
                &paths,
                &node_name,
            )
                .await?;
        fsutil::ensure_dir(&paths.data_dir, fsutil::PRIVATE_DIR_MODE)?;
        // Bundled binaries go to <data-dir>/bin before any component looks
        // one up (lookup order in components/binary.rs).
        crate::bundle::stage(&paths).await?;

        let spec = pki_spec(&cfg, node_address, &paths, &node_name, args.enable_worker);
        let ensure_spec = spec.clone();
        let report = tokio::task::spawn_blocking(move || pki::ensure(&ensure_spec))
            .await
            .context("PKI generation task")??;
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
        if args.init_only {
            info!("--init-only: PKI and configuration written, exiting");
            return Ok(());
        }

        // Every upstream kube binary is found and is the right release
        // before anything starts, so a wrong one starts nothing half-way.
        for name in manager.names() {
            if KUBE_BINARIES.contains(&name) {
                let path = binary::find(name, &paths)?;
                let found = binary::check_kube_version(name, &path, KUBERNETES_VERSION).await?;
                info!(binary = name, path = %path.display(), version = %found, "upstream binary checked");
            }
        }

        if let Some(w) = &ctx.worker {
            if manager.names().contains(&kubelet::NAME) {
                crate::hostcheck::enforce(&crate::hostcheck::RealHost, w.spec.host_checks)?;
            }
        }

        stop_stale_children(&paths, &manager).await?;

        let cancel = CancellationToken::new();
        spawn_signal_handler(cancel.clone())?;
        // Status socket, /metrics and certificate rotation (issue 7).
        let ops = ops::OpsSettings {
            role: if args.enable_worker {
                "controller+worker"
            } else {
                "controller"
            },
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
        let _ops = ops::start(ops, manager.handle(), &cancel).await?;
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
        run_until_signal(&mut manager, &cancel, started, "controller", watch_count).await
    }
    .instrument(span)
    .await
}

/// Everything components are built from, resolved once at start.
pub struct ControllerContext {
    pub cfg: ClusterConfig,
    pub paths: NodePaths,
    pub pki: pki::PkiPaths,
    pub node_name: String,
    pub node_address: std::net::IpAddr,
    /// Set when this controller joined an existing cluster (`join.json`).
    pub join: Option<crate::join::ControllerJoinState>,
    /// Counters served on /metrics (the join API records its requests here).
    pub metrics: std::sync::Arc<ops::Metrics>,
    /// `--enable-worker`: the worker side runs here too.
    pub worker: Option<ControllerWorker>,
}

/// The worker side of `controller --enable-worker`.
pub struct ControllerWorker {
    /// `spec.worker` with `--labels`, `--taints` and (unless `--no-taints`)
    /// the control-plane taint.
    pub spec: WorkerSpec,
    pub agent_admin: Option<std::net::SocketAddr>,
    pub disabled: Vec<String>,
}

/// Receives the number of live controllers (the registry's count).
type LiveCount = tokio::sync::watch::Receiver<u32>;

/// The controller's components in start order (docs/design.md "Process model"),
/// minus the disabled ones; with `--enable-worker` the worker side last.
/// Also the live controller count when the registry runs.
fn build_components(
    ctx: &ControllerContext,
    enabled: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Built> {
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
) -> anyhow::Result<Option<crate::components::api_lb::ApiLbMonitor>> {
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

/// `https://addr:port`, brackets for IPv6.
pub fn url_for(ip: std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V4(a) => format!("https://{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("https://[{a}]:{port}"),
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

/// The default node name (lowercased hostname), shared with the commands
/// that must agree with the controller on it (`restore`, `certs renew`).
pub fn hostname() -> anyhow::Result<String> {
    let h = nix::unistd::gethostname().context("reading the hostname")?;
    Ok(h.to_string_lossy().to_lowercase())
}

/// One mkectl per run dir and per data dir (`nodelock`): a second one would
/// fight over children and pid files, or rewrite a running node's files.
/// Taken before anything is written; the data dir is created if absent.
/// The locks die with the process, so a crash never leaves them held.
pub fn lock_run_dir(paths: &NodePaths) -> anyhow::Result<crate::nodelock::NodeLock> {
    Ok(crate::nodelock::lock_node(paths)?)
}

/// Stops children a crashed mkectl may have left for these components
/// (PDEATHSIG covers a child, not always its group); found by their marker.
pub async fn stop_stale_children(paths: &NodePaths, manager: &Manager) -> anyhow::Result<()> {
    let run_dir = paths.run_dir.clone();
    let names = manager.names();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for name in names {
            if let Some(pgid) = supervisor::cleanup_stale(&run_dir, name)? {
                warn!(
                    component = name,
                    pgid, "stopped a stale child left by an earlier mkectl"
                );
            }
        }
        Ok(())
    })
    .await
    .context("stale child cleanup task")?
}

/// Starts every component, calls `on_ready`, then runs until `cancel` (the
/// signal handler) fires and stops them in reverse order. `role` names the
/// node in logs.
pub async fn run_until_signal(
    manager: &mut Manager,
    cancel: &CancellationToken,
    started: Instant,
    role: &str,
    on_ready: impl FnOnce(&Manager),
) -> anyhow::Result<()> {
    if let Err(e) = manager.start_all(cancel).await {
        if cancel.is_cancelled() {
            info!("start interrupted by a signal");
            return Ok(());
        }
        return Err(e.into());
    }
    info!(
        components = ?manager.names(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "{role} ready"
    );
    on_ready(manager);
    cancel.cancelled().await;
    info!("shutting down");
    manager.stop_all(SHUTDOWN_DEADLINE).await;
    info!("{role} stopped");
    Ok(())
}

/// First SIGTERM/SIGINT cancels `cancel` (graceful drain); a second one exits
/// at once (children die with us through PDEATHSIG).
pub fn spawn_signal_handler(cancel: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::spawn(async move {
        let mut seen = 0u32;
        loop {
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            seen += 1;
            if seen == 1 {
                info!(
                    signal = which,
                    "received signal, stopping components (again to force)"
                );
                cancel.cancel();
            } else {
                warn!(signal = which, "second signal: forcing exit");
                std::process::exit(i32::from(crate::exit::FAILURE));
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::{Component, ComponentError};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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
