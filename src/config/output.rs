//! `[output]` (what each frame publishes) and `[files]` (results written to a folder).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use super::camera::rate_period;
use super::checks::{zero_or_range, MAX_FPS, MAX_INTERVAL_S, MIN_RATE};

/// What each frame publishes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    #[serde(default)]
    pub format: PayloadFormat,
    /// When to publish the binary mask PNG.
    #[serde(default)]
    pub mask: MaskPolicy,
    /// At most this many masks per second per camera (0 = no limit).
    #[serde(default = "default_mask_rate")]
    pub mask_max_per_sec: f64,
    /// Also publish a heatmap overlay PNG for every frame.
    #[serde(default)]
    pub heatmap: bool,
    /// Seconds between `metrics` messages (0 = never).
    #[serde(default = "default_metrics_interval")]
    pub metrics_interval_s: f64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            format: PayloadFormat::default(),
            mask: MaskPolicy::default(),
            mask_max_per_sec: default_mask_rate(),
            heatmap: false,
            metrics_interval_s: default_metrics_interval(),
        }
    }
}

impl OutputConfig {
    pub fn validate(&self) -> Result<()> {
        let o = self;
        zero_or_range(
            "output.mask_max_per_sec",
            o.mask_max_per_sec,
            MIN_RATE..=MAX_FPS,
            "no limit",
        )?;
        zero_or_range(
            "output.metrics_interval_s",
            o.metrics_interval_s,
            0.1..=MAX_INTERVAL_S,
            "never",
        )?;
        Ok(())
    }

    /// The least time between two masks of a camera (None: no limit).
    pub fn mask_interval(&self) -> Option<Duration> {
        rate_period(self.mask_max_per_sec)
    }

    /// Time between `metrics` messages (None: never).
    pub fn metrics_interval(&self) -> Option<Duration> {
        (self.metrics_interval_s > 0.0).then(|| Duration::from_secs_f64(self.metrics_interval_s))
    }
}

fn default_mask_rate() -> f64 {
    2.0
}

fn default_metrics_interval() -> f64 {
    10.0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    Cbor,
    /// The default: readable anywhere (Home Assistant, mosquitto_sub); CBOR for
    /// constrained links.
    #[default]
    Json,
}

impl PayloadFormat {
    /// The name the config uses (`status` says which is set).
    pub fn name(self) -> &'static str {
        match self {
            PayloadFormat::Cbor => "cbor",
            PayloadFormat::Json => "json",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskPolicy {
    #[default]
    Anomalous,
    Always,
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    pub dir: PathBuf,
}
