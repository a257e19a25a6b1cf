//! mkectl entry point: parse the command line, set up logging, dispatch, and
//! turn the outcome into an exit code (see `mkectl::exit`).

use std::process::ExitCode;

use clap::Parser;
use mkectl::{cli::Cli, commands, exit, telemetry};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    telemetry::init(cli.global.log_format, cli.global.verbose);
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) => {
            let code = commands::exit_code::code_for(&err);
            eprintln!("Error: {err:#}");
            ExitCode::from(code)
        }
    }
}
