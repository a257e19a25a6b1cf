//! `mkectl worker`: joins the cluster once with a worker token (the private
//! key of the agent certificate is generated here and never leaves the
//! node), then runs the worker's components until SIGTERM/SIGINT (a second
//! signal forces the exit). A restart reuses the saved credentials.
//!
//! Order (DESIGN.md "Process model"): join/bootstrap → containerd →
//! konnectivity agent → kubelet.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, Instrument};

use super::controller::{
    hostname, lock_run_dir, run_until_signal, spawn_signal_handler, stop_stale_children,
};
use super::controller_join::{join_failure, read_token_file};
use crate::cli::{GlobalArgs, WorkerArgs};
use crate::components::containerd::{self, Containerd, ContainerdSettings};
use crate::components::konnectivity_agent::{KonnectivityAgent, KonnectivityAgentSettings};
use crate::components::kubelet::{self, Kubelet, KubeletSettings, WorkerSpec};
use crate::components::Manager;
use crate::config::{ClusterConfig, NodePaths};
use crate::exit::UsageError;
use crate::fsutil;
use crate::join::client::join_worker;
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
}

pub async fn run(global: &GlobalArgs, args: &WorkerArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Everything from the command line and the config is checked before
    // anything is written or joined.
    let cfg = ClusterConfig::load(global.config.as_deref())?;
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
        args,
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
        let ctx = WorkerContext {
            cfg: cfg.clone(),
            worker_spec: worker_spec.clone(),
            paths: paths.clone(),
            worker: worker.clone(),
            state: st,
            node_address,
            args: args.clone(),
        };
        let mut manager = build_components(&ctx)?;
        manager.init_all().await?;

        stop_stale_children(&paths, &manager).await?;

        let cancel = CancellationToken::new();
        spawn_signal_handler(cancel.clone())?;
        run_until_signal(&mut manager, &cancel, started, "worker").await
    }
    .instrument(span)
    .await
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
    let address = args
        .address
        .or_else(crate::config::paths::detect_node_address)
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    info!(endpoints = ?token.endpoints, token_id = %token.bootstrap.id, %node_name, %address, "joining the cluster as a worker");
    join_worker(&token, &node_name, address, worker)
        .await
        .map_err(join_failure)
        .context("worker join")
}

/// The worker's components in start order.
pub fn build_components(ctx: &WorkerContext) -> anyhow::Result<Manager> {
    let enabled = |name: &str| !ctx.args.disable_components.iter().any(|d| d == name);
    let mut manager = Manager::new();
    let driver = ctx.worker_spec.cgroup_driver.resolve();
    let containerd_settings =
        ContainerdSettings::new(&ctx.paths, &ctx.worker_spec.sandbox_image, driver);
    // containerd first: the kubelet needs its socket.
    if enabled(containerd::NAME) {
        manager.add(Box::new(Containerd::new(
            containerd_settings.clone(),
            ctx.paths.clone(),
        )));
    }

    let admin_listen = (ctx.args.agent_admin_port != 0)
        .then(|| SocketAddr::new(ctx.args.agent_admin_address, ctx.args.agent_admin_port));
    manager.add(Box::new(KonnectivityAgent::new(
        KonnectivityAgentSettings {
            tls: TlsFiles {
                cert: ctx.worker.agent_cert.clone(),
                key: ctx.worker.agent_key.clone(),
                ca: ctx.worker.konnectivity_ca.clone(),
            },
            agent_id: ctx.state.node_name.clone(),
            identifiers: format!("host={}", ctx.node_address),
            admin_listen,
            refresh_interval: ctx.args.refresh_interval.max(Duration::from_millis(100)),
            paths: ctx.worker.clone(),
            state: ctx.state.clone(),
        },
    )));

    // kubelet last: its bootstrap kubeconfig (with the worker token, which
    // the join API mirrors as a bootstrap-token Secret) and the client CA
    // were written by the join; cluster DNS and domain come from it too.
    if enabled(kubelet::NAME) {
        let defaults: KubeletDefaults = serde_json::from_slice(&fsutil::read(
            &ctx.worker.kubelet_defaults,
        )?)
        .with_context(|| {
            format!(
                "{}: bad kubelet defaults",
                ctx.worker.kubelet_defaults.display()
            )
        })?;
        let mut k = KubeletSettings::for_node(&ctx.paths, &ctx.state.node_name, ctx.node_address);
        if let Some(dns) = defaults.cluster_dns.first() {
            k.cluster_dns_ip = dns.parse().with_context(|| {
                format!(
                    "{}: bad clusterDNS {dns:?}",
                    ctx.worker.kubelet_defaults.display()
                )
            })?;
        }
        k.cluster_domain = defaults.cluster_domain.clone();
        k.containerd_socket = containerd_settings.socket.clone();
        k.cgroup_driver = containerd_settings.cgroup_driver;
        k.apply_spec(&ctx.worker_spec)?;
        k.extra_args = ctx.cfg.spec.extra_args.kubelet.clone();
        manager.add(Box::new(Kubelet::new(k, ctx.paths.clone())));
    }
    Ok(manager)
}

/// Worker components that `--disable-components` may leave out.
pub const WORKER_OPTIONAL: &[&str] = &[containerd::NAME, kubelet::NAME];

/// `spec.worker` with `--labels` and `--taints` merged in, validated.
fn worker_spec(cfg: &ClusterConfig, args: &WorkerArgs, file: &str) -> anyhow::Result<WorkerSpec> {
    let mut spec = cfg.spec.worker.clone();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--labels: {l:?} is not key=value")))?;
        spec.labels.insert(k.to_string(), v.to_string());
    }
    spec.taints.extend(args.taints.iter().cloned());
    spec.validate(file)
        .map_err(|e| UsageError(format!("--labels/--taints or {e}")))?;
    Ok(spec)
}

/// The data dir file that marks a joined worker (for `reset`).
pub fn state_file(data_dir: &std::path::Path) -> PathBuf {
    WorkerPaths::new(data_dir).state
}
