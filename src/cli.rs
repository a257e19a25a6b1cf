//! Command-line definitions (clap derive) and nothing else: behaviour lives in
//! `commands/`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::defaults;
use crate::telemetry::LogFormat;

/// Default data directory (PKI, etcd data, manifests, staged binaries).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/mke";
/// Default run directory (pid files, sockets).
pub const DEFAULT_RUN_DIR: &str = "/run/mke";
/// Default port of the embedded konnectivity agent's /healthz /readyz
/// /metrics (upstream proxy-agent's health port).
pub const DEFAULT_AGENT_ADMIN_PORT: u16 = 8093;
/// The embedded konnectivity agent's admin endpoints stay on the node by
/// default (same default for `worker` and `controller --enable-worker`).
pub const DEFAULT_AGENT_ADMIN_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[derive(Debug, Parser)]
#[command(
    name = "mkectl",
    version,
    about = "Turns Linux hosts into a production Kubernetes cluster",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Data directory: PKI, etcd data, manifests, staged binaries.
    #[arg(long, global = true, env = "MKECTL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Run directory: pid files and sockets.
    #[arg(long, global = true, env = "MKECTL_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Directory searched first for component binaries (etcd, kube-apiserver, ...).
    #[arg(long, global = true, env = "MKECTL_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// ClusterConfig YAML file; defaults apply to everything it leaves out.
    #[arg(long, short = 'c', global = true, env = "MKECTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More verbose logs (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a controller node: PKI, etcd, control plane, konnectivity server.
    Controller(ControllerArgs),
    /// Inspect or check a ClusterConfig.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect the cluster certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Build, plan or verify a bundle (mkectl with the upstream binaries appended).
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Write a systemd unit running this mkectl as a controller or worker.
    Install(InstallArgs),
    /// Run a standalone konnectivity server or agent (drop-in for upstream's
    /// proxy-server / proxy-agent).
    #[command(subcommand)]
    Konnectivity(KonnectivityCommand),
    /// Create, list and invalidate join tokens (on a running controller).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Join a cluster as a worker (once, with a token) and run the worker.
    Worker(WorkerArgs),
    /// Remove this node from its cluster and delete its data (stop mkectl first).
    Reset(ResetArgs),
    /// Show this node's status; exits 1 while something is not ready, 69
    /// when no node runs with this run dir.
    Status(StatusArgs),
    /// Print kubeconfigs for the cluster.
    #[command(subcommand)]
    Kubeconfig(KubeconfigCommand),
    /// Write one archive with an etcd snapshot, the PKI and the config.
    Backup(BackupArgs),
    /// Restore a backup archive into an empty data directory.
    Restore(RestoreArgs),
    /// Print the mkectl version and the versions of the bundled components.
    Version(VersionArgs),
    /// Make image archives from local files (for packaging scripts and
    /// tests; no daemon, no registry).
    #[command(subcommand, hide = true)]
    Images(ImagesCommand),
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Pack local files into a one-layer image archive (OCI image layout or
    /// docker archive) that `ctr images import`, `docker load` and the
    /// worker's images dir take. Same inputs, same bytes (and digests).
    Pack(ImagesPackArgs),
}

/// Archive format written by `images pack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ImageFormat {
    /// OCI image layout (gzip'd layer).
    #[default]
    Oci,
    /// Docker archive, as `docker save` writes it.
    Docker,
}

#[derive(Debug, Clone, Args)]
pub struct ImagesPackArgs {
    /// Image name; normalised as containerd stores it (`busybox` becomes
    /// `docker.io/library/busybox:latest`).
    #[arg(long, value_name = "REF")]
    pub name: String,
    /// A file to put into the image: `SRC:DEST[:MODE]` (DEST absolute, MODE
    /// octal; default 0755 for executables, else 0644). Repeatable.
    #[arg(long = "file", value_name = "SRC:DEST[:MODE]", required = true)]
    pub files: Vec<String>,
    /// Entrypoint, one argument per flag (repeatable).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub entrypoint: Vec<String>,
    /// Default arguments (Cmd), one per flag (repeatable).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub cmd: Vec<String>,
    /// Environment `KEY=value` (repeatable); PATH has a default.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory (absolute).
    #[arg(long)]
    pub workdir: Option<String>,
    /// User (`uid[:gid]` or a name the image knows); default root.
    #[arg(long)]
    pub user: Option<String>,
    /// Platform architecture (amd64, arm64, ...); defaults to this host's.
    #[arg(long)]
    pub arch: Option<String>,
    #[arg(long, value_enum, default_value_t = ImageFormat::Oci)]
    pub format: ImageFormat,
    /// gzip the whole archive (name it .tar.gz or .tgz).
    #[arg(long)]
    pub gzip: bool,
    /// Archive to write (replaced atomically).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    /// Print the result (name, digests, size) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Role a join token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenRole {
    Worker,
    Controller,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it (the only time its secret is shown).
    Create {
        /// Which kind of node may join with it.
        #[arg(long, value_enum)]
        role: TokenRole,
        /// Validity (e.g. 1h, 24h, 7d); 0 = until invalidated.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        expiry: Duration,
        /// Free text shown by `token list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (ids, roles, expiry; never secrets).
    List {
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Invalidate tokens by id; joins with them are refused from now on.
    Invalidate {
        /// Token ids (the 6 characters before the dot).
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Worker join token (`mkectl token create --role worker`). Needed only
    /// for the first start; prefer --token-file (argv is visible to others).
    #[arg(
        long,
        env = "MKECTL_TOKEN",
        conflicts_with = "token_file",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// File holding the worker join token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Node name. Defaults to the hostname.
    #[arg(long, env = "MKECTL_NODE_NAME")]
    pub node_name: Option<String>,
    /// Node address (konnectivity `host=` identifier, source of join API
    /// requests). Defaults to the host's first global IPv4 address.
    #[arg(long)]
    pub address: Option<std::net::IpAddr>,
    /// How often the controller list is refreshed from the join API.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub refresh_interval: Duration,
    /// Konnectivity agent /healthz /readyz /metrics port; 0 = off.
    #[arg(long, default_value_t = DEFAULT_AGENT_ADMIN_PORT)]
    pub agent_admin_port: u16,
    /// Address of the konnectivity agent's admin endpoints.
    #[arg(long, default_value_t = DEFAULT_AGENT_ADMIN_ADDRESS)]
    pub agent_admin_address: std::net::IpAddr,
    /// Node labels `key=value`, comma separated; added to spec.worker.labels.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Taints `key[=value]:Effect`, comma separated; added to spec.worker.taints.
    #[arg(long, value_delimiter = ',')]
    pub taints: Vec<String>,
    /// Worker components not to run: containerd, kubelet (the konnectivity
    /// agent always runs).
    #[arg(long, value_delimiter = ',')]
    pub disable_components: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ResetArgs {
    /// Remove the local data even when the etcd member cannot be removed
    /// safely (quorum), no other controller is reachable, or this is the
    /// last controller (which destroys the cluster).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum KubeconfigCommand {
    /// Print an admin (system:masters) kubeconfig whose server is reachable
    /// from outside the node (spec.api.externalAddress, else the node address).
    Admin,
    /// Issue a client certificate for USER and print a kubeconfig with it.
    Create {
        /// User name (the certificate's CN).
        user: String,
        /// Groups (the certificate's O attributes), comma separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Certificate lifetime (e.g. 720h); defaults to spec.pki.leafLifetime.
        #[arg(long)]
        expiry: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Archive to write (.tar.gz), or an existing directory to write a
    /// timestamped archive into. An existing file is never overwritten.
    #[arg(long)]
    pub save_path: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The archive written by `mkectl backup`.
    pub archive: PathBuf,
    /// etcd member name; must match the controller's --node-name. Defaults
    /// to the hostname, as for the controller.
    #[arg(long, env = "MKECTL_NODE_NAME")]
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// Write the PKI and component configuration files, then exit.
    #[arg(long)]
    pub init_only: bool,
    /// Components not to run, comma separated (for example
    /// kube-apiserver,kube-controller-manager,kube-scheduler; with
    /// --enable-worker also containerd,kubelet).
    #[arg(long, value_delimiter = ',')]
    pub disable_components: Vec<String>,
    /// Also run the worker side on this node (containerd, konnectivity
    /// agent, kubelet), for single-node and edge installs. Pods then run on
    /// the controller: this gives up the isolation of the controllers from
    /// the pod network.
    #[arg(long)]
    pub enable_worker: bool,
    /// With --enable-worker: register the node without the control-plane
    /// taint, so ordinary pods schedule here.
    #[arg(long, requires = "enable_worker")]
    pub no_taints: bool,
    /// With --enable-worker: node labels `key=value`, comma separated; added
    /// to spec.worker.labels.
    #[arg(long, value_delimiter = ',', requires = "enable_worker")]
    pub labels: Vec<String>,
    /// With --enable-worker: taints `key[=value]:Effect`, comma separated;
    /// added to spec.worker.taints (and the control-plane taint).
    #[arg(long, value_delimiter = ',', requires = "enable_worker")]
    pub taints: Vec<String>,
    /// With --enable-worker: the konnectivity agent's /healthz /readyz
    /// /metrics port; 0 = off.
    #[arg(long, default_value_t = DEFAULT_AGENT_ADMIN_PORT, requires = "enable_worker")]
    pub agent_admin_port: u16,
    /// With --enable-worker: address of the agent's admin endpoints.
    #[arg(long, default_value_t = DEFAULT_AGENT_ADMIN_ADDRESS, requires = "enable_worker")]
    pub agent_admin_address: std::net::IpAddr,
    /// Node name (etcd member name, certificate SANs). Defaults to the hostname.
    #[arg(long, env = "MKECTL_NODE_NAME")]
    pub node_name: Option<String>,
    /// Join an existing cluster with the controller token in this file
    /// (`mkectl token create --role controller`). Used once: a restart
    /// reuses the joined state.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the default ClusterConfig as YAML.
    Default,
    /// Validate the file given with --config (`--config -` reads standard input).
    Validate,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// List every certificate under the data directory with its expiry.
    CheckExpiration {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Renew leaf certificates now (never CAs). Through the running node
    /// when there is one, which restarts the components using them;
    /// otherwise the files only.
    Renew {
        /// Certificates to renew (names as in check-expiration).
        names: Vec<String>,
        /// Renew every leaf.
        #[arg(long)]
        all: bool,
        /// Node name the PKI was made for (only used when no node is
        /// running). Defaults to the hostname, as for the controller.
        #[arg(long, env = "MKECTL_NODE_NAME")]
        node_name: Option<String>,
    },
}

/// Machine-readable or human output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Args)]
pub struct VersionArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Append the binaries in a directory (and image archives) to mkectl
    /// (offline; no download).
    Create(BundleCreateArgs),
    /// Print the artifacts pinned for an architecture, one per line:
    /// component, url, algorithm, checksum, file name (tab separated).
    /// Refuses when a checksum is missing. packaging/bundle.sh downloads these.
    Plan(BundlePlanArgs),
    /// Check a bundled mkectl completely (footer, payload, every file) without
    /// extracting anything.
    Verify {
        /// The bundled mkectl; defaults to this executable.
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct BundleCreateArgs {
    /// Directory with the downloaded artifacts (file names as in the pinned
    /// URLs) and, with --allow-local, local binaries.
    #[arg(long, value_name = "DIR")]
    pub from_dir: PathBuf,
    /// Pinned versions and checksums (packaging/versions.yaml).
    #[arg(long, value_name = "FILE")]
    pub versions: Option<PathBuf>,
    /// Where to write the bundled mkectl.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// The mkectl to append to (any bundle it carries is replaced); defaults
    /// to this executable.
    #[arg(long, value_name = "FILE")]
    pub mkectl: Option<PathBuf>,
    /// Architecture whose pins apply (amd64, arm64); defaults to this host's.
    #[arg(long)]
    pub arch: Option<String>,
    /// Also bundle files that match no pinned artifact, recording their own
    /// SHA-256 (for local builds and tests; printed as "local").
    #[arg(long)]
    pub allow_local: bool,
    /// Version recorded for a local file (repeatable); default "local".
    #[arg(long = "local-version", value_name = "NAME=VERSION")]
    pub local_versions: Vec<String>,
    /// Fail unless every artifact pinned for the architecture is in the directory.
    #[arg(long)]
    pub require_all: bool,
    /// gzip compression level, 0 (none) to 9 (smallest).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub compression_level: u32,
    /// An image archive to carry (OCI layout or docker archive, .tar,
    /// .tar.gz or .tgz; repeatable). The bundled mkectl stages it into the
    /// data dir's images/, which the worker imports into containerd.
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct BundlePlanArgs {
    /// Pinned versions and checksums (packaging/versions.yaml).
    #[arg(long, value_name = "FILE")]
    pub versions: PathBuf,
    /// Architecture (amd64, arm64); defaults to this host's.
    #[arg(long)]
    pub arch: Option<String>,
}

/// What `mkectl install` sets up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InstallRole {
    Controller,
    Worker,
}

impl InstallRole {
    /// The mkectl subcommand the unit runs.
    pub fn subcommand(self) -> &'static str {
        match self {
            InstallRole::Controller => "controller",
            InstallRole::Worker => "worker",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// controller or worker.
    #[arg(value_enum)]
    pub role: InstallRole,
    /// Enable the service and start it now (restart it if the unit changed).
    #[arg(long)]
    pub start: bool,
    /// Directory the unit file is written to.
    #[arg(long, default_value = "/etc/systemd/system", value_name = "DIR")]
    pub unit_dir: PathBuf,
    /// Only write the unit file; run no systemctl command.
    #[arg(long)]
    pub no_systemctl: bool,
    /// Flags for `mkectl controller|worker`, written into ExecStart as given
    /// (install's own flags come before them; `--` may separate them).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "FLAGS"
    )]
    pub flags: Vec<String>,
}

/// `mkectl konnectivity server|agent`, with upstream's flag names where
/// they mean the same.
#[derive(Debug, Subcommand)]
pub enum KonnectivityCommand {
    /// Run a konnectivity server (upstream `proxy-server`).
    Server(Box<ServerArgs>),
    /// Run a konnectivity agent (upstream `proxy-agent`).
    Agent(Box<AgentArgs>),
}

/// Default `--worker-threads` of a standalone konnectivity server or agent:
/// one, as the embedded ones run (`konnectivity::runtime::RELAY_THREADS`,
/// which says why); 0 is one per core.
pub const KONNECTIVITY_WORKER_THREADS: u16 = 1;

impl KonnectivityCommand {
    /// `--worker-threads`, `None` for one per core.
    pub fn worker_threads(&self) -> Option<u16> {
        let n = match self {
            KonnectivityCommand::Server(a) => a.worker_threads,
            KonnectivityCommand::Agent(a) => a.worker_threads,
        };
        (n > 0).then_some(n)
    }
}

/// Frontend protocol of a standalone konnectivity server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Grpc,
    HttpConnect,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Frontend protocol on --uds-name / --server-port.
    #[arg(long, value_enum, default_value_t = Mode::Grpc)]
    pub mode: Mode,
    /// Frontend unix socket (kube-apiserver's egress selector udsName).
    #[arg(long)]
    pub uds_name: Option<PathBuf>,
    /// Also serve HTTP-CONNECT on this unix socket (gRPC mode).
    #[arg(long)]
    pub http_connect_uds_name: Option<PathBuf>,
    /// Replace a stale socket file at --uds-name.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub delete_existing_uds_file: bool,
    /// TCP frontend port (HTTP-CONNECT with mTLS); 0 = none.
    #[arg(long, default_value_t = 0)]
    pub server_port: u16,
    #[arg(long, default_value = "0.0.0.0")]
    pub server_bind_address: IpAddr,
    /// TCP frontend certificate, key, and the CA clients must chain to.
    #[arg(long)]
    pub server_cert: Option<PathBuf>,
    #[arg(long)]
    pub server_key: Option<PathBuf>,
    #[arg(long)]
    pub server_ca_cert: Option<PathBuf>,
    /// Agent listener port.
    #[arg(long, default_value_t = defaults::KONNECTIVITY_AGENT_PORT)]
    pub agent_port: u16,
    #[arg(long, default_value = "0.0.0.0")]
    pub agent_bind_address: IpAddr,
    /// Agent listener certificate and key.
    #[arg(long)]
    pub cluster_cert: PathBuf,
    #[arg(long)]
    pub cluster_key: PathBuf,
    /// CA that agent client certificates must chain to (required).
    #[arg(long)]
    pub cluster_ca_cert: PathBuf,
    /// /healthz /readyz /metrics port (upstream's --health-port serves the
    /// same endpoints); 0 = off.
    #[arg(long, alias = "health-port", default_value_t = defaults::KONNECTIVITY_ADMIN_PORT)]
    pub admin_port: u16,
    /// Runtime worker threads of this process; 0 = one per core. See
    /// README (Konnectivity) for what one thread trades.
    #[arg(long, default_value_t = KONNECTIVITY_WORKER_THREADS, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub worker_threads: u16,
    #[arg(long, alias = "health-bind-address", default_value = "127.0.0.1")]
    pub admin_bind_address: IpAddr,
    /// This server's id (`serverid` header).
    #[arg(long, env = "PROXY_SERVER_ID")]
    pub server_id: Option<String>,
    /// Number of servers (`servercount` header).
    #[arg(long, default_value_t = 1)]
    pub server_count: u32,
    /// Backend choice, comma separated: default, destHost, defaultRoute.
    #[arg(long, default_value = "default")]
    pub proxy_strategies: String,
    /// Where an agent's id and identifiers come from: `certificate` (its
    /// client certificate's CN, `konnectivity-agent:<node>` read as <node>;
    /// host=/ipv4=/ipv6= identifiers must be that name or a SAN of the
    /// certificate, else the agent is refused) or `headers` (upstream's
    /// behaviour: trusted as sent, for agents that share one certificate).
    #[arg(long, default_value = "certificate")]
    pub agent_identity: crate::konnectivity::AgentIdentity,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Proxy server host(s): repeat or comma separate; `host` or
    /// `host:port`. The agent keeps one connection per distinct server.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub proxy_server_host: Vec<String>,
    /// Port for hosts given without one.
    #[arg(long, default_value_t = defaults::KONNECTIVITY_AGENT_PORT)]
    pub proxy_server_port: u16,
    /// CA the servers' certificates must chain to.
    #[arg(long)]
    pub ca_cert: PathBuf,
    /// Client certificate and key presented to servers.
    #[arg(long)]
    pub agent_cert: PathBuf,
    #[arg(long)]
    pub agent_key: PathBuf,
    #[arg(long, env = "PROXY_AGENT_ID")]
    pub agent_id: Option<String>,
    /// URL-encoded identifiers: host, ipv4, ipv6, cidr, default-route.
    #[arg(long, default_value = "")]
    pub agent_identifiers: String,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub sync_interval: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub sync_interval_cap: Duration,
    /// Endpoint dial timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub dial_timeout: Duration,
    /// /healthz /readyz /metrics port (upstream's --health-server-port
    /// serves the same); 0 = off.
    #[arg(long, alias = "health-server-port", alias = "admin-server-port", default_value_t = DEFAULT_AGENT_ADMIN_PORT)]
    pub admin_port: u16,
    /// Runtime worker threads of this process; 0 = one per core. See
    /// README (Konnectivity) for what one thread trades.
    #[arg(long, default_value_t = KONNECTIVITY_WORKER_THREADS, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub worker_threads: u16,
    #[arg(long, alias = "health-server-host", default_value = "127.0.0.1")]
    pub admin_bind_address: IpAddr,
    /// After the first signal, how long to wait for open connections to
    /// finish before exiting.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}
