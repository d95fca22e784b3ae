//! `maeday-edge`: the daemon (`run`), plus scoring, evaluation, calibration, enrollment and
//! bundle tools. The subcommands live in the library's `cli` module; this only parses the
//! command line, sets up logging and turns errors into an exit status.

use std::process::ExitCode;

use clap::Parser;

use maeday_edge::cli::Cli;

fn main() -> ExitCode {
    maeday_edge::cli::logging::init();
    match Cli::parse().run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
