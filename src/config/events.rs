//! `[events]`: debounced anomaly events per camera (opt-in: the section turns them on).
//!
//! A frame's verdict flickers (a bolt entering the view scores just under the threshold,
//! a reflection scores just over it for one frame); an event is what a person or a home
//! automation wants to react to: it starts after `start_frames` anomalous frames in a row
//! and ends after `end_frames` normal ones (the hysteresis), so one object passing by is
//! one event. The keys and their checks live here; the state machine in
//! `daemon::incidents`.

use std::time::Duration;

use anyhow::{ensure, Result};
use serde::Deserialize;

use super::checks::{zero_or_range, MAX_INTERVAL_S};

/// The most frames `start_frames` / `end_frames` may ask for.
const MAX_DEBOUNCE_FRAMES: u32 = 10_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Anomalous frames in a row that start an event (debounce).
    #[serde(default = "default_start_frames")]
    pub start_frames: u32,
    /// Normal frames in a row that end it (hysteresis).
    #[serde(default = "default_end_frames")]
    pub end_frames: u32,
    /// Least seconds between two `update` messages of an event (0 = every frame that
    /// raises the peak).
    #[serde(default = "default_update_interval")]
    pub update_interval_s: f64,
    /// Publish the evidence JPEG (the heatmap over the frame, cropped round the peak).
    #[serde(default = "default_evidence")]
    pub evidence: bool,
    /// The evidence crop's longest side, in pixels (32..4096).
    #[serde(default = "default_evidence_px")]
    pub evidence_max_px: u32,
    /// JPEG quality of the evidence (1..100).
    #[serde(default = "default_quality")]
    pub evidence_quality: u8,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            start_frames: default_start_frames(),
            end_frames: default_end_frames(),
            update_interval_s: default_update_interval(),
            evidence: default_evidence(),
            evidence_max_px: default_evidence_px(),
            evidence_quality: default_quality(),
        }
    }
}

impl EventsConfig {
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("events.start_frames", self.start_frames),
            ("events.end_frames", self.end_frames),
        ] {
            ensure!(
                (1..=MAX_DEBOUNCE_FRAMES).contains(&v),
                "{key}: must be 1 to {MAX_DEBOUNCE_FRAMES} frames (got {v})"
            );
        }
        zero_or_range(
            "events.update_interval_s",
            self.update_interval_s,
            0.01..=MAX_INTERVAL_S,
            "every frame that raises the peak",
        )?;
        ensure!(
            (32..=4096).contains(&self.evidence_max_px),
            "events.evidence_max_px: must be 32 to 4096 (got {})",
            self.evidence_max_px
        );
        ensure!(
            (1..=100).contains(&self.evidence_quality),
            "events.evidence_quality: must be 1 to 100 (got {})",
            self.evidence_quality
        );
        Ok(())
    }

    /// Least time between two updates of an event.
    pub fn update_interval(&self) -> Duration {
        Duration::from_secs_f64(self.update_interval_s)
    }
}

fn default_start_frames() -> u32 {
    2
}

fn default_end_frames() -> u32 {
    3
}

fn default_update_interval() -> f64 {
    1.0
}

fn default_evidence() -> bool {
    true
}

fn default_evidence_px() -> u32 {
    640
}

fn default_quality() -> u8 {
    80
}
