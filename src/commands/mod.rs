//! One file per subcommand. Each `run` returns `anyhow::Result`; `main`
//! maps the error chain to an exit code.

pub mod backup;
pub mod bundle;
pub mod certs;
pub mod config;
pub mod controller;
pub mod exit_code;
pub mod images;
pub mod install;
pub mod konnectivity;
pub mod kubeconfig;
pub mod reset;
pub mod restore;
mod shared;
pub mod status;
pub mod token;
pub mod version;
pub mod worker;

use crate::cli::{Cli, Command};

/// Runs the parsed command line. Commands that need async get a runtime here
/// so `main` stays thin.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Controller(args) => runtime()?.block_on(controller::run(&global, &args)),
        Command::Config(cmd) => config::run(&global, &cmd),
        Command::Certs(cmd) => certs::run(&global, &cmd),
        Command::Status(args) => runtime()?.block_on(status::run(&global, &args)),
        Command::Kubeconfig(cmd) => kubeconfig::run(&global, &cmd),
        Command::Backup(args) => runtime()?.block_on(backup::run(&global, &args)),
        Command::Restore(args) => restore::run(&global, &args),
        Command::Bundle(cmd) => bundle::run(&cmd),
        Command::Images(cmd) => images::run(&cmd),
        Command::Install(args) => install::run(&global, &args),
        Command::Version(args) => version::run(&args),
        Command::Konnectivity(cmd) => {
            runtime_with(cmd.worker_threads())?.block_on(konnectivity::run(&cmd))
        }
        Command::Token(cmd) => runtime()?.block_on(token::run(&global, &cmd)),
        Command::Worker(args) => runtime()?.block_on(worker::run(&global, &args)),
        Command::Reset(args) => runtime()?.block_on(reset::run(&global, &args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

/// The multi-thread runtime, with `workers` threads (default: one per core).
fn runtime_with(workers: Option<u16>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all().thread_name("mkectl");
    if let Some(n) = workers {
        b.worker_threads(usize::from(n));
    }
    Ok(b.build()?)
}
