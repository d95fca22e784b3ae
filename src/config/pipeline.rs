//! `[pipeline]`: queues, camera reconnect backoff, the largest frame decoded.

use anyhow::{ensure, Result};
use serde::Deserialize;

use super::checks::{MAX_INTERVAL_S, MAX_RESULT_QUEUE};
use crate::detect::decode::{DecodeLimits, MAX_FRAME_PIXELS_RANGE};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Results waiting for the sinks; when full, inference waits (results are never dropped).
    #[serde(default = "default_result_queue")]
    pub result_queue: usize,
    /// Seconds between camera reconnect attempts, doubling up to `reconnect_max_s`.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_s: f64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_s: f64,
    /// The largest frame decoded (width x height); larger ones are refused from their
    /// header, before any allocation, and counted as corrupt. Bounds the memory a frame
    /// (file, GIF, MJPEG buffer) can take.
    #[serde(default = "default_max_frame_pixels")]
    pub max_frame_pixels: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            result_queue: default_result_queue(),
            reconnect_min_s: default_reconnect_min(),
            reconnect_max_s: default_reconnect_max(),
            max_frame_pixels: default_max_frame_pixels(),
        }
    }
}

impl PipelineConfig {
    /// `max_frame_pixels` (checked first: the cameras' sizes are checked against it).
    pub fn validate_frame_limit(&self) -> Result<()> {
        let p = self;
        ensure!(
            MAX_FRAME_PIXELS_RANGE.contains(&p.max_frame_pixels),
            "pipeline.max_frame_pixels: must be {} to {} (got {})",
            MAX_FRAME_PIXELS_RANGE.start(),
            MAX_FRAME_PIXELS_RANGE.end(),
            p.max_frame_pixels
        );
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        let p = self;
        ensure!(
            (1..=MAX_RESULT_QUEUE).contains(&p.result_queue),
            "pipeline.result_queue: must be 1 to {MAX_RESULT_QUEUE} (got {})",
            p.result_queue
        );
        for (key, v) in [
            ("pipeline.reconnect_min_s", p.reconnect_min_s),
            ("pipeline.reconnect_max_s", p.reconnect_max_s),
        ] {
            ensure!(
                v.is_finite() && (0.01..=MAX_INTERVAL_S).contains(&v),
                "{key}: must be 0.01 to {MAX_INTERVAL_S} (got {v})"
            );
        }
        ensure!(
            p.reconnect_max_s >= p.reconnect_min_s,
            "pipeline.reconnect_min_s/reconnect_max_s: need min <= max"
        );
        Ok(())
    }

    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits::new(self.max_frame_pixels)
    }
}

fn default_max_frame_pixels() -> u64 {
    crate::detect::decode::DEFAULT_MAX_FRAME_PIXELS
}

fn default_result_queue() -> usize {
    16
}

fn default_reconnect_min() -> f64 {
    0.5
}

fn default_reconnect_max() -> f64 {
    30.0
}
