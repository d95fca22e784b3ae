//! The command line: one file per subcommand, each owning its flags (a clap `Args` struct)
//! and a `run` that turns them into calls on the library. `src/main.rs` only parses and
//! reports errors.
//!
//! - [`run`]: `run` (the daemon) and `broker`;
//! - [`score`], [`eval`], [`enroll`], [`calibrate`]: the offline tools;
//! - [`bundle_command`] (flags) and [`bundle`] (work): keys, packing, signing, sending;
//! - [`model_args`]: the model/engine/scorer flags the offline tools share;
//! - [`docs`]: shell completions and the man page; [`logging`]: terminal or journald lines.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub mod bundle;
pub mod bundle_command;
pub mod calibrate;
pub mod docs;
pub mod enroll;
pub mod eval;
pub mod logging;
pub mod model_args;
pub mod run;
pub mod score;

#[derive(Parser)]
#[command(
    name = "maeday-edge",
    version,
    about = "MAEDAY anomaly detection at the edge"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon: cameras -> MAEDAY -> MQTT / files / console, until the sources end,
    /// --max-frames, or SIGTERM/SIGINT. Without --config: the built-in demo
    /// (firmware-config/demo.toml: replayed sample frames, embedded broker, console).
    Run(run::RunArgs),
    /// Retrain bundles: keys, packing, signing, verifying, sending to devices.
    Bundle {
        #[command(subcommand)]
        command: bundle_command::BundleCommand,
    },
    /// A standalone MQTT broker (the embedded one), until SIGTERM/SIGINT.
    #[cfg(feature = "embedded-broker")]
    Broker(run::BrokerArgs),
    /// Score images: one JSON line per image on stdout.
    Score(score::ScoreArgs),
    /// Image and pixel AUROC on a dataset (MVTec AD, magnetic-tile or image-level folders).
    Eval(eval::EvalArgs),
    /// Build a memory bank (PatchCore-style) from good images for the bank and ensemble
    /// scorers; written to the model's `bank/` unless --out says otherwise.
    Enroll(enroll::EnrollArgs),
    /// Set image and pixel thresholds from good images; writes them into the manifest.
    Calibrate(calibrate::CalibrateArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print the man page (roff), every subcommand included.
    Man,
}

impl Cli {
    /// Run the parsed command.
    pub fn run(self) -> Result<ExitCode> {
        match self.command {
            Command::Run(a) => run::run(a),
            Command::Bundle { command } => bundle_command::run(command),
            #[cfg(feature = "embedded-broker")]
            Command::Broker(a) => run::broker(a),
            Command::Score(a) => score::run(a),
            Command::Eval(a) => eval::run(a),
            Command::Enroll(a) => enroll::run(a),
            Command::Calibrate(a) => calibrate::run(a),
            Command::Completions(a) => docs::completions(a),
            Command::Man => docs::man(),
        }
    }
}

/// SIGTERM and SIGINT set this flag; the daemon and the broker stop cleanly when they see it.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}
