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
    /// Print the mkectl version.
    Version,
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
