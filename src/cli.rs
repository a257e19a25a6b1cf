//! Command-line definitions (clap derive) and nothing else: behaviour lives in
//! `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// Default data directory (PKI, etcd data, manifests, staged binaries).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/mke";
/// Default run directory (pid files, sockets).
pub const DEFAULT_RUN_DIR: &str = "/run/mke";

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
    /// Run a standalone konnectivity server or agent (drop-in for upstream's
    /// proxy-server / proxy-agent).
    #[command(subcommand)]
    Konnectivity(crate::commands::konnectivity::KonnectivityCommand),
    /// Create, list and invalidate join tokens (on a running controller).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Join a cluster as a worker (once, with a token) and run the worker.
    Worker(WorkerArgs),
    /// Remove this node from its cluster and delete its data (stop mkectl first).
    Reset(ResetArgs),
    /// Print the mkectl version.
    Version,
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
        expiry: std::time::Duration,
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
    pub refresh_interval: std::time::Duration,
    /// Konnectivity agent /healthz /readyz /metrics port; 0 = off.
    #[arg(long, default_value_t = 8093)]
    pub agent_admin_port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    pub agent_admin_address: std::net::IpAddr,
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
pub struct ControllerArgs {
    /// Write the PKI and component configuration files, then exit.
    #[arg(long)]
    pub init_only: bool,
    /// Components not to run, comma separated (for example
    /// kube-apiserver,kube-controller-manager,kube-scheduler).
    #[arg(long, value_delimiter = ',')]
    pub disable_components: Vec<String>,
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
}

/// Machine-readable or human output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}
