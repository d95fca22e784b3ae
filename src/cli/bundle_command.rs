//! The `bundle` subcommands' flags and dispatch; the work is in [`crate::cli::bundle`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BundleCommand {
    /// Make an ed25519 signing key: OUT.key (secret) and OUT.pub (for devices).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Pack a model (or only its settings) with golden frames into a signed bundle.
    Pack {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Monotonic version: devices refuse anything at or below what they installed.
        #[arg(long)]
        version: u64,
        /// Target device ids (repeatable).
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Target fleet groups (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Frames the device must score like this runtime does here (repeatable).
        #[arg(long)]
        golden: Vec<PathBuf>,
        /// Relative tolerance on golden scores.
        #[arg(long, default_value_t = 0.01)]
        tolerance: f32,
        /// Leave the graph out: the device keeps its graph, takes the new manifest
        /// (thresholds, schedule seed).
        #[arg(long)]
        settings_only: bool,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-sign a bundle with another key.
    Sign {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle's signature and files against public keys.
    Verify {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long = "trusted", required = true)]
        trusted: Vec<PathBuf>,
    },
    /// Sign a command that changes what a device serves (`rollback`, `enroll [frames]
    /// [camera]`) or an operator request (its JSON, e.g.
    /// `{"id":"r1","command":"pause","camera":"belt"}`) and publish it (or, without
    /// --mqtt-url, print it).
    Command {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        device: String,
        #[arg(long)]
        mqtt_url: Option<String>,
        /// Replay protection: above the last one the device accepted (default: now in ms).
        #[arg(long)]
        seq: Option<u64>,
        /// The device's `mqtt.topic_prefix`.
        #[arg(long, default_value = crate::daemon::topics::DEFAULT_PREFIX)]
        topic_prefix: String,
        #[arg(required = true, trailing_var_arg = true)]
        words: Vec<String>,
    },
    /// Send a bundle over MQTT in chunks; with --device, wait for its verdict.
    Send {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        mqtt_url: String,
        #[arg(long, conflicts_with = "group")]
        device: Option<String>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value_t = 128 << 10)]
        chunk_bytes: usize,
        /// Seconds to wait for the device's verdict.
        #[arg(long, default_value_t = 120)]
        wait_s: u64,
        /// The devices' `mqtt.topic_prefix`.
        #[arg(long, default_value = crate::daemon::topics::DEFAULT_PREFIX)]
        topic_prefix: String,
    },
}

/// Run one `bundle` subcommand.
pub fn run(c: BundleCommand) -> Result<ExitCode> {
    use crate::cli::bundle as cli;
    match c {
        BundleCommand::Keygen { out } => cli::keygen(&out)?,
        BundleCommand::Pack {
            model,
            key,
            version,
            devices,
            groups,
            golden,
            tolerance,
            settings_only,
            description,
            out,
        } => cli::pack(&cli::PackOptions {
            model,
            key,
            version,
            devices,
            groups,
            golden,
            tolerance,
            settings_only,
            description,
            out,
        })?,
        BundleCommand::Sign { bundle, key, out } => cli::sign(&bundle, &key, &out)?,
        BundleCommand::Verify { bundle, trusted } => cli::verify(&bundle, &trusted)?,
        BundleCommand::Command {
            key,
            device,
            mqtt_url,
            seq,
            words,
            topic_prefix,
        } => cli::command(&cli::CommandOptions {
            key,
            device,
            mqtt_url,
            seq,
            words,
            topic_prefix,
        })?,
        BundleCommand::Send {
            bundle,
            mqtt_url,
            device,
            group,
            chunk_bytes,
            wait_s,
            topic_prefix,
        } => {
            anyhow::ensure!(chunk_bytes >= 1024, "--chunk-bytes must be at least 1024");
            let verdict = cli::send(&cli::SendOptions {
                bundle,
                mqtt_url,
                device,
                group,
                chunk_bytes,
                wait: std::time::Duration::from_secs(wait_s),
                topic_prefix,
            })?;
            if let Some(v) = verdict {
                println!("{v}");
                if v["state"] != "installed" {
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
