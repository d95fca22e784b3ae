//! What `run` opens before any thread starts: the serving model (the active bundle slot,
//! or the factory model) and its detector, the boot number, the embedded broker, the
//! cameras and the trusted keys. Each fails with the config key or path at fault.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ed25519_dalek::VerifyingKey;

use crate::config::Config;
use crate::daemon::shutdown::Shutdown;
use crate::daemon::source::{self, FrameSource};
use crate::daemon::stats::CameraStats;
use crate::detect::detector::{Detector, DetectorOptions};
use crate::detect::engine::EngineOptions;
use crate::model::bundled::default_model_dir;
use crate::model::manifest::Model;
use crate::update::bundle::read_public_key;
use crate::update::slots::Slots;

/// The model serving at start.
pub struct Serving {
    pub detector: Detector,
    pub model: Model,
    /// How serving detectors are built (the installer builds new ones the same way).
    pub options: DetectorOptions,
    /// The model shipped with the device.
    pub factory: PathBuf,
    /// With `[bundles]`: the model slots.
    pub slots: Option<Slots>,
    /// The bundle serving (`None`: the factory model).
    pub bundle_version: Option<u64>,
}

/// Open the model that serves first: with bundles, the installed (active) slot, if it is
/// usable; else the factory model.
pub fn serving(config: &Config) -> Result<Serving> {
    let factory = config.model.path.clone().unwrap_or_else(default_model_dir);
    let slots = match &config.bundles {
        Some(b) => Some(Slots::open(&b.state_dir)?),
        None => None,
    };
    let model_dir = slots
        .as_ref()
        .map_or(factory.clone(), |s| s.startup_model(&factory));
    let bundle_version = slots.as_ref().and_then(|s| s.version_of(&model_dir));
    let model = Model::open(&model_dir)?;
    let options = detector_options(config, &model_dir);
    let detector = Detector::new(model.clone(), &options)?;
    Ok(Serving {
        detector,
        model,
        options,
        factory,
        slots,
        bundle_version,
    })
}

fn detector_options(config: &Config, model_dir: &Path) -> DetectorOptions {
    let mut engine = EngineOptions {
        precision: config.model.precision,
        backend: config.model.backend(),
        cpu_kernels: config.model.cpu_kernels,
        ..Default::default()
    };
    if let Some(t) = config.model.threads {
        engine.threads = t;
    }
    if let Some(keep) = config.model.keep_freed_buffers {
        engine.keep_freed_buffers = keep;
    }
    DetectorOptions {
        fit: config.cameras[0].fit(),
        engine,
        masks: config.model.masks,
        schedule: config.model.schedule,
        scorer: config.model.scorer,
        extractor: config.model.extractor.clone(),
        // The config's bank serves a model folder without a bank of its own.
        banks: match &config.model.bank {
            Some(b) if !model_dir.join("bank").join("bank.toml").is_file() => vec![b.clone()],
            _ => Vec::new(),
        },
        ..Default::default()
    }
}

/// Which start this is, recorded where results outlive the process, before the first
/// result: `(camera, boot, seq)` names a frame across restarts.
pub fn boot(config: &Config) -> u64 {
    let persistent: Vec<&Path> = (config.mqtt.iter().map(|m| m.spool.dir.as_path()))
        .chain(config.files.iter().map(|f| f.dir.as_path()))
        .collect();
    let boot = crate::daemon::boot::next(&persistent);
    log::info!("boot {boot}");
    boot
}

/// `mqtt.embedded_broker`: start the broker in this process.
pub fn embedded_broker(config: &Config) -> Result<()> {
    #[cfg(feature = "embedded-broker")]
    if let Some(mqtt) = &config.mqtt {
        if let Some(listen) = mqtt.embedded_broker {
            crate::daemon::mqtt::broker::start_with_users(
                listen,
                mqtt.max_packet_bytes,
                &mqtt.embedded_broker_users,
            )?;
        }
    }
    #[cfg(not(feature = "embedded-broker"))]
    let _ = config;
    Ok(())
}

/// Every camera's source, and its counters, in `config.cameras` order.
pub struct Cameras {
    pub sources: Vec<Box<dyn FrameSource>>,
    pub stats: Vec<CameraStats>,
}

/// Open every camera's source.
pub fn cameras(config: &Config, shutdown: &Shutdown) -> Result<Cameras> {
    let mut sources = Vec::new();
    let mut stats = Vec::new();
    for cam in &config.cameras {
        let src = source::open(&cam.source, &config.pipeline, shutdown.flag())
            .with_context(|| format!("camera {:?}", cam.name))?;
        log::info!("camera {:?}: {}", cam.name, src.describe());
        stats.push(CameraStats {
            name: cam.name.clone(),
            source: src.describe(),
            ..Default::default()
        });
        sources.push(src);
    }
    Ok(Cameras { sources, stats })
}

/// `bundles.trusted_keys` (with `[bundles]`): who may sign bundles and commands.
pub fn trusted_keys(config: &Config) -> Result<Option<Vec<VerifyingKey>>> {
    let Some(b) = &config.bundles else {
        return Ok(None);
    };
    let keys = b
        .trusted_keys
        .iter()
        .map(|p| read_public_key(p))
        .collect::<Result<Vec<_>>>()
        .context("bundles.trusted_keys")?;
    Ok(Some(keys))
}

/// Where operator settings persist (`operator::state`): `bundles.state_dir`, else the
/// spool folder (which keeps the boot counter); none without `[mqtt]` (no commands come).
pub fn operator_file(config: &Config) -> Option<PathBuf> {
    let dir = match (&config.bundles, &config.mqtt) {
        (Some(b), _) => &b.state_dir,
        (None, Some(m)) => &m.spool.dir,
        (None, None) => return None,
    };
    Some(dir.join(crate::daemon::operator::state::FILE))
}
