//! The `sluice` binary: parse the command line, set up logging, call the library, and turn
//! the result into an exit code. Behaviour lives in the library.

use std::process::ExitCode;

mod allocator;

use clap::Parser;
use sluice::cli::{Cli, Command};
use sluice::config::Config;

fn main() -> ExitCode {
    allocator::tune();
    let cli = Cli::parse();
    sluice::logging::init(cli.log_format);
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(cfg) => {
                for warning in cfg.warnings.iter().chain(&unresolved(&cfg)) {
                    eprintln!("{warning}");
                }
                print!("{}", cfg.summary());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => exit(sluice::lifecycle::run_from_file(&config)),
        Command::Demo { listen } => exit(sluice::demo::run(listen)),
    }
}

/// Host names in the config that do not resolve now, as warnings.
fn unresolved(config: &Config) -> Vec<String> {
    match sluice::lifecycle::tokio_runtime() {
        Ok(runtime) => runtime.block_on(sluice::upstream::resolve::unresolved(config)),
        Err(err) => vec![format!("warning: cannot check host names: {err}")],
    }
}

fn exit(result: Result<(), sluice::lifecycle::StartError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ sluice::lifecycle::StartError::Config(_)) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("sluice: {err}");
            ExitCode::FAILURE
        }
    }
}
