//! `maeday-edge`: the daemon (`run`), plus scoring, evaluation, calibration, enrollment and
//! bundle tools. The subcommands live in the library's `cli` module; this only parses the
//! command line, sets up logging and turns errors into an exit status.

use std::process::ExitCode;

use clap::Parser;

use maeday_edge::cli::Cli;

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        // rumqttd logs routine broker traffic at ERROR level through `tracing`: keep it
        // quiet unless asked for (RUST_LOG=rumqttd=info).
        env_logger::Env::default().default_filter_or("info,rumqttd=off,tracing=off"),
    )
    .init();
    match Cli::parse().run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
