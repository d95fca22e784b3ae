//! Where results go: the console (one line per frame), a folder (JSON lines + mask PNGs)
//! and MQTT. All run on the sink thread, in frame order.
//!
//! Neither a full disk under the folder nor an MQTT packet limit stops the sinks: a line or
//! PNG the disk refuses is dropped and counted, and pictures are made to fit in a packet
//! (see [`crate::daemon::mqtt::packet`]) before they are queued or spooled.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::{Config, MaskPolicy, OutputConfig};
use crate::daemon::installer::{enroll_status_topic, BundleStatus, InstallerInput};
use crate::daemon::mqtt::link::{MqttSink, MqttStats, Received, StatusMessages};
use crate::daemon::mqtt::packet::{self, Fitted};
use crate::daemon::mqtt::spool::Message;
use crate::daemon::payload::{self, FrameResult, Picture, ResultPayload};
use crate::daemon::pipeline::MetricsPayload;
use crate::daemon::throttle::{more, Throttle};
use crate::detect::detector::Detector;
use crate::enroll::request::{EnrollRequest, EnrollStatus};
use crate::update::command::{excerpt, Checked, CommandAuth, MAX_COMMAND_BYTES};

/// The retained `status` payload.
#[derive(Debug, Clone, Serialize)]
pub struct StatusPayload {
    /// "online" or "offline".
    pub state: &'static str,
    pub device_id: String,
    pub version: &'static str,
    pub model: String,
    pub model_sha256: String,
    pub schedule: String,
    pub engine: String,
    /// The retrain bundle serving (`None`: the factory model). Follows swaps and rollbacks.
    pub bundle_version: Option<u64>,
    /// How frames are scored: `maeday`, or `ensemble (bank 3136 rows)` once enrolled.
    pub scorer: String,
    pub cameras: Vec<String>,
    /// Why offline: "shutdown" (clean stop) or "connection lost" (the Last Will).
    pub reason: Option<&'static str>,
}

/// Counters of the folder sink (`files` in the metrics).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FileStats {
    /// Result lines appended to `results.jsonl`.
    pub results: u64,
    /// Mask PNGs written.
    pub masks: u64,
    /// Heatmap overlay PNGs written (beside each mask, with `output.heatmap`).
    pub heatmaps: u64,
    /// Lines and PNGs the disk refused (full or failing): dropped.
    pub failed: u64,
}

/// What the sinks counted, for the final metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkStats {
    pub mqtt: Option<MqttStats>,
    pub files: Option<FileStats>,
}

/// A folder sink: `results.jsonl` (one JSON result per line),
/// `masks/<camera>-<boot>-<seq>.png` (the boot keeps a restart from overwriting the masks
/// of the run before) and, with `output.heatmap`, the same frames' heatmap overlays in
/// `heatmaps/` (only beside a mask: a picture per frame would fill the disk).
struct FileSink {
    dir: PathBuf,
    /// `results.jsonl`, opened on first use, and again after it could not be.
    lines: Option<File>,
    stats: FileStats,
    log: Throttle,
}

impl FileSink {
    /// Never fails: a folder that cannot be created now (a full disk) is tried again with
    /// every result.
    fn new(dir: PathBuf) -> FileSink {
        let mut f = FileSink {
            dir,
            lines: None,
            stats: FileStats::default(),
            log: Throttle::default(),
        };
        if let Err(e) = f.open() {
            log::error!("files.dir: {e:#}; trying again with every result");
        }
        f
    }

    fn open(&mut self) -> Result<&mut File> {
        if self.lines.is_none() {
            fs::create_dir_all(self.dir.join("masks"))
                .and_then(|()| fs::create_dir_all(self.dir.join("heatmaps")))
                .with_context(|| format!("cannot create output folder {}", self.dir.display()))?;
            let path = self.dir.join("results.jsonl");
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            self.lines = Some(file);
        }
        Ok(self.lines.as_mut().expect("opened above"))
    }

    /// Append one line whole or not at all: a partial write is cut off again, so the file
    /// stays one JSON document per line when the disk fills up.
    fn append(&mut self, line: &[u8]) -> Result<()> {
        let path = self.dir.join("results.jsonl");
        let f = self.open()?;
        let len = f.metadata().map(|m| m.len()).ok();
        if let Err(e) = f.write_all(line) {
            if let Some(len) = len {
                let _ = f.set_len(len);
            }
            return Err(e).with_context(|| format!("cannot append to {}", path.display()));
        }
        Ok(())
    }

    fn write(&mut self, p: &ResultPayload, mask: Option<&[u8]>, heatmap: Option<&[u8]>) {
        let mut line = match serde_json::to_vec(p) {
            Ok(l) => l,
            Err(e) => return self.failed(&anyhow::Error::new(e)),
        };
        line.push(b'\n');
        match self.append(&line) {
            Ok(()) => self.stats.results += 1,
            Err(e) => self.failed(&e),
        }
        if let Some(png) = mask {
            if self.write_picture("masks", p, png) {
                self.stats.masks += 1;
            }
            if let Some(png) = heatmap {
                if self.write_picture("heatmaps", p, png) {
                    self.stats.heatmaps += 1;
                }
            }
        }
    }

    /// `<folder>/<camera>-<boot>-<seq>.png`, whole or not at all; false (counted) if not.
    fn write_picture(&mut self, folder: &str, p: &ResultPayload, png: &[u8]) -> bool {
        let path = self
            .dir
            .join(folder)
            .join(format!("{}-{}-{}.png", p.camera, p.boot, p.seq));
        match write_whole(&path, png) {
            Ok(()) => true,
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn failed(&mut self, e: &anyhow::Error) {
        self.stats.failed += 1;
        if let Some(n) = self.log.ready() {
            log::warn!(
                "files.dir: {e:#}: dropped ({} dropped in all){}",
                self.stats.failed,
                more(n)
            );
        }
    }
}

/// Write a file, or leave none: a PNG cut short by a full disk is removed.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| {
        let _ = fs::remove_file(path);
        anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
    })
}

/// A mask or heatmap message that fits in a packet: as it is, made smaller, or none
/// (counted and logged by the MQTT sink).
fn fitted_picture(
    mqtt: &mut MqttSink,
    picture: &Picture,
    full: Option<Vec<u8>>,
    p: &ResultPayload,
    topic: String,
) -> Result<Option<Message>> {
    let (w, h) = picture.dimensions();
    let payload = match packet::fit_picture(picture, full, p, &topic, mqtt.max_packet_bytes())? {
        Fitted::AsIs(png) => png,
        Fitted::Shrunk {
            png,
            size,
            full_bytes,
        } => {
            mqtt.count_shrunk(
                &topic,
                &format!(
                    "{w}x{h} PNG of {full_bytes} bytes sent at {}x{} ({} bytes)",
                    size.0,
                    size.1,
                    png.len()
                ),
            );
            png
        }
        Fitted::TooLarge { full_bytes } => {
            mqtt.count_oversized(&topic, full_bytes);
            return Ok(None);
        }
    };
    Ok(Some(Message { topic, payload }))
}

pub struct Sinks {
    device_id: String,
    output: OutputConfig,
    console: bool,
    files: Option<FileSink>,
    mqtt: Option<MqttSink>,
    commands: Option<mpsc::Receiver<Received>>,
    /// To the bundle installer (chunks, rollback) and back (its status messages).
    installer: Option<(mpsc::Sender<InstallerInput>, mpsc::Receiver<Message>)>,
    /// `enroll` commands go to the inference thread, which captures the good frames.
    enroll: Option<mpsc::Sender<EnrollRequest>>,
    grace: Duration,
    last_mask: HashMap<String, Instant>,
    status: StatusPayload,
    /// Checks signed commands (with `[bundles]`: its trusted keys and state folder).
    auth: Option<CommandAuth>,
    allow_unsigned_enroll: bool,
}

/// Where a refused command is answered.
enum Refusal {
    Bundle(String),
    Enroll(String),
}

impl Sinks {
    pub fn open(
        config: &Config,
        detector: &Detector,
        bundle_version: Option<u64>,
        mqtt_url: Option<&str>,
        installer: Option<(mpsc::Sender<InstallerInput>, mpsc::Receiver<Message>)>,
    ) -> Result<Sinks> {
        let m = &detector.model.manifest;
        let status = StatusPayload {
            state: "online",
            device_id: config.device_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            model: m.name.clone(),
            model_sha256: m.graph_sha256.clone(),
            schedule: detector.schedule.id(),
            engine: detector.engine_description(),
            bundle_version,
            scorer: detector.scorer_description(),
            cameras: config.cameras.iter().map(|c| c.name.clone()).collect(),
            reason: None,
        };
        let base = format!("maeday/{}", config.device_id);
        let format = config.output.format;
        let mut subscriptions = vec![format!("{base}/command")];
        if let Some(b) = &config.bundles {
            subscriptions.push(format!("{base}/bundle/chunk"));
            for g in &b.groups {
                subscriptions.push(format!("maeday/fleet/{g}/bundle/chunk"));
            }
        }
        let (mut mqtt, mut commands) = (None, None);
        if let Some(cfg) = &config.mqtt {
            let offline = StatusPayload {
                state: "offline",
                reason: Some("connection lost"),
                ..status.clone()
            };
            let (tx, rx) = mpsc::channel();
            mqtt = Some(MqttSink::new(
                cfg,
                mqtt_url,
                &format!("maeday-{}", config.device_id),
                StatusMessages {
                    topic: format!("{base}/status"),
                    online: payload::encode(&status, format)?,
                    offline: payload::encode(&offline, format)?,
                },
                subscriptions,
                Some(tx),
            )?);
            commands = Some(rx);
            if let Some(m) = mqtt.as_mut() {
                m.clear_retained_on(vec![
                    format!("{base}/command"),
                    format!("{base}/bundle/chunk"),
                ]);
            }
        }
        let auth = match &config.bundles {
            Some(b) => {
                let keys = b
                    .trusted_keys
                    .iter()
                    .map(|p| crate::update::bundle::read_public_key(p))
                    .collect::<Result<Vec<_>>>()
                    .context("bundles.trusted_keys")?;
                Some(CommandAuth::open(&config.device_id, keys, &b.state_dir)?)
            }
            None => None,
        };
        Ok(Sinks {
            device_id: config.device_id.clone(),
            output: config.output.clone(),
            console: config.console,
            files: config.files.as_ref().map(|f| FileSink::new(f.dir.clone())),
            grace: config
                .mqtt
                .as_ref()
                .map_or(Duration::ZERO, |m| m.shutdown_grace()),
            mqtt,
            commands,
            installer,
            enroll: None,
            last_mask: HashMap::new(),
            status,
            auth,
            allow_unsigned_enroll: config
                .bundles
                .as_ref()
                .is_some_and(|b| b.allow_unsigned_enroll),
        })
    }

    pub fn has_mqtt(&self) -> bool {
        self.mqtt.is_some()
    }

    pub fn can_accept(&self) -> bool {
        self.mqtt.as_ref().is_none_or(|m| m.can_accept())
    }

    /// What the sinks have counted so far.
    pub fn stats(&self) -> SinkStats {
        SinkStats {
            mqtt: self.mqtt.as_ref().map(|m| m.stats()),
            files: self.files.as_ref().map(|f| f.stats),
        }
    }

    /// Whether this frame's mask goes out (policy and per-camera rate limit).
    fn wants_mask(&mut self, r: &FrameResult) -> bool {
        let p = &r.payload;
        let wanted = p.pixel_threshold.is_some()
            && match self.output.mask {
                MaskPolicy::Always => true,
                MaskPolicy::Anomalous => p.anomalous == Some(true),
                MaskPolicy::Never => false,
            };
        if !wanted {
            return false;
        }
        let now = Instant::now();
        if let Some(interval) = self.output.mask_interval() {
            if let Some(last) = self.last_mask.get(&p.camera) {
                if now.duration_since(*last) < interval {
                    return false;
                }
            }
        }
        self.last_mask.insert(p.camera.clone(), now);
        true
    }

    /// Hand one result to every sink.
    pub fn publish(&mut self, r: &mut FrameResult) -> Result<()> {
        if let Some(s) = r.serving.take() {
            self.serving_changed(s)?;
        }
        let mask = if self.wants_mask(r) {
            let t = r.payload.pixel_threshold.expect("wants_mask checks it");
            Some(payload::mask_picture(r, t))
        } else {
            None
        };
        r.payload.mask = mask.is_some();
        let mask_png = mask.as_ref().map(|m| m.png(&r.payload)).transpose()?;
        let heatmap = if self.output.heatmap {
            payload::heatmap_picture(r)
        } else {
            None
        };
        let p = &r.payload;
        if self.console {
            let verdict = match p.anomalous {
                Some(true) => "ANOMALOUS",
                Some(false) => "ok",
                None => "uncalibrated",
            };
            log::info!(
                "{} #{:<5} score {:.4} {verdict:<12} blobs {:<2} {:.0} ms (model {:.0} ms)",
                p.camera,
                p.seq,
                p.score,
                p.blobs.len(),
                p.latency_ms.total,
                p.latency_ms.inference
            );
        }
        // The folder keeps a heatmap only beside a mask; encoded once, for both sinks.
        let heatmap_png = match (&heatmap, &mask_png) {
            (Some(h), Some(_)) if self.files.is_some() => Some(h.png(p)?),
            _ => None,
        };
        if let Some(f) = self.files.as_mut() {
            f.write(p, mask_png.as_deref(), heatmap_png.as_deref());
        }
        if let Some(mqtt) = self.mqtt.as_mut() {
            let topic = |what: &str| format!("maeday/{}/{}/{what}", self.device_id, p.camera);
            // Pictures first: whether the mask fits decides the result's `mask` field.
            let mask_msg = match &mask {
                Some(pic) => fitted_picture(mqtt, pic, mask_png, p, topic("mask"))?,
                None => None,
            };
            let heatmap_msg = match &heatmap {
                Some(pic) => fitted_picture(mqtt, pic, heatmap_png, p, topic("heatmap"))?,
                None => None,
            };
            let sent;
            let p = if p.mask && mask_msg.is_none() {
                sent = ResultPayload {
                    mask: false,
                    ..p.clone()
                };
                &sent
            } else {
                p
            };
            let result_topic = topic("result");
            let max = mqtt.max_packet_bytes();
            let mut msgs = Vec::with_capacity(3);
            match packet::fit_result(p, self.output.format, &result_topic, max)? {
                Some((payload, left_out)) => {
                    if left_out > 0 {
                        mqtt.count_shrunk(
                            &result_topic,
                            &format!("result sent without its {left_out} weakest blob(s)"),
                        );
                    }
                    msgs.push(Message {
                        topic: result_topic,
                        payload,
                    });
                }
                None => {
                    let len = payload::encode(p, self.output.format)?.len();
                    mqtt.count_oversized(&result_topic, len);
                }
            }
            msgs.extend(mask_msg);
            msgs.extend(heatmap_msg);
            mqtt.submit(msgs)?;
        }
        Ok(())
    }

    /// Where `enroll` commands go (the inference thread).
    pub fn set_enroll(&mut self, tx: mpsc::Sender<EnrollRequest>) {
        self.enroll = Some(tx);
    }

    /// Drive MQTT for a moment; true when a `metrics` command arrived.
    pub fn poll(&mut self, wait: Duration) -> Result<bool> {
        match self.mqtt.as_mut() {
            Some(mqtt) => mqtt.poll(wait)?,
            None => return Ok(false),
        }
        let mut asked = false;
        let mut refused = Vec::new();
        let received: Vec<Received> = match &self.commands {
            Some(rx) => rx.try_iter().collect(),
            None => Vec::new(),
        };
        for msg in received {
            if msg.topic.ends_with("/bundle/chunk") {
                self.to_installer(&msg.topic, InstallerInput::Chunk(msg.payload));
                continue;
            }
            if let Some(r) = self.command(&msg, &mut asked) {
                refused.push(r);
            }
        }
        let mqtt = self.mqtt.as_mut().expect("checked above");
        // A refused command is answered where its verdict would have come.
        for r in refused {
            let (topic, payload) = match r {
                Refusal::Enroll(detail) => (
                    enroll_status_topic(&self.device_id),
                    payload::encode(
                        &EnrollStatus {
                            state: "rejected",
                            detail: Some(detail),
                            ..Default::default()
                        },
                        self.output.format,
                    )?,
                ),
                Refusal::Bundle(detail) => (
                    format!("maeday/{}/bundle/status", self.device_id),
                    payload::encode(
                        &BundleStatus {
                            state: "rejected",
                            reason: Some("unauthorized"),
                            detail: Some(detail),
                            ..Default::default()
                        },
                        self.output.format,
                    )?,
                ),
            };
            mqtt.publish_transient(&topic, payload, false);
        }
        if let Some((_, rx)) = &self.installer {
            for m in rx.try_iter() {
                mqtt.publish_transient(&m.topic, m.payload, false);
            }
        }
        Ok(asked)
    }

    fn to_installer(&self, topic: &str, input: InstallerInput) {
        match &self.installer {
            Some((tx, _)) => {
                let _ = tx.send(input);
            }
            None => log::warn!("{topic}: bundles are not enabled (no [bundles])"),
        }
    }

    /// Run one message of the command topic, or say why not. `metrics` is open to anyone;
    /// `rollback` and `enroll` change what serves and must be signed (`bundle::command`),
    /// `enroll` unsigned only with `bundles.allow_unsigned_enroll`.
    fn command(&mut self, msg: &Received, asked: &mut bool) -> Option<Refusal> {
        if msg.payload.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let checked = match self.auth.as_mut() {
            Some(a) => a.check(&msg.payload),
            None if msg.payload.len() > MAX_COMMAND_BYTES => Checked::Refused {
                command: None,
                why: format!("command of {} bytes", msg.payload.len()),
            },
            None => Checked::Unsigned(String::from_utf8_lossy(&msg.payload).trim().to_string()),
        };
        let (text, signed) = match checked {
            Checked::Unsigned(t) => (t, false),
            Checked::Signed(t) => (t, true),
            Checked::Refused { command, why } => {
                log::warn!(
                    "command refused on {}: {why} ({})",
                    msg.topic,
                    excerpt(&msg.payload, 200)
                );
                let why = format!("refused: {why}");
                return Some(match command {
                    Some(c) if c.starts_with("enroll") => Refusal::Enroll(why),
                    _ => Refusal::Bundle(why),
                });
            }
        };
        let mut words = text.split_whitespace();
        let unsigned = |what: &str| {
            let why = format!(
                "unauthorized: {what} changes the serving model and must be signed by a trusted \
                 key (maeday-edge bundle command)"
            );
            log::warn!("{}: unsigned {what} refused", msg.topic);
            why
        };
        match words.next() {
            Some("metrics") => *asked = true,
            Some("rollback") if !signed => return Some(Refusal::Bundle(unsigned("rollback"))),
            Some("rollback") => self.to_installer(&msg.topic, InstallerInput::Rollback),
            Some("enroll") if !signed && !self.allow_unsigned_enroll => {
                return Some(Refusal::Enroll(unsigned("enroll")))
            }
            Some("enroll") => {
                let args: Vec<&str> = words.collect();
                if let Err(why) = self.enroll_command(&args) {
                    log::warn!("{}: {why}", msg.topic);
                    return Some(Refusal::Enroll(why));
                }
            }
            _ => log::warn!(
                "unknown command {:?} on {} (known: metrics, rollback, enroll [frames] [camera])",
                excerpt(text.as_bytes(), 200),
                msg.topic
            ),
        }
        None
    }

    /// Pass an `enroll [frames] [camera]` command to the inference thread, or say why not.
    fn enroll_command(&self, args: &[&str]) -> std::result::Result<(), String> {
        let req = EnrollRequest::parse(args).map_err(|e| format!("{e:#}"))?;
        if let Some(c) = req
            .camera
            .as_ref()
            .filter(|c| !self.status.cameras.contains(c))
        {
            return Err(format!(
                "enroll: no camera {c:?} (cameras: {:?})",
                self.status.cameras
            ));
        }
        match (&self.enroll, &self.installer) {
            (Some(tx), Some(_)) => tx
                .send(req)
                .map_err(|_| "enroll: the inference thread has stopped".to_string()),
            _ => {
                Err("enroll: enrollment installs into a model slot and needs [bundles]".to_string())
            }
        }
    }

    pub fn metrics(&mut self, m: &MetricsPayload) -> Result<()> {
        if self.console {
            let l = &m.latency_ms;
            log::info!(
                "metrics: {:.2} fps, model p50 {:.0} ms, end-to-end p50 {:.0} / p95 {:.0} ms, overhead {:.1}% of model, dropped {}, corrupt {}{}{}",
                m.fps,
                l.inference.p50,
                l.end_to_end.p50,
                l.end_to_end.p95,
                100.0 * m.overhead_fraction,
                m.cameras.iter().map(|c| c.dropped).sum::<u64>(),
                m.cameras.iter().map(|c| c.corrupt).sum::<u64>(),
                m.mqtt.map(|q| format!(
                    ", MQTT {} (spool {}{}{}{})",
                    if q.connected { "up" } else { "down" },
                    q.spool_messages,
                    if q.spool_on_disk { "" } else { " in memory" },
                    if q.spool_dropped + q.spool_failed > 0 {
                        format!(", dropped {} oldest, lost {}", q.spool_dropped, q.spool_failed)
                    } else {
                        String::new()
                    },
                    if q.oversized_shrunk + q.oversized_dropped > 0 {
                        format!(", oversized: {} shrunk, {} dropped", q.oversized_shrunk, q.oversized_dropped)
                    } else {
                        String::new()
                    },
                )).unwrap_or_default(),
                m.files.filter(|f| f.failed > 0).map(|f| format!(", files dropped {}", f.failed)).unwrap_or_default()
            );
        }
        let topic = format!("maeday/{}/metrics", self.device_id);
        let payload = payload::encode(m, self.output.format)?;
        if let Some(q) = self.mqtt.as_mut() {
            q.publish_transient(&topic, payload, false);
        }
        Ok(())
    }

    /// A bundle swap or rollback: the retained status (and the Last Will of the next
    /// connection) names the model now serving.
    fn serving_changed(&mut self, s: crate::daemon::payload::ServingModel) -> Result<()> {
        self.status.model = s.name;
        self.status.model_sha256 = s.sha256;
        self.status.schedule = s.schedule;
        self.status.engine = s.engine;
        self.status.bundle_version = s.bundle_version;
        self.status.scorer = s.scorer;
        if let Some(q) = self.mqtt.as_mut() {
            let offline = StatusPayload {
                state: "offline",
                reason: Some("connection lost"),
                ..self.status.clone()
            };
            q.set_status(
                payload::encode(&self.status, self.output.format)?,
                payload::encode(&offline, self.output.format)?,
            );
        }
        Ok(())
    }

    /// Flush everything; MQTT gets its grace period, then says offline.
    pub fn close(mut self) -> Result<SinkStats> {
        let files = self.stats().files;
        // Stop the installer (it ends when its input closes).
        self.installer = None;
        let Some(mut m) = self.mqtt.take() else {
            return Ok(SinkStats { mqtt: None, files });
        };
        // A clean stop replaces the Last Will's reason with "shutdown".
        m.set_offline_reason(payload::encode(
            &StatusPayload {
                state: "offline",
                reason: Some("shutdown"),
                ..self.status.clone()
            },
            self.output.format,
        )?);
        Ok(SinkStats {
            mqtt: Some(m.shutdown(self.grace)?),
            files,
        })
    }
}
