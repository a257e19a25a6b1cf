//! TEMPORARY minimal dispatch (konnectivity branch) so `mkectl konnectivity`
//! runs end to end; the lead's main.rs replaces this.
use std::process::ExitCode;

use clap::Parser;
use mkectl::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                mkectl::exit::USAGE
            } else {
                mkectl::exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    mkectl::telemetry::init(cli.global.log_format, cli.global.verbose);
    let res = match &cli.command {
        Command::Konnectivity(cmd) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(mkectl::commands::konnectivity::run(cmd))),
        _ => Err(anyhow::anyhow!("not implemented on this branch")),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(mkectl::exit::code_for(&e))
        }
    }
}
