//! The daemon's configuration: one TOML file (`firmware-config/<site>.toml`).
//!
//! Parsed with serde (unknown keys are errors, so a typo never silently falls back to a
//! default), then [`Config::validate`]d: every error names the key, e.g.
//! `camera[1].source.fps: must be > 0 (got -2)`. Relative paths are resolved against the
//! folder of the config file, so a config works from any working directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use crate::daemon::source::convert::PixelFormat;
use crate::detect::decode::{DecodeLimits, MAX_FRAME_PIXELS_RANGE};
use crate::detect::engine::{Backend, EngineKind, OrtSettings, Precision};
use crate::detect::preprocess::Fit;
use crate::model::manifest::Thresholds;

/// The built-in default (`maeday-edge run` without `--config`): `firmware-config/demo.toml`.
pub const DEMO_TOML: &str = include_str!("../firmware-config/demo.toml");

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
    /// Log one line per frame (on by default: the sink a newcomer sees first).
    #[serde(default = "yes")]
    pub console: bool,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Accept signed retrain bundles over MQTT (needs `[mqtt]`).
    pub bundles: Option<BundlesConfig>,
    /// How `enroll` commands build memory banks.
    #[serde(default)]
    pub enroll: EnrollConfig,
}

/// Enrollment of a memory bank from live good frames (the `enroll` MQTT command; the
/// bank is installed into a model slot, so it needs `[bundles]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollConfig {
    /// Good frames captured when the command names no count.
    #[serde(default = "default_enroll_frames")]
    pub frames: usize,
    #[serde(default)]
    pub seed: u64,
    /// The fraction of patch features the coreset keeps.
    #[serde(default = "default_coreset_fraction")]
    pub coreset_fraction: f64,
    /// Extra views of each good frame: hflip, vflip, rotate, brightness.
    #[serde(default)]
    pub augment: Vec<String>,
    /// Weights of MAEDAY's and the bank's standardised maps in the ensemble.
    #[serde(default = "one")]
    pub maeday_weight: f32,
    #[serde(default = "one")]
    pub bank_weight: f32,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        EnrollConfig {
            frames: default_enroll_frames(),
            seed: 0,
            coreset_fraction: default_coreset_fraction(),
            augment: Vec::new(),
            maeday_weight: 1.0,
            bank_weight: 1.0,
        }
    }
}

fn default_enroll_frames() -> usize {
    4
}
fn default_coreset_fraction() -> f64 {
    0.25
}
fn one() -> f32 {
    1.0
}

impl EnrollConfig {
    pub fn settings(&self) -> Result<crate::enroll::EnrollSettings> {
        Ok(crate::enroll::EnrollSettings {
            seed: self.seed,
            coreset_fraction: self.coreset_fraction,
            augment: self
                .augment
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_>>()
                .context("enroll.augment")?,
            weights: crate::detect::fuse::Weights {
                maeday: self.maeday_weight,
                bank: self.bank_weight,
            },
            ..Default::default()
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlesConfig {
    /// Model slots, the active choice and partial transfers live here.
    pub state_dir: PathBuf,
    /// Public keys (hex files from `maeday-edge bundle keygen`) whose bundles are accepted.
    pub trusted_keys: Vec<PathBuf>,
    /// Fleet groups: bundles sent to `maeday/fleet/<group>/bundle/chunk` are for us too.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default = "default_bundle_bytes")]
    pub max_bundle_bytes: u64,
    #[serde(default = "default_chunk_bytes")]
    pub max_chunk_bytes: usize,
    /// Partial transfers kept at once under `state_dir/incoming` (the least recently
    /// updated one is evicted for a new one): unsigned chunks cannot pile up.
    #[serde(default = "default_max_transfers")]
    pub max_transfers: usize,
    /// A partial transfer that gets no chunk for this long is deleted.
    #[serde(default = "default_transfer_expiry")]
    pub transfer_expiry_s: u64,
    /// Bound on all partial transfers together.
    #[serde(default = "default_incoming_bytes")]
    pub max_incoming_bytes: u64,
    /// Accept unsigned `enroll` commands (only for a broker where nobody else can publish
    /// on the command topic). `rollback` is always signed.
    #[serde(default)]
    pub allow_unsigned_enroll: bool,
}

fn default_bundle_bytes() -> u64 {
    256 << 20
}
fn default_chunk_bytes() -> usize {
    256 << 10
}
fn default_max_transfers() -> usize {
    4
}
fn default_transfer_expiry() -> u64 {
    3600
}
fn default_incoming_bytes() -> u64 {
    512 << 20
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model folder; default: the bundled model.
    pub path: Option<PathBuf>,
    /// Override the manifest's mask count (fewer masks: faster, noisier).
    pub masks: Option<usize>,
    /// CPU threads for inference; default: all cores.
    pub threads: Option<usize>,
    #[serde(default)]
    pub precision: Precision,
    /// `tract` (built in, CPU) or `ort` (ONNX Runtime: GPU providers; see `[model.ort]`).
    #[serde(default)]
    pub engine: EngineKind,
    /// ONNX Runtime settings, used with `engine = "ort"`.
    pub ort: Option<OrtSettings>,
    /// `maeday`, `bank` or `ensemble`; default: the ensemble once a memory bank is
    /// enrolled, MAEDAY alone before.
    pub scorer: Option<crate::detect::fuse::ScorerKind>,
    /// The memory bank's feature extractor; default: the shipped EfficientNet-Lite0.
    pub extractor: Option<PathBuf>,
    /// A memory bank folder (from `enroll`) for a model folder that has no `bank/` of its
    /// own (the demo ships one for the bundled model); a bank enrolled into a model slot
    /// on the device takes precedence.
    pub bank: Option<PathBuf>,
}

impl ModelConfig {
    pub fn backend(&self) -> Backend {
        self.engine.backend(self.ort.clone())
    }
}

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
}

impl SourceConfig {
    /// A replay's frame period (None: as fast as scored, or not a replay).
    pub fn replay_period(&self) -> Option<Duration> {
        match self {
            SourceConfig::Replay { fps, .. } => rate_period(*fps),
            SourceConfig::V4l2 { .. } => None,
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
    #[default]
    Cbor,
    Json,
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
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    #[serde(default = "default_url")]
    pub url: String,
    /// Default: `maeday-<device_id>`.
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Largest packet sent or accepted (rumqttc's own default, 10 KiB, is too small for masks).
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// Publishes awaiting their PUBACK at once.
    #[serde(default = "default_inflight")]
    pub max_inflight: usize,
    /// Overridden by `$MAEDAY_MQTT_USERNAME` / `$MAEDAY_MQTT_PASSWORD`.
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Run an MQTT broker inside the daemon, listening here (e.g. "127.0.0.1:1883").
    pub embedded_broker: Option<SocketAddr>,
    /// Username -> password for the embedded broker; without it the broker is anonymous
    /// (and warns when it listens beyond loopback).
    #[serde(default)]
    pub embedded_broker_users: std::collections::HashMap<String, String>,
    /// Seconds to wait at shutdown for the broker to take what is queued (the rest stays
    /// in the spool for the next start).
    #[serde(default = "default_grace")]
    pub shutdown_grace_s: f64,
}

impl MqttConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace_s)
    }
}

fn default_url() -> String {
    "mqtt://127.0.0.1:1883".into()
}
fn default_keep_alive() -> u64 {
    15
}
fn default_max_packet() -> usize {
    1 << 20
}
fn default_inflight() -> usize {
    32
}
fn default_grace() -> f64 {
    5.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// PEM client certificate and key, for brokers that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Where results wait while the broker is unreachable (survives restarts).
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// Bound on the spooled payload bytes; when full the oldest are dropped (and counted).
    #[serde(default = "default_spool_bytes")]
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: default_spool_dir(),
            max_bytes: default_spool_bytes(),
        }
    }
}

fn default_spool_dir() -> PathBuf {
    PathBuf::from("spool")
}
fn default_spool_bytes() -> u64 {
    256 << 20
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    pub dir: PathBuf,
}

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

impl Config {
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
            if let SourceConfig::Replay { path, .. } = &mut cam.source {
                fix(path);
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
    pub fn validate(&self) -> Result<()> {
        topic_level("device_id", &self.device_id)?;
        ensure!(
            !self.cameras.is_empty(),
            "camera: at least one [[camera]] is needed"
        );
        if let Some(m) = self.model.masks {
            // The batch holds all N masked copies of a window: 256 is ~150 MB of input.
            ensure!(
                (1..=MAX_MASKS).contains(&m),
                "model.masks: must be 1 to {MAX_MASKS} (got {m})"
            );
        }
        if let Some(t) = self.model.threads {
            ensure!(
                (1..=MAX_THREADS).contains(&t),
                "model.threads: must be 1 to {MAX_THREADS} (got {t})"
            );
        }
        if let Some(o) = &self.model.ort {
            ensure!(
                !o.providers.is_empty(),
                "model.ort.providers: name at least one of cpu, cuda, tensorrt"
            );
        }
        let e = &self.enroll;
        ensure!(
            (1..=64).contains(&e.frames),
            "enroll.frames: must be 1 to 64 (got {})",
            e.frames
        );
        ensure!(
            e.coreset_fraction > 0.0 && e.coreset_fraction <= 1.0,
            "enroll.coreset_fraction: must be in (0, 1] (got {})",
            e.coreset_fraction
        );
        ensure!(
            e.maeday_weight.is_finite()
                && e.bank_weight.is_finite()
                && e.maeday_weight >= 0.0
                && e.bank_weight > 0.0,
            "enroll: maeday_weight must be finite and >= 0, bank_weight finite and > 0"
        );
        let settings = e.settings()?;
        for (i, a) in settings.augment.iter().enumerate() {
            // Each augmentation multiplies the bank's rows: each at most once.
            ensure!(
                !settings.augment[..i].contains(a),
                "enroll.augment[{i}]: {:?} is listed twice",
                e.augment[i]
            );
        }
        let p = &self.pipeline;
        ensure!(
            MAX_FRAME_PIXELS_RANGE.contains(&p.max_frame_pixels),
            "pipeline.max_frame_pixels: must be {} to {} (got {})",
            MAX_FRAME_PIXELS_RANGE.start(),
            MAX_FRAME_PIXELS_RANGE.end(),
            p.max_frame_pixels
        );
        for (i, cam) in self.cameras.iter().enumerate() {
            let key = format!("camera[{i}]");
            topic_level(&format!("{key}.name"), &cam.name)?;
            if self.cameras[..i].iter().any(|c| c.name == cam.name) {
                bail!("{key}.name: {:?} is used by another camera", cam.name);
            }
            if let Some([x, y, w, h]) = cam.roi {
                ensure!(
                    w >= 8 && h >= 8,
                    "{key}.roi: width and height must be at least 8 (got {w}x{h})"
                );
                if let SourceConfig::V4l2 { width, height, .. } = cam.source {
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
                    PixelFormat::from_fourcc(code)
                        .with_context(|| format!("{key}.source.format"))?;
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
            }
        }
        let o = &self.output;
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
        if let Some(m) = &self.mqtt {
            let url = url_with_client_id(&m.url, "probe");
            rumqttc::MqttOptions::parse_url(url)
                .map_err(|e| anyhow::anyhow!("mqtt.url: {:?} is not usable: {e}", m.url))?;
            ensure!(
                (1024..=MAX_PACKET_BYTES).contains(&m.max_packet_bytes),
                "mqtt.max_packet_bytes: must be 1024 to {MAX_PACKET_BYTES} (MQTT's own limit; got {})",
                m.max_packet_bytes
            );
            ensure!(
                (1..=u16::MAX as usize).contains(&m.max_inflight),
                "mqtt.max_inflight: must be 1..=65535"
            );
            ensure!(
                (5..=u16::MAX as u64).contains(&m.keep_alive_s),
                "mqtt.keep_alive_s: must be 5 to 65535 (got {})",
                m.keep_alive_s
            );
            ensure!(
                m.spool.max_bytes >= 4096,
                "mqtt.spool.max_bytes: must be at least 4096"
            );
            ensure!(
                m.shutdown_grace_s.is_finite() && (0.0..=MAX_GRACE_S).contains(&m.shutdown_grace_s),
                "mqtt.shutdown_grace_s: must be 0 to {MAX_GRACE_S} (got {})",
                m.shutdown_grace_s
            );
            if let Some(t) = &m.tls {
                ensure!(
                    t.client_cert.is_some() == t.client_key.is_some(),
                    "mqtt.tls: client_cert and client_key go together"
                );
                ensure!(
                    m.url.starts_with("mqtts://"),
                    "mqtt.tls: is set but mqtt.url is not mqtts://"
                );
            }
            for (user, pass) in &m.embedded_broker_users {
                ensure!(
                    !user.is_empty() && !pass.is_empty(),
                    "mqtt.embedded_broker_users: user names and passwords must not be empty"
                );
            }
            #[cfg(not(feature = "embedded-broker"))]
            ensure!(
                m.embedded_broker.is_none(),
                "mqtt.embedded_broker: this build has no embedded broker (feature embedded-broker)"
            );
        }
        if let Some(b) = &self.bundles {
            let Some(m) = &self.mqtt else {
                bail!("bundles: needs an [mqtt] section (bundles arrive over MQTT)");
            };
            ensure!(
                !b.trusted_keys.is_empty(),
                "bundles.trusted_keys: at least one public key is needed"
            );
            for (i, g) in b.groups.iter().enumerate() {
                topic_level(&format!("bundles.groups[{i}]"), g)?;
            }
            ensure!(
                b.max_chunk_bytes >= 1024 && b.max_chunk_bytes + 4096 <= m.max_packet_bytes,
                "bundles.max_chunk_bytes: must be at least 1024 and 4 KiB below mqtt.max_packet_bytes ({})",
                m.max_packet_bytes
            );
            ensure!(
                b.max_bundle_bytes >= b.max_chunk_bytes as u64 && b.max_bundle_bytes <= MAX_BUNDLE_BYTES,
                "bundles.max_bundle_bytes: must be at least max_chunk_bytes and at most {MAX_BUNDLE_BYTES} (got {})",
                b.max_bundle_bytes
            );
            ensure!(
                (1..=64).contains(&b.max_transfers),
                "bundles.max_transfers: must be 1 to 64 (got {})",
                b.max_transfers
            );
            ensure!(
                b.transfer_expiry_s >= 1,
                "bundles.transfer_expiry_s: must be at least 1"
            );
            ensure!(
                b.max_incoming_bytes >= b.max_bundle_bytes,
                "bundles.max_incoming_bytes: must be at least max_bundle_bytes ({})",
                b.max_bundle_bytes
            );
        }
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
}

impl Config {
    /// What `run --check` adds to [`Config::validate`]: the checks that read the replay
    /// files (their headers only). The first readable frame of each replay must be within
    /// `pipeline.max_frame_pixels` and hold the camera's ROI. (At run time a frame that
    /// breaks either is counted as corrupt.)
    pub fn check_sources(&self) -> Result<()> {
        let limits = self.pipeline.decode_limits();
        for (i, cam) in self.cameras.iter().enumerate() {
            let SourceConfig::Replay { path, .. } = &cam.source else {
                continue;
            };
            let key = format!("camera[{i}]");
            let files = crate::daemon::source::replay::expand(path)
                .with_context(|| format!("{key}.source.path"))?;
            // Corrupt files are skipped at run time: so here.
            let first = files
                .iter()
                .take(8)
                .find_map(|f| crate::detect::decode::dimensions(f).ok().map(|d| (f, d)));
            let Some((file, (w, h))) = first else {
                continue;
            };
            limits
                .check(w, h)
                .with_context(|| format!("{key}.source.path: {}", file.display()))?;
            if let Some(roi) = cam.roi {
                ensure!(
                    roi_fits(roi, w, h),
                    "{key}.roi: {roi:?} does not fit the {w}x{h} frames of {}",
                    file.display()
                );
            }
        }
        Ok(())
    }
}

/// Whether `[x, y, width, height]` lies inside a `frame_width` x `frame_height` frame.
pub fn roi_fits([x, y, w, h]: [u32; 4], frame_width: u32, frame_height: u32) -> bool {
    x as u64 + w as u64 <= frame_width as u64 && y as u64 + h as u64 <= frame_height as u64
}

// Upper bounds of numeric keys: each keeps a Duration, a capacity or an allocation the
// value drives sane (an unbounded `fps = 1e-300` or `result_queue = 9e18` panics at run time).
/// Frames per second (replays, V4L2) and masks per second.
const MAX_FPS: f64 = 1000.0;
/// The slowest rate (one per 1000 s): a smaller one overflows `Duration` as a period.
const MIN_RATE: f64 = 0.001;
/// Metrics interval and reconnect backoff: a day.
const MAX_INTERVAL_S: f64 = 86_400.0;
const MAX_GRACE_S: f64 = 3600.0;
const MAX_RESULT_QUEUE: usize = 4096;
const MAX_MASKS: usize = 256;
const MAX_THREADS: usize = 256;
/// MQTT's largest packet (remaining length 268,435,455).
const MAX_PACKET_BYTES: usize = 268_435_455;
const MAX_BUNDLE_BYTES: u64 = 4 << 30;

/// `value` is 0 (meaning `zero_means`) or finite and in `range`; the error names `key`.
fn zero_or_range(
    key: &str,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
    zero_means: &str,
) -> Result<()> {
    ensure!(
        value == 0.0 || (value.is_finite() && range.contains(&value)),
        "{key}: must be 0 ({zero_means}) or {} to {} (got {value})",
        range.start(),
        range.end()
    );
    Ok(())
}

/// A name used as one MQTT topic level: no wildcards, no separators, not empty.
fn topic_level(key: &str, value: &str) -> Result<()> {
    ensure!(
        !value.is_empty()
            && value.len() <= 64
            && !value.contains(['/', '+', '#', '\0'])
            && !value.chars().any(char::is_whitespace),
        "{key}: {value:?} must be 1-64 characters without '/', '+', '#' or spaces (it is an MQTT topic level)"
    );
    Ok(())
}

/// rumqttc's URL parser requires a client id; add ours unless the URL has one.
pub fn url_with_client_id(url: &str, client_id: &str) -> String {
    if url.contains("client_id=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&client_id={client_id}")
    } else {
        format!("{url}?client_id={client_id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
device_id = "line-3"
[[camera]]
name = "top"
source = { kind = "replay", path = "frames" }
"#;

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let c = Config::parse(MINIMAL, Path::new("/etc/maeday")).unwrap();
        assert_eq!(c.cameras.len(), 1);
        match &c.cameras[0].source {
            SourceConfig::Replay { path, fps, looping } => {
                assert_eq!(path, Path::new("/etc/maeday/frames"));
                assert_eq!(*fps, 0.0);
                assert!(!looping);
            }
            other => panic!("wrong source {other:?}"),
        }
        assert_eq!(c.output.format, PayloadFormat::Cbor);
        assert!(c.console);
    }

    #[test]
    fn errors_name_the_key() {
        let bad = |text: &str| {
            format!(
                "{:#}",
                Config::parse(text, Path::new("/")).expect_err("must fail")
            )
        };
        let e = bad(&MINIMAL.replace("\"frames\"", "\"frames\", fps = -2"));
        assert!(e.contains("camera[0].source.fps"), "{e}");
        let e = bad(&MINIMAL.replace("line-3", "line/3"));
        assert!(e.contains("device_id"), "{e}");
        let e = bad(&format!("{MINIMAL}\n[mqtt]\nmax_packet_bytes = 10\n"));
        assert!(e.contains("mqtt.max_packet_bytes"), "{e}");
        let e = bad(&format!("{MINIMAL}\n[mqtt]\nurl = \"http://x\"\n"));
        assert!(e.contains("mqtt.url"), "{e}");
        let e = bad(&MINIMAL.replace("name = \"top\"", "name = \"top\"\nfsp = 3"));
        assert!(e.contains("fsp"), "{e}");
        let v4l = r#"
device_id = "d"
[[camera]]
name = "c"
source = { kind = "v4l2", format = "H264", width = 640, height = 480 }
"#;
        let e = bad(v4l);
        assert!(e.contains("camera[0].source.format"), "{e}");
    }

    #[test]
    fn values_that_would_panic_at_run_time_are_refused_naming_their_key() {
        let bad = |text: &str| {
            format!(
                "{:#}",
                Config::parse(text, Path::new("/")).expect_err("must fail")
            )
        };
        let with = |section: &str| format!("{MINIMAL}\n{section}\n");
        for (text, key) in [
            (
                MINIMAL.replace("\"frames\"", "\"frames\", fps = 1e-300"),
                "camera[0].source.fps",
            ),
            (
                MINIMAL.replace("\"frames\"", "\"frames\", fps = nan"),
                "camera[0].source.fps",
            ),
            (
                with("[mqtt]\nshutdown_grace_s = 1e30"),
                "mqtt.shutdown_grace_s",
            ),
            (with("[mqtt]\nkeep_alive_s = 70000"), "mqtt.keep_alive_s"),
            (
                with("[mqtt]\nmax_packet_bytes = 300000000"),
                "mqtt.max_packet_bytes",
            ),
            (
                with("[output]\nmask_max_per_sec = 1e-30"),
                "output.mask_max_per_sec",
            ),
            (
                with("[output]\nmetrics_interval_s = 1e30"),
                "output.metrics_interval_s",
            ),
            (
                with("[output]\nmetrics_interval_s = 1e-300"),
                "output.metrics_interval_s",
            ),
            (
                with("[pipeline]\nresult_queue = 9000000000000000000"),
                "pipeline.result_queue",
            ),
            (
                with("[pipeline]\nreconnect_max_s = 1e30"),
                "pipeline.reconnect_max_s",
            ),
            (
                with("[pipeline]\nmax_frame_pixels = 0"),
                "pipeline.max_frame_pixels",
            ),
            (
                with("[pipeline]\nmax_frame_pixels = 1000000000000"),
                "pipeline.max_frame_pixels",
            ),
            (
                MINIMAL.replace("[[camera]]", "[model]\nmasks = 100000\n[[camera]]"),
                "model.masks",
            ),
            (
                MINIMAL.replace("[[camera]]", "[model]\nthreads = 100000\n[[camera]]"),
                "model.threads",
            ),
            (
                with("[enroll]\naugment = [\"hflip\", \"hflip\"]"),
                "enroll.augment[1]",
            ),
            (with("[enroll]\nbank_weight = inf"), "bank_weight"),
        ] {
            let e = bad(&text);
            assert!(e.contains(key), "{key}: {e}");
        }
        let v4l2 = |size: &str, extra: &str| {
            format!(
                "device_id = \"d\"\n[[camera]]\nname = \"c\"\n\
                 source = {{ kind = \"v4l2\", {size} }}\n{extra}"
            )
        };
        let e = bad(&v4l2(
            "width = 640, height = 480",
            "roi = [600, 0, 100, 100]",
        ));
        assert!(e.contains("camera[0].roi") && e.contains("640x480"), "{e}");
        let e = bad(&v4l2("width = 100000, height = 100000", ""));
        assert!(e.contains("max_frame_pixels"), "{e}");
        let e = bad(&v4l2("width = 640, height = 480, fps = 100000", ""));
        assert!(e.contains("camera[0].source.fps"), "{e}");
        // The edges of each range are accepted and convert without a panic.
        let edges = format!(
            "{}\n[output]\nmask_max_per_sec = 0.001\nmetrics_interval_s = 86400\n\
             [mqtt]\nshutdown_grace_s = 3600\nkeep_alive_s = 65535\n\
             [pipeline]\nresult_queue = 4096\nreconnect_min_s = 0.01\nreconnect_max_s = 86400\n",
            MINIMAL
                .replace("\"frames\"", "\"frames\", fps = 0.001")
                .replace("[[camera]]", "[model]\nmasks = 256\n[[camera]]")
        );
        let c = Config::parse(&edges, Path::new("/")).unwrap();
        assert_eq!(
            c.cameras[0].source.replay_period(),
            Some(Duration::from_secs(1000))
        );
        assert_eq!(c.output.mask_interval(), Some(Duration::from_secs(1000)));
        assert_eq!(
            c.output.metrics_interval(),
            Some(Duration::from_secs(86400))
        );
        assert_eq!(c.mqtt.unwrap().shutdown_grace(), Duration::from_secs(3600));
        let v = v4l2("width = 640, height = 480", "roi = [540, 380, 100, 100]");
        Config::parse(&v, Path::new("/")).unwrap();
    }

    /// The deterministic cousin of the `config` fuzz target: every number in the shipped
    /// configs replaced, one at a time, by extreme values; what validates must convert
    /// into Durations, Instants and channel capacities without a panic.
    #[test]
    fn extreme_numbers_in_the_shipped_configs_are_refused_or_safe() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config");
        let values = [
            "0",
            "1e-300",
            "1e300",
            "-1",
            "nan",
            "inf",
            "0.001",
            "1000",
            "65536",
            "9000000000000000000",
            "18446744073709551615",
        ];
        let is_word = |b: u8| b.is_ascii_alphanumeric() || b"._-/".contains(&b);
        let (mut tried, mut accepted) = (0, 0);
        for name in ["demo.toml", "conveyor.toml", "fod-cart.toml"] {
            let seed = std::fs::read_to_string(dir.join(name)).unwrap();
            let b = seed.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if !(b[i].is_ascii_digit() && (i == 0 || !is_word(b[i - 1]))) {
                    i += 1;
                    continue;
                }
                let j = i + b[i..].iter().take_while(|&&c| is_word(c)).count();
                for v in values {
                    tried += 1;
                    let text = format!("{}{v}{}", &seed[..i], &seed[j..]);
                    let Ok(c) = Config::parse(&text, &dir) else {
                        continue;
                    };
                    accepted += 1;
                    let now = std::time::Instant::now();
                    let _ = c.cameras[0].source.replay_period().map(|p| now + p);
                    let _ = c.output.mask_interval().map(|p| now + p);
                    let _ = c.output.metrics_interval().map(|p| now + p);
                    let _ = c.mqtt.as_ref().map(|m| now + m.shutdown_grace());
                    let _ = std::sync::mpsc::sync_channel::<()>(c.pipeline.result_queue);
                    assert!(c.model.masks.unwrap_or(1) <= 256, "{name}: {v}");
                }
                i = j;
            }
        }
        assert!(
            tried > 100 && accepted > 10,
            "{tried} tried, {accepted} accepted"
        );
    }

    #[test]
    fn check_sources_reads_the_first_frame_header_for_the_roi() {
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples");
        let text = |roi: &str| {
            format!(
                "device_id = \"d\"\n[[camera]]\nname = \"c\"\n\
                 source = {{ kind = \"replay\", path = \"coffee-224.png\" }}\n{roi}"
            )
        };
        let ok = Config::parse(&text("roi = [0, 0, 224, 224]"), &samples).unwrap();
        ok.check_sources().unwrap();
        let off = Config::parse(&text("roi = [200, 0, 100, 100]"), &samples).unwrap();
        let e = format!("{:#}", off.check_sources().unwrap_err());
        assert!(e.contains("camera[0].roi") && e.contains("224x224"), "{e}");
        let small = Config::parse(
            &format!("{}\n[pipeline]\nmax_frame_pixels = 10000\n", text("")),
            &samples,
        )
        .unwrap();
        let e = format!("{:#}", small.check_sources().unwrap_err());
        assert!(
            e.contains("camera[0].source.path") && e.contains("224x224"),
            "{e}"
        );
        let missing = Config::parse(MINIMAL, Path::new("/nonexistent")).unwrap();
        let e = format!("{:#}", missing.check_sources().unwrap_err());
        assert!(e.contains("camera[0].source.path"), "{e}");
    }

    #[test]
    fn engine_and_ort_settings() {
        let c = Config::parse(MINIMAL, Path::new("/")).unwrap();
        assert_eq!(c.model.backend(), Backend::Tract);
        let text = MINIMAL.replace(
            "[[camera]]",
            "[model]\nengine = \"ort\"\n[model.ort]\nproviders = [\"tensorrt\", \"cuda\"]\n\
             tensorrt_cache_dir = \"trt\"\n[[camera]]",
        );
        let c = Config::parse(&text, Path::new("/var/lib/maeday")).unwrap();
        let Backend::Ort(o) = c.model.backend() else {
            panic!("not ort")
        };
        use crate::detect::engine::Provider;
        assert_eq!(o.providers, [Provider::TensorRt, Provider::Cuda]);
        assert!(!o.allow_fallback && o.tensorrt_fp16);
        assert_eq!(
            o.tensorrt_cache_dir.as_deref(),
            Some(Path::new("/var/lib/maeday/trt"))
        );
        // engine = "ort" without a [model.ort] table: the CPU provider.
        let text = MINIMAL.replace("[[camera]]", "[model]\nengine = \"ort\"\n[[camera]]");
        let Backend::Ort(o) = Config::parse(&text, Path::new("/"))
            .unwrap()
            .model
            .backend()
        else {
            panic!("not ort")
        };
        assert_eq!(o.providers, [Provider::Cpu]);
        for (bad, key) in [
            ("providers = [\"opencl\"]", "opencl"),
            ("providers = []", "model.ort.providers"),
            ("fp16 = true", "fp16"),
        ] {
            let text = MINIMAL.replace(
                "[[camera]]",
                &format!("[model]\nengine = \"ort\"\n[model.ort]\n{bad}\n[[camera]]"),
            );
            let e = format!("{:#}", Config::parse(&text, Path::new("/")).unwrap_err());
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn enroll_and_scorer_settings() {
        let c = Config::parse(MINIMAL, Path::new("/")).unwrap();
        assert_eq!((c.enroll.frames, c.model.scorer), (4, None));
        let text = format!(
            "{}\n[enroll]\nframes = 8\naugment = [\"hflip\"]\nbank_weight = 2.0\n",
            MINIMAL.replace(
                "[[camera]]",
                "[model]\nscorer = \"bank\"\nextractor = \"ex\"\n[[camera]]"
            )
        );
        let c = Config::parse(&text, Path::new("/opt/m")).unwrap();
        assert_eq!(c.model.scorer, Some(crate::detect::fuse::ScorerKind::Bank));
        assert_eq!(c.model.extractor.as_deref(), Some(Path::new("/opt/m/ex")));
        let s = c.enroll.settings().unwrap();
        assert_eq!(s.augment, [crate::bank::store::Augmentation::Hflip]);
        assert_eq!((s.weights.maeday, s.weights.bank), (1.0, 2.0));
        for (bad, key) in [
            ("frames = 0", "enroll.frames"),
            ("coreset_fraction = 1.5", "enroll.coreset_fraction"),
            ("augment = [\"mirror\"]", "enroll.augment"),
            ("bank_weight = 0.0", "bank_weight"),
        ] {
            let text = format!("{MINIMAL}\n[enroll]\n{bad}\n");
            let e = format!("{:#}", Config::parse(&text, Path::new("/")).unwrap_err());
            assert!(e.contains(key), "{bad}: {e}");
        }
        let text = MINIMAL.replace("[[camera]]", "[model]\nscorer = \"patchcore\"\n[[camera]]");
        assert!(Config::parse(&text, Path::new("/")).is_err());
    }

    #[test]
    fn shipped_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config");
        for name in ["demo.toml", "conveyor.toml", "fod-cart.toml"] {
            Config::load(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
        Config::demo().unwrap();
    }
}
