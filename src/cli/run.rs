//! `run` (the daemon) and `broker` (the embedded MQTT broker on its own).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::config::Config;
use crate::daemon::{self, RunOptions};
use crate::detect::engine::EngineKind;
use crate::detect::fuse::ScorerKind;

#[derive(Args)]
pub struct RunArgs {
    /// Site config (TOML), e.g. firmware-config/conveyor.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Broker URL, overriding mqtt.url (mqtt://host:port or mqtts://host:port).
    #[arg(long)]
    mqtt_url: Option<String>,
    /// Stop cleanly after this many scored frames.
    #[arg(long)]
    max_frames: Option<u64>,
    /// Only check the config and exit.
    #[arg(long)]
    check: bool,
    /// Inference engine, overriding model.engine: tract, ort (ONNX Runtime, set up by
    /// [model.ort]) or tract-cuda (tract on an NVIDIA GPU, set up by [model.gpu]).
    #[arg(long)]
    engine: Option<EngineKind>,
    /// maeday, maeday-norm, bank, ensemble or ensemble-norm, overriding model.scorer (all
    /// but maeday need an enrolled memory bank in the serving model folder).
    #[arg(long)]
    scorer: Option<ScorerKind>,
}

pub fn run(a: RunArgs) -> Result<ExitCode> {
    let mut config = match &a.config {
        Some(path) => Config::load(path)?,
        None => Config::demo()?,
    };
    if let Some(engine) = a.engine {
        config.model.engine = engine;
    }
    if a.scorer.is_some() {
        config.model.scorer = a.scorer;
    }
    if a.check {
        crate::daemon::source::check::check_sources(&config)?;
        println!("config ok: {} camera(s)", config.cameras.len());
        if config.model.engine == EngineKind::Tract {
            // Cheap (~0.1 s): the same choice the daemon makes before loading the model.
            let k = crate::detect::engine::select_cpu_kernels(config.model.cpu_kernels)?;
            println!("matmul kernels: {k:#}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let opts = RunOptions {
        mqtt_url: a.mqtt_url,
        max_frames: a.max_frames,
        stop: super::stop_flag()?,
    };
    let summary = daemon::run(config, opts)?;
    println!("{}", daemon::summary_line(&summary));
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "embedded-broker")]
#[derive(Args)]
pub struct BrokerArgs {
    #[arg(long, default_value = "127.0.0.1:1883")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value_t = 1 << 20)]
    max_payload_bytes: usize,
    /// Only accept clients that log in as USER:PASSWORD (repeatable); without it the
    /// broker is anonymous.
    #[arg(long = "user", value_name = "USER:PASSWORD")]
    users: Vec<String>,
}

/// The embedded broker until SIGTERM/SIGINT.
#[cfg(feature = "embedded-broker")]
pub fn broker(a: BrokerArgs) -> Result<ExitCode> {
    let stop = super::stop_flag()?;
    let users = a
        .users
        .iter()
        .map(|u| match u.split_once(':') {
            Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), p.to_string())),
            _ => anyhow::bail!("--user {u:?}: expected USER:PASSWORD"),
        })
        .collect::<Result<_>>()?;
    crate::daemon::mqtt::broker::start_with_users(a.listen, a.max_payload_bytes, &users)?;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(ExitCode::SUCCESS)
}
