//! The daemon's configuration: one TOML file (`firmware-config/<site>.toml`).
//!
//! Parsed with serde (unknown keys are errors, so a typo never silently falls back to a
//! default), then [`Config::validate`]d: every error names the key, e.g.
//! `camera[1].source.fps: must be > 0 (got -2)`. Relative paths are resolved against the
//! folder of the config file, so a config works from any working directory.
//!
//! Each section owns its keys, their defaults and their checks, in its own file
//! ([`model`]: `[model]` and `[enroll]`; [`camera`]: `[[camera]]`; [`output`]: `[output]`,
//! `[files]`; [`mqtt`]; [`bundles`]; [`pipeline`]); [`checks`] holds the shared bounds.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

mod bundles;
mod camera;
mod checks;
mod commands;
mod events;
mod http;
mod model;
mod mqtt;
mod output;
mod pipeline;
mod position;

pub use bundles::BundlesConfig;
pub use camera::{rate_period, roi_fits, CameraConfig, SourceConfig};
use checks::topic_level;
pub use commands::CommandsConfig;
pub use events::EventsConfig;
pub use http::HttpConfig;
pub use model::{EnrollConfig, ModelConfig};
pub use mqtt::{
    topic_levels as check_topic_prefix, url_with_client_id, HomeAssistantConfig, MqttConfig,
    SpoolConfig, TlsConfig,
};
pub use output::{FilesConfig, MaskPolicy, OutputConfig, PayloadFormat};
pub use pipeline::PipelineConfig;
pub use position::PositionConfig;

/// The built-in default (`maeday-edge run` without `--config`): `firmware-config/demo.toml`.
pub const DEMO_TOML: &str = include_str!("../../firmware-config/demo.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this device in MQTT topics: `maeday/<device_id>/...`.
    pub device_id: String,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(rename = "camera")]
    pub cameras: Vec<CameraConfig>,
    #[serde(default)]
    pub output: OutputConfig,
    pub mqtt: Option<MqttConfig>,
    /// Write every result as a JSON line (and masks as PNG) into a folder.
    pub files: Option<FilesConfig>,
    /// Log one line per frame. Default: on in a terminal (the output a newcomer sees first),
    /// off under systemd (stderr is the journal), where a line per frame would flood it.
    pub console: Option<bool>,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Accept signed retrain bundles over MQTT (needs `[mqtt]`).
    pub bundles: Option<BundlesConfig>,
    /// How `enroll` commands build memory banks.
    #[serde(default)]
    pub enroll: EnrollConfig,
    /// Debounced anomaly events per camera (opt-in; needs `[mqtt]`).
    pub events: Option<EventsConfig>,
    /// The read-only HTTP server (`/metrics`, the live page); off without the section.
    pub http: Option<HttpConfig>,
    /// A moving camera's pose, read from MQTT and stamped on results and events (opt-in).
    pub position: Option<PositionConfig>,
    /// Operator commands (pause, thresholds, trigger, snapshot) and who may send them.
    #[serde(default)]
    pub commands: CommandsConfig,
}

impl Config {
    /// Whether to log a line per frame: `console` if set, else on unless stderr is the
    /// journal (`journal`).
    pub fn console_lines(&self, journal: bool) -> bool {
        self.console.unwrap_or(!journal)
    }

    /// Read, parse, resolve relative paths against the file's folder, validate.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).with_context(|| format!("invalid config {}", path.display()))
    }

    /// The built-in default: `demo.toml`, its paths resolved against `firmware-config/` in
    /// the working directory, else in the source tree this binary was built from.
    pub fn demo() -> Result<Config> {
        let local = Path::new("firmware-config");
        let base = if local.join("demo.toml").is_file() {
            local.to_path_buf()
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config")
        };
        Config::parse(DEMO_TOML, &base).context("invalid built-in demo config")
    }

    pub fn parse(text: &str, base: &Path) -> Result<Config> {
        let mut c: Config = toml::from_str(text)?;
        c.resolve(base);
        c.validate()?;
        Ok(c)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = self.model.path.as_mut() {
            fix(p);
        }
        if let Some(p) = self.model.extractor.as_mut() {
            fix(p);
        }
        if let Some(p) = self.model.bank.as_mut() {
            fix(p);
        }
        if let Some(o) = self.model.ort.as_mut() {
            o.library.as_mut().map(fix);
            o.tensorrt_cache_dir.as_mut().map(fix);
        }
        for cam in &mut self.cameras {
            match &mut cam.source {
                SourceConfig::Replay { path, .. } => fix(path),
                // A `url` without a scheme is a video file's path.
                SourceConfig::Gstreamer { url: Some(u), .. }
                    if !u.trim().is_empty() && !u.contains("://") =>
                {
                    let mut p = PathBuf::from(&*u);
                    fix(&mut p);
                    *u = p.to_string_lossy().into_owned();
                }
                _ => {}
            }
        }
        if let Some(m) = self.mqtt.as_mut() {
            fix(&mut m.spool.dir);
            if let Some(t) = m.tls.as_mut() {
                fix(&mut t.ca);
                t.client_cert.as_mut().map(fix);
                t.client_key.as_mut().map(fix);
            }
        }
        if let Some(f) = self.files.as_mut() {
            fix(&mut f.dir);
        }
        if let Some(b) = self.bundles.as_mut() {
            fix(&mut b.state_dir);
            b.trusted_keys.iter_mut().for_each(fix);
        }
    }

    /// Check the values serde cannot: ranges, names, combinations. Errors name the key.
    /// Each section checks its own keys; what spans sections is checked here.
    pub fn validate(&self) -> Result<()> {
        topic_level("device_id", &self.device_id)?;
        ensure!(
            !self.cameras.is_empty(),
            "camera: at least one [[camera]] is needed"
        );
        self.model.validate()?;
        self.enroll.validate()?;
        self.pipeline.validate_frame_limit()?;
        for (i, cam) in self.cameras.iter().enumerate() {
            let key = format!("camera[{i}]");
            topic_level(&format!("{key}.name"), &cam.name)?;
            if self.cameras[..i].iter().any(|c| c.name == cam.name) {
                bail!("{key}.name: {:?} is used by another camera", cam.name);
            }
            cam.validate(&key, &self.pipeline)?;
        }
        self.output.validate()?;
        if let Some(m) = &self.mqtt {
            m.validate()?;
            if m.home_assistant.is_some() {
                ensure!(
                    self.output.format == PayloadFormat::Json,
                    "mqtt.home_assistant: needs output.format = \"json\" (Home Assistant reads JSON)"
                );
            }
        }
        if let Some(e) = &self.events {
            ensure!(
                self.mqtt.is_some(),
                "events: needs an [mqtt] section (events are MQTT messages)"
            );
            e.validate()?;
        }
        if let Some(b) = &self.bundles {
            let Some(m) = &self.mqtt else {
                bail!("bundles: needs an [mqtt] section (bundles arrive over MQTT)");
            };
            b.validate(m)?;
        }
        if let Some(h) = &self.http {
            h.validate()?;
        }
        if let Some(p) = &self.position {
            let Some(m) = &self.mqtt else {
                bail!("position: needs an [mqtt] section (poses arrive over MQTT)");
            };
            p.validate()?;
            let cameras: Vec<String> = self.cameras.iter().map(|c| c.name.clone()).collect();
            p.validate_apart(&m.topic_prefix, &self.device_id, &cameras)?;
        }
        self.commands.validate()?;
        self.pipeline.validate()
    }
}

#[cfg(test)]
mod tests;
