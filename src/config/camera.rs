//! `[[camera]]`: where frames come from, the region scored, how frames are placed on the
//! model's windows, per-camera thresholds.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde::Deserialize;

use super::checks::{zero_or_range, MAX_FPS, MIN_RATE};
use super::pipeline::PipelineConfig;
use crate::daemon::source::convert::PixelFormat;
use crate::detect::preprocess::Fit;
use crate::model::manifest::Thresholds;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Names the camera in topics: `maeday/<device_id>/<name>/result`.
    pub name: String,
    pub source: SourceConfig,
    /// Region of interest `[x, y, width, height]` in frame pixels; only it is scored.
    pub roi: Option<[u32; 4]>,
    /// How a frame is mapped onto the model's windows.
    #[serde(default)]
    pub fit: Fit,
    /// With `fit = "tile"`: the fraction of a window shared with its neighbour.
    #[serde(default = "default_overlap")]
    pub tile_overlap: f32,
    /// Per-camera thresholds; default: the model manifest's (set by `calibrate`).
    pub thresholds: Option<Thresholds>,
}

fn default_overlap() -> f32 {
    0.25
}

impl CameraConfig {
    /// Checks this camera's keys (`key` is `camera[i]`).
    pub fn validate(&self, key: &str, p: &PipelineConfig) -> Result<()> {
        let cam = self;
        if let Some([x, y, w, h]) = cam.roi {
            ensure!(
                w >= 8 && h >= 8,
                "{key}.roi: width and height must be at least 8 (got {w}x{h})"
            );
            if let Some((width, height)) = cam.source.fixed_size() {
                ensure!(
                    roi_fits([x, y, w, h], width, height),
                    "{key}.roi: [{x}, {y}, {w}, {h}] does not fit the {width}x{height} frame"
                );
            }
        }
        ensure!(
            (0.0..0.9).contains(&cam.tile_overlap),
            "{key}.tile_overlap: must be in [0, 0.9) (got {})",
            cam.tile_overlap
        );
        if let Some(t) = cam.thresholds {
            ensure!(
                t.image.is_finite() && t.pixel.is_finite() && t.image >= 0.0 && t.pixel >= 0.0,
                "{key}.thresholds: image and pixel must be finite and >= 0"
            );
        }
        match &cam.source {
            SourceConfig::Replay { fps, .. } => zero_or_range(
                &format!("{key}.source.fps"),
                *fps,
                MIN_RATE..=MAX_FPS,
                "as fast as scored",
            )?,
            SourceConfig::V4l2 {
                format,
                width,
                height,
                fps,
                buffers,
                ..
            } => {
                let code: [u8; 4] = format.as_bytes().try_into().map_err(|_| {
                    anyhow::anyhow!("{key}.source.format: {format:?} is not a FourCC")
                })?;
                PixelFormat::from_fourcc(code).with_context(|| format!("{key}.source.format"))?;
                ensure!(
                    *width > 0 && *height > 0,
                    "{key}.source: width and height must be > 0"
                );
                ensure!(
                    *width as u64 * *height as u64 <= p.max_frame_pixels,
                    "{key}.source: {width}x{height} is over pipeline.max_frame_pixels ({})",
                    p.max_frame_pixels
                );
                ensure!(
                    (1..=MAX_FPS as u32).contains(fps),
                    "{key}.source.fps: must be 1 to {MAX_FPS} (got {fps})"
                );
                ensure!(
                    (1..=32).contains(buffers),
                    "{key}.source.buffers: must be 1..=32 (got {buffers})"
                );
            }
            SourceConfig::Gstreamer { .. } => validate_gstreamer(key, &cam.source, p)?,
        }
        Ok(())
    }

    pub fn fit(&self) -> Fit {
        match self.fit {
            Fit::Tile { .. } => Fit::Tile {
                overlap: self.tile_overlap,
            },
            other => other,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// Frames from files: a folder, a glob (`frames/*.png`) or an animated GIF.
    Replay {
        path: PathBuf,
        /// Frames per second; 0 = as fast as the pipeline takes them (no frame dropped).
        #[serde(default)]
        fps: f64,
        /// Start again at the first frame after the last.
        #[serde(default, rename = "loop")]
        looping: bool,
    },
    /// A V4L2 camera.
    V4l2 {
        #[serde(default = "default_device")]
        device: PathBuf,
        /// FourCC: MJPG, YUYV or GREY.
        #[serde(default = "default_fourcc")]
        format: String,
        width: u32,
        height: u32,
        #[serde(default = "default_camera_fps")]
        fps: u32,
        /// Driver buffers (more: fewer drops under load, more latency).
        #[serde(default = "default_buffers")]
        buffers: u32,
    },
    /// A GStreamer pipeline (feature `gstreamer`): `url` (rtsp://, http(s)://, file:// or a
    /// video file's path) or `pipeline` (a gst-launch description; one that ends in an
    /// appsink gets the output caps set on it, any other gets the conversion appended).
    Gstreamer {
        url: Option<String>,
        pipeline: Option<String>,
        /// The frame size the stream is scaled to (both or neither; neither: as decoded).
        width: Option<u32>,
        height: Option<u32>,
        /// `RGB` or `GRAY8` (gray is widened to RGB for the model).
        #[serde(default = "default_gst_format")]
        format: String,
        /// Frames per second (a `videorate` drops or repeats); 0 = as the stream delivers.
        #[serde(default)]
        fps: f64,
        /// RTSP jitter buffer (ms): lower is fresher, higher rides out network jitter.
        #[serde(default = "default_latency_ms")]
        latency_ms: u32,
        /// No frame for this long (seconds) = the stream dropped: reconnect.
        #[serde(default = "default_stall_s")]
        timeout_s: f64,
        /// The reconnect backoff doubles up to this (seconds), with jitter.
        #[serde(default = "default_reconnect_max_s")]
        reconnect_max_s: f64,
    },
}

/// The checks of a `kind = "gstreamer"` source (`key` is `camera[i]`).
fn validate_gstreamer(key: &str, source: &SourceConfig, p: &PipelineConfig) -> Result<()> {
    let SourceConfig::Gstreamer {
        url,
        pipeline,
        width,
        height,
        format,
        fps,
        latency_ms,
        timeout_s,
        reconnect_max_s,
    } = source
    else {
        return Ok(());
    };
    match (url, pipeline) {
        (Some(u), None) => ensure!(
            !u.trim().is_empty() && !u.contains('\0'),
            "{key}.source.url: must not be empty"
        ),
        (None, Some(d)) => ensure!(
            !d.trim().is_empty() && !d.contains('\0'),
            "{key}.source.pipeline: must not be empty"
        ),
        _ => anyhow::bail!("{key}.source: set exactly one of url and pipeline"),
    }
    match (width, height) {
        (None, None) => {}
        (Some(w), Some(h)) => {
            ensure!(
                *w > 0 && *h > 0 && *w <= 32768 && *h <= 32768,
                "{key}.source: width and height must be 1 to 32768 (got {w}x{h})"
            );
            ensure!(
                *w as u64 * *h as u64 <= p.max_frame_pixels,
                "{key}.source: {w}x{h} is over pipeline.max_frame_pixels ({})",
                p.max_frame_pixels
            );
        }
        _ => anyhow::bail!("{key}.source: set both width and height, or neither"),
    }
    ensure!(
        matches!(format.as_str(), "RGB" | "GRAY8"),
        "{key}.source.format: {format:?} is not RGB or GRAY8"
    );
    zero_or_range(
        &format!("{key}.source.fps"),
        *fps,
        MIN_RATE..=MAX_FPS,
        "as the stream delivers",
    )?;
    ensure!(
        *latency_ms <= 10_000,
        "{key}.source.latency_ms: must be 0 to 10000 (got {latency_ms})"
    );
    ensure!(
        timeout_s.is_finite() && (0.5..=600.0).contains(timeout_s),
        "{key}.source.timeout_s: must be 0.5 to 600 (got {timeout_s})"
    );
    ensure!(
        reconnect_max_s.is_finite() && (0.1..=3600.0).contains(reconnect_max_s),
        "{key}.source.reconnect_max_s: must be 0.1 to 3600 (got {reconnect_max_s})"
    );
    Ok(())
}

impl SourceConfig {
    /// A replay's frame period (None: as fast as scored, or not a replay).
    pub fn replay_period(&self) -> Option<Duration> {
        match self {
            SourceConfig::Replay { fps, .. } => rate_period(*fps),
            SourceConfig::V4l2 { .. } | SourceConfig::Gstreamer { .. } => None,
        }
    }

    /// The frame size the config fixes (V4L2, or a GStreamer source with width/height).
    pub fn fixed_size(&self) -> Option<(u32, u32)> {
        match self {
            SourceConfig::V4l2 { width, height, .. } => Some((*width, *height)),
            SourceConfig::Gstreamer {
                width: Some(w),
                height: Some(h),
                ..
            } => Some((*w, *h)),
            _ => None,
        }
    }
}

/// The period of a rate in events per second; None for 0 (no rate). `validate` keeps
/// every rate it is used for in [0.001, 1000], where this is a sane Duration.
pub fn rate_period(per_second: f64) -> Option<Duration> {
    (per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / per_second))
}

fn default_device() -> PathBuf {
    PathBuf::from("/dev/video0")
}

fn default_fourcc() -> String {
    "MJPG".into()
}

fn default_camera_fps() -> u32 {
    30
}

fn default_buffers() -> u32 {
    4
}

fn default_gst_format() -> String {
    "RGB".into()
}

fn default_latency_ms() -> u32 {
    200
}

fn default_stall_s() -> f64 {
    5.0
}

fn default_reconnect_max_s() -> f64 {
    30.0
}

/// Whether `[x, y, width, height]` lies inside a `frame_width` x `frame_height` frame.
pub fn roi_fits([x, y, w, h]: [u32; 4], frame_width: u32, frame_height: u32) -> bool {
    x as u64 + w as u64 <= frame_width as u64 && y as u64 + h as u64 <= frame_height as u64
}
