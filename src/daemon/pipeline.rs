//! The daemon's frame pipeline: capture -> inference -> sinks, each on its own thread(s).
//!
//! ```text
//!  camera 0 ─capture─▶ [slot] ─┐
//!  camera 1 ─capture─▶ [slot] ─┼─▶ inference (one model) ─▶ [bounded queue] ─▶ sinks
//!                              ┘                                             (console,
//!                                                                              files, MQTT)
//! ```
//! - Each camera has a one-frame slot where the newest frame wins: when inference is
//!   slower than the camera, the older waiting frame is dropped and counted, so capture
//!   never blocks (a camera that is not read loses frames in the driver, and latency grows).
//!   A replay without a frame rate instead waits for the slot, so every frame is scored.
//! - Results are never dropped: the result queue is bounded and inference waits for the
//!   sinks; the MQTT sink spools to disk when the broker is away.
//! - SIGTERM/SIGINT (or `--max-frames`) set the stop flag: capture stops, the frame in
//!   flight is finished and published, the sinks flush, the spool keeps what is left.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use heapless::HistoryBuf;
use image::{DynamicImage, RgbImage};
use serde::Serialize;

use crate::bank::store::Shot;
use crate::config::{roi_fits, Config};
use crate::daemon::installer::{Installer, InstallerInput, InstallerSettings, Slots, Swap};
use crate::daemon::outputs::Sinks;
use crate::daemon::payload::{self, FrameResult, LatencyMs, ResultPayload};
use crate::daemon::source::{self, Next};
use crate::daemon::watchdog::{self, Liveness};
use crate::detect::detector::{Detector, DetectorOptions};
use crate::detect::engine::EngineOptions;
use crate::enroll::request::{EnrollJob, EnrollRequest};
use crate::eval::roc::quantile;
use crate::model::bundled::default_model_dir;
use crate::model::manifest::Model;
use crate::update::bundle::read_public_key;

/// A captured frame waiting for inference.
pub struct Frame {
    pub camera: usize,
    pub seq: u64,
    pub captured: SystemTime,
    pub captured_at: Instant,
    pub image: RgbImage,
}

/// One newest-frame-wins slot per camera.
pub struct FrameSlots {
    state: Mutex<SlotState>,
    changed: Condvar,
}

struct SlotState {
    frames: Vec<Option<Frame>>,
    open: Vec<bool>,
    dropped: Vec<u64>,
}

const WAKE: Duration = Duration::from_millis(50);

impl FrameSlots {
    pub fn new(cameras: usize) -> FrameSlots {
        FrameSlots {
            state: Mutex::new(SlotState {
                frames: (0..cameras).map(|_| None).collect(),
                open: vec![true; cameras],
                dropped: vec![0; cameras],
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // A panicking thread cannot leave the slots inconsistent: every update is one store.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Put a frame in its camera's slot, replacing (and counting) a frame still waiting.
    pub fn offer(&self, frame: Frame) {
        let mut s = self.lock();
        let cam = frame.camera;
        if s.frames[cam].replace(frame).is_some() {
            s.dropped[cam] += 1;
        }
        self.changed.notify_all();
    }

    /// Wait until the camera's slot is free (replays that score every frame read their
    /// next frame only then, so its capture time is when it could enter the pipeline).
    /// Returns false when stopped first.
    pub fn wait_free(&self, camera: usize, stop: &AtomicBool) -> bool {
        let mut s = self.lock();
        while s.frames[camera].is_some() {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, WAKE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// The camera will send no more frames.
    pub fn close(&self, camera: usize) {
        self.lock().open[camera] = false;
        self.changed.notify_all();
    }

    /// The frame that has waited longest; `None` once every camera is closed and drained,
    /// or when stopping.
    pub fn take(&self, stop: &AtomicBool) -> Option<Frame> {
        let mut s = self.lock();
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let oldest = (0..s.frames.len())
                .filter(|&i| s.frames[i].is_some())
                .min_by_key(|&i| s.frames[i].as_ref().map(|f| f.captured_at));
            if let Some(i) = oldest {
                let f = s.frames[i].take();
                self.changed.notify_all();
                return f;
            }
            if s.open.iter().all(|o| !o) {
                return None;
            }
            s = self
                .changed
                .wait_timeout(s, WAKE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn waiting(&self) -> usize {
        self.lock().frames.iter().filter(|f| f.is_some()).count()
    }

    pub fn dropped(&self) -> Vec<u64> {
        self.lock().dropped.clone()
    }
}

/// Recent latencies of one stage, in milliseconds.
type Ring = HistoryBuf<f32, 512>;

/// p50 and p95 of a stage over the recent frames, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f32,
    pub p95: f32,
}

fn percentiles(r: &Ring) -> Percentiles {
    let mut v: Vec<f32> = r.oldest_ordered().copied().collect();
    Percentiles {
        p50: quantile(&mut v, 0.5).unwrap_or(0.0),
        p95: quantile(&mut v, 0.95).unwrap_or(0.0),
    }
}

#[derive(Default)]
struct Rings {
    queue: Ring,
    preprocess: Ring,
    inference: Ring,
    scoring: Ring,
    /// Result ready -> handed to every sink (encoding, PNGs, spool or client).
    publish: Ring,
    /// Capture -> handed to every sink.
    end_to_end: Ring,
    /// End to end minus inference: what the runtime adds to the model.
    overhead: Ring,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CameraStats {
    pub name: String,
    pub source: String,
    /// Frames delivered by the source (including corrupt ones).
    pub captured: u64,
    pub scored: u64,
    /// Dropped because a newer frame arrived before inference took this one.
    pub dropped: u64,
    /// Truncated or corrupt frames, skipped.
    pub corrupt: u64,
    /// Frames whose inference failed (logged), skipped.
    pub failed: u64,
}

/// Counters and latencies shared by the pipeline threads.
pub struct Stats {
    started: Instant,
    cameras: Mutex<Vec<CameraStats>>,
    rings: Mutex<Rings>,
    results_waiting: AtomicU64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StageLatency {
    pub queue: Percentiles,
    pub preprocess: Percentiles,
    pub inference: Percentiles,
    pub scoring: Percentiles,
    pub publish: Percentiles,
    pub end_to_end: Percentiles,
    pub overhead: Percentiles,
}

/// The `metrics` payload (and the summary `run` prints at exit).
#[derive(Debug, Clone, Serialize)]
pub struct MetricsPayload {
    pub device_id: String,
    pub uptime_s: f64,
    /// Frames scored per second since start.
    pub fps: f64,
    pub cameras: Vec<CameraStats>,
    /// Milliseconds, over the last 512 frames.
    pub latency_ms: StageLatency,
    /// `overhead.p50 / inference.p50`.
    pub overhead_fraction: f64,
    pub queues: QueueDepths,
    pub mqtt: Option<crate::daemon::mqtt::link::MqttStats>,
    /// The folder sink (`files.dir`), if any.
    pub files: Option<crate::daemon::outputs::FileStats>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueueDepths {
    /// Frames waiting in the newest-frame slots.
    pub frames_waiting: usize,
    /// Results waiting for the sinks.
    pub results_waiting: u64,
}

impl Stats {
    fn new(cameras: Vec<CameraStats>) -> Stats {
        Stats {
            started: Instant::now(),
            cameras: Mutex::new(cameras),
            rings: Mutex::new(Rings::default()),
            results_waiting: AtomicU64::new(0),
        }
    }

    fn camera<R>(&self, i: usize, f: impl FnOnce(&mut CameraStats) -> R) -> R {
        f(&mut self.cameras.lock().unwrap_or_else(|e| e.into_inner())[i])
    }

    fn rings<R>(&self, f: impl FnOnce(&mut Rings) -> R) -> R {
        f(&mut self.rings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Called by the sink thread once a result has been handed to every sink.
    pub fn published(&self, ready: Instant, captured_at: Instant, inference_ms: f64) {
        let now = Instant::now();
        let e2e = (now - captured_at).as_secs_f64() * 1e3;
        self.rings(|r| {
            r.publish.write(((now - ready).as_secs_f64() * 1e3) as f32);
            r.end_to_end.write(e2e as f32);
            r.overhead.write((e2e - inference_ms).max(0.0) as f32);
        });
        self.results_waiting.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn snapshot(
        &self,
        device_id: &str,
        slots: &FrameSlots,
        sinks: crate::daemon::outputs::SinkStats,
    ) -> MetricsPayload {
        let mut cameras = self
            .cameras
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (c, d) in cameras.iter_mut().zip(slots.dropped()) {
            c.dropped = d;
        }
        let latency = self.rings(|r| StageLatency {
            queue: percentiles(&r.queue),
            preprocess: percentiles(&r.preprocess),
            inference: percentiles(&r.inference),
            scoring: percentiles(&r.scoring),
            publish: percentiles(&r.publish),
            end_to_end: percentiles(&r.end_to_end),
            overhead: percentiles(&r.overhead),
        });
        let uptime = self.started.elapsed().as_secs_f64();
        let scored: u64 = cameras.iter().map(|c| c.scored).sum();
        MetricsPayload {
            device_id: device_id.to_string(),
            uptime_s: uptime,
            fps: scored as f64 / uptime.max(1e-9),
            overhead_fraction: if latency.inference.p50 > 0.0 {
                (latency.overhead.p50 / latency.inference.p50) as f64
            } else {
                0.0
            },
            cameras,
            latency_ms: latency,
            queues: QueueDepths {
                frames_waiting: slots.waiting(),
                results_waiting: self.results_waiting.load(Ordering::Relaxed),
            },
            mqtt: sinks.mqtt,
            files: sinks.files,
        }
    }
}

/// What `run` takes besides the config file.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Overrides `mqtt.url`.
    pub mqtt_url: Option<String>,
    /// Stop cleanly after this many scored frames (all cameras together).
    pub max_frames: Option<u64>,
    /// Set by SIGTERM/SIGINT (or a test) to stop cleanly.
    pub stop: Arc<AtomicBool>,
}

fn roi_of(frame: &RgbImage, roi: Option<[u32; 4]>) -> Result<[u32; 4]> {
    let (w, h) = frame.dimensions();
    let roi = roi.unwrap_or([0, 0, w, h]);
    // The capture thread counts frames that do not hold the ROI as corrupt: none gets here.
    anyhow::ensure!(
        roi_fits(roi, w, h),
        "roi {roi:?} does not fit the {w}x{h} frame"
    );
    Ok(roi)
}

fn capture_loop(
    mut src: Box<dyn source::FrameSource>,
    camera: usize,
    roi: Option<[u32; 4]>,
    slots: Arc<FrameSlots>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) {
    let every = src.wants_every_frame();
    let mut seq = 0u64;
    // Frame sizes already reported as not holding the ROI: one log line per size (for the
    // first 16 sizes), not one per frame.
    let mut roi_misfits: Vec<(u32, u32)> = Vec::new();
    loop {
        if every && !slots.wait_free(camera, &stop) {
            break;
        }
        let next = src.next_frame();
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let (Next::Frame(image), Some(r)) = (&next, roi) {
            if !roi_fits(r, image.width(), image.height()) {
                seq += 1;
                stats.camera(camera, |c| {
                    c.captured += 1;
                    c.corrupt += 1;
                });
                let size = image.dimensions();
                if roi_misfits.len() < 16 && !roi_misfits.contains(&size) {
                    roi_misfits.push(size);
                    log::error!(
                        "{}: frame {seq}: roi {r:?} does not fit the {}x{} frame: frames of this \
                         size are counted as corrupt (logged once)",
                        src.describe(),
                        size.0,
                        size.1
                    );
                }
                continue;
            }
        }
        match next {
            Next::Frame(image) => {
                seq += 1;
                stats.camera(camera, |c| c.captured += 1);
                let frame = Frame {
                    camera,
                    seq,
                    captured: SystemTime::now(),
                    captured_at: Instant::now(),
                    image,
                };
                // With `every`, the slot is free: nothing is replaced.
                slots.offer(frame);
            }
            Next::Corrupt(e) => {
                seq += 1;
                stats.camera(camera, |c| {
                    c.captured += 1;
                    c.corrupt += 1;
                });
                log::warn!("{}: frame {seq} skipped: {e:#}", src.describe());
            }
            Next::End => break,
        }
    }
    slots.close(camera);
}

/// The inference thread's side of enrollment: commands in, captured frames out.
struct EnrollLink {
    requests: Receiver<EnrollRequest>,
    installer: mpsc::Sender<InstallerInput>,
}

/// Run the daemon until the sources end, `max_frames` are scored, or `stop` is set.
/// Returns the final metrics.
pub fn run(config: Config, opts: RunOptions) -> Result<MetricsPayload> {
    // rustls needs one process-wide crypto provider; ring cross-compiles without cmake.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let stop = opts.stop.clone();

    let factory = config.model.path.clone().unwrap_or_else(default_model_dir);
    // With bundles, the installed (active) slot serves, if it is usable.
    let model_slots = match &config.bundles {
        Some(b) => Some(Slots::open(&b.state_dir)?),
        None => None,
    };
    let model_dir = model_slots
        .as_ref()
        .map_or(factory.clone(), |s| s.startup_model(&factory));
    let bundle_version = model_slots.as_ref().and_then(|s| s.version_of(&model_dir));
    let model = Model::open(&model_dir)?;
    let mut engine = EngineOptions {
        precision: config.model.precision.into(),
        backend: config.model.backend(),
        ..Default::default()
    };
    if let Some(t) = config.model.threads {
        engine.threads = t;
    }
    let detector_options = DetectorOptions {
        fit: config.cameras[0].fit(),
        engine,
        masks: config.model.masks,
        scorer: config.model.scorer,
        extractor: config.model.extractor.clone(),
        // The config's bank serves a model folder without a bank of its own.
        banks: match &config.model.bank {
            Some(b) if !model_dir.join("bank").join("bank.toml").is_file() => vec![b.clone()],
            _ => Vec::new(),
        },
        ..Default::default()
    };
    let mut detector = Detector::new(model.clone(), &detector_options)?;

    // Which start this is, recorded where results outlive the process, before the first
    // result: `(camera, boot, seq)` names a frame across restarts.
    let persistent: Vec<&std::path::Path> = (config.mqtt.iter().map(|m| m.spool.dir.as_path()))
        .chain(config.files.iter().map(|f| f.dir.as_path()))
        .collect();
    let boot = crate::daemon::boot::next(&persistent);
    log::info!("boot {boot}");

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

    let mut sources = Vec::new();
    let mut camera_stats = Vec::new();
    for cam in &config.cameras {
        let src = source::open(&cam.source, &config.pipeline, stop.clone())
            .with_context(|| format!("camera {:?}", cam.name))?;
        log::info!("camera {:?}: {}", cam.name, src.describe());
        camera_stats.push(CameraStats {
            name: cam.name.clone(),
            source: src.describe(),
            ..Default::default()
        });
        sources.push(src);
    }
    let stats = Arc::new(Stats::new(camera_stats));
    let slots = Arc::new(FrameSlots::new(config.cameras.len()));
    let liveness = Arc::new(Liveness::default());
    liveness.sink_alive();

    // The installer: its own thread, fed chunks and commands by the sink thread, reporting
    // through it, handing loaded detectors to the inference thread.
    let (swap_tx, swap_rx) = mpsc::channel::<Swap>();
    let mut bundle_link = None;
    let mut enroll_link = None;
    let mut installer_thread = None;
    if let (Some(b), Some(model_slots)) = (&config.bundles, model_slots) {
        let trusted = b
            .trusted_keys
            .iter()
            .map(|p| read_public_key(p))
            .collect::<Result<Vec<_>>>()
            .context("bundles.trusted_keys")?;
        let settings = InstallerSettings {
            device_id: config.device_id.clone(),
            groups: b.groups.clone(),
            trusted,
            max_bundle_bytes: b.max_bundle_bytes,
            limits: crate::update::transfer::Limits {
                max_chunk_bytes: b.max_chunk_bytes,
                max_bundle_bytes: b.max_bundle_bytes,
                max_transfers: b.max_transfers,
                expiry: std::time::Duration::from_secs(b.transfer_expiry_s),
                max_incoming_bytes: b.max_incoming_bytes,
            },
            state_dir: b.state_dir.clone(),
            serving: detector_options.clone(),
            factory: factory.clone(),
            format: config.output.format,
            enroll: config.enroll.settings()?,
        };
        let (out_tx, out_rx) = mpsc::channel();
        let (in_tx, in_rx) = mpsc::channel::<InstallerInput>();
        let installer = Installer::new(settings, model_slots, model, out_tx, swap_tx.clone())?;
        installer_thread = Some(
            std::thread::Builder::new()
                .name("installer".into())
                .spawn(move || installer.run(in_rx))?,
        );
        enroll_link = Some(in_tx.clone());
        bundle_link = Some((in_tx, out_rx));
    }
    drop(swap_tx);

    let mut sinks = Sinks::open(
        &config,
        &detector,
        bundle_version,
        opts.mqtt_url.as_deref(),
        bundle_link,
    )?;
    // `enroll` commands: sinks -> inference thread (captures the frames) -> installer.
    let enroll = enroll_link.map(|installer| {
        let (tx, rx) = mpsc::channel();
        sinks.set_enroll(tx);
        EnrollLink {
            requests: rx,
            installer,
        }
    });
    let (result_tx, result_rx) =
        mpsc::sync_channel::<(FrameResult, Instant, Instant)>(config.pipeline.result_queue);
    let sink_thread = {
        let (stats, slots) = (stats.clone(), slots.clone());
        let device = config.device_id.clone();
        let interval = config.output.metrics_interval();
        let liveness = liveness.clone();
        std::thread::Builder::new()
            .name("sinks".into())
            .spawn(move || {
                sink_loop(sinks, result_rx, stats, slots, &liveness, &device, interval)
            })?
    };

    let mut captures: Vec<JoinHandle<()>> = Vec::new();
    for (i, src) in sources.into_iter().enumerate() {
        let (slots, stats, stop) = (slots.clone(), stats.clone(), stop.clone());
        let roi = config.cameras[i].roi;
        captures.push(
            std::thread::Builder::new()
                .name(format!("capture-{i}"))
                .spawn(move || capture_loop(src, i, roi, slots, stats, stop))?,
        );
    }

    let watchdog_thread = watchdog::start(liveness.clone(), stop.clone());
    watchdog::ready(&format!(
        "serving {} on {} camera(s)",
        detector.model.manifest.name,
        config.cameras.len()
    ));
    let result = inference_loop(
        &config,
        &opts,
        boot,
        &mut detector,
        &swap_rx,
        enroll.as_ref(),
        &slots,
        &stats,
        &liveness,
        &result_tx,
    );
    // The installer ends when its last input sender is gone: this one, then the sinks'.
    drop(enroll);
    // Whatever happened, stop capture and let the sinks drain and flush.
    watchdog::stopping();
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = watchdog_thread {
        let _ = t.join();
    }
    drop(result_tx);
    for c in captures {
        let _ = c.join();
    }
    let sink_stats = sink_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the sink thread panicked"))??;
    // The sink thread held the installer's input: it ends once that is gone. An install
    // that is still loading is abandoned (nothing was persisted for it yet, or all of it).
    drop(swap_rx);
    if let Some(t) = installer_thread {
        let _ = t.join();
    }
    result?;
    Ok(stats.snapshot(&config.device_id, &slots, sink_stats))
}

#[allow(clippy::too_many_arguments)]
fn inference_loop(
    config: &Config,
    opts: &RunOptions,
    boot: u64,
    detector: &mut Detector,
    swaps: &Receiver<Swap>,
    enroll: Option<&EnrollLink>,
    slots: &FrameSlots,
    stats: &Stats,
    liveness: &Liveness,
    results: &SyncSender<(FrameResult, Instant, Instant)>,
) -> Result<()> {
    let mut sha = detector.model.manifest.graph_sha256.clone();
    let mut schedule = detector.schedule.id();
    let mut scored = 0u64;
    let mut serving = None;
    // An enrollment in progress: the camera, the frames wanted, the frames captured.
    let mut capturing: Option<(usize, usize, Vec<Shot>)> = None;
    if opts.max_frames == Some(0) {
        // `--max-frames 0`: score nothing, only deliver what the spool holds.
        return Ok(());
    }
    while let Some(frame) = slots.take(&opts.stop) {
        // A new model from the installer: switch between two frames.
        while let Ok(swap) = swaps.try_recv() {
            *detector = swap.detector;
            sha = detector.model.manifest.graph_sha256.clone();
            schedule = detector.schedule.id();
            serving = Some(payload::ServingModel {
                name: detector.model.manifest.name.clone(),
                sha256: sha.clone(),
                schedule: schedule.clone(),
                engine: detector.engine_description(),
                bundle_version: swap.version,
                scorer: detector.scorer_description(),
            });
            log::info!(
                "now serving {} ({}, {}, scorer {})",
                swap.version
                    .map_or("the factory model".to_string(), |v| format!("bundle v{v}")),
                detector.model.dir.display(),
                schedule,
                detector.scorer_description()
            );
        }
        if let Some(link) = enroll {
            while let Ok(req) = link.requests.try_recv() {
                let cam = req
                    .camera
                    .as_ref()
                    .and_then(|name| config.cameras.iter().position(|c| &c.name == name))
                    .unwrap_or(0);
                let want = req.frames.unwrap_or(config.enroll.frames);
                if capturing.is_some() {
                    log::warn!("enroll: a new request replaces the one still capturing");
                }
                log::info!(
                    "enroll: capturing {want} good frame(s) from camera {:?}",
                    config.cameras[cam].name
                );
                capturing = Some((cam, want, Vec::new()));
            }
        }
        let Frame {
            camera,
            seq,
            captured,
            captured_at,
            image,
        } = frame;
        let cam = &config.cameras[camera];
        let start = Instant::now();
        let queue_ms = (start - captured_at).as_secs_f64() * 1e3;
        let frame_size = [image.width(), image.height()];
        liveness.inference_started();
        crate::faults::inference_stall(seq);
        // The frame is ours: score it (or its ROI crop) without copying it again, and keep
        // the pixels only when a heatmap wants them.
        let attempt = (|| -> Result<_> {
            detector.set_fit(cam.fit())?;
            let roi = roi_of(&image, cam.roi)?;
            let crop = if roi == [0, 0, frame_size[0], frame_size[1]] {
                image
            } else {
                image::imageops::crop_imm(&image, roi[0], roi[1], roi[2], roi[3]).to_image()
            };
            let crop = DynamicImage::ImageRgb8(crop);
            let det = detector.detect(&crop)?;
            Ok((roi, crop, det))
        })();
        liveness.inference_done();
        let (roi, crop, det) = match attempt {
            Ok(v) => v,
            Err(e) => {
                stats.camera(camera, |c| c.failed += 1);
                log::error!("camera {:?} frame {seq}: {e:#}", cam.name);
                continue;
            }
        };
        let thresholds = cam.thresholds.or(detector.thresholds());
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let ready = Instant::now();
        let latency = LatencyMs {
            queue: queue_ms,
            preprocess: ms(det.times.preprocess),
            inference: ms(det.times.inference),
            scoring: ms(det.times.scoring),
            total: ms(ready - captured_at),
        };
        stats.rings(|r| {
            r.queue.write(latency.queue as f32);
            r.preprocess.write(latency.preprocess as f32);
            r.inference.write(latency.inference as f32);
            r.scoring.write(latency.scoring as f32);
        });
        stats.camera(camera, |c| c.scored += 1);
        let payload = ResultPayload {
            device_id: config.device_id.clone(),
            camera: cam.name.clone(),
            boot,
            seq,
            captured_unix_ms: payload::unix_ms(captured),
            score: det.score,
            image_threshold: thresholds.map(|t| t.image),
            pixel_threshold: thresholds.map(|t| t.pixel),
            anomalous: thresholds.map(|t| det.score > t.image),
            blobs: thresholds
                .map(|t| payload::blobs(&det.map, t.pixel, roi))
                .unwrap_or_default(),
            frame_size,
            roi,
            mask: false,
            latency_ms: latency,
            model_sha256: sha.clone(),
            schedule: schedule.clone(),
            windows: det.windows,
            scorer: detector.scorer().to_string(),
        };
        if let (Some((cam_i, want, shots)), Some(link)) = (capturing.as_mut(), enroll) {
            if *cam_i == camera {
                shots.push(Shot {
                    name: format!("{}/{seq}", cam.name),
                    image: crop.clone(),
                });
                if shots.len() >= *want {
                    let shots = std::mem::take(shots);
                    capturing = None;
                    log::info!(
                        "enroll: {} good frame(s) captured, building the bank",
                        shots.len()
                    );
                    let job = EnrollJob {
                        camera: cam.name.clone(),
                        fit: cam.fit(),
                        shots,
                    };
                    if link.installer.send(InstallerInput::Enroll(job)).is_err() {
                        log::error!("enroll: the installer has stopped");
                    }
                }
            }
        }
        let result = FrameResult {
            payload,
            map: det.map,
            roi_image: config.output.heatmap.then(|| crop.into_rgb8()),
            serving: serving.take(),
        };
        stats.results_waiting.fetch_add(1, Ordering::Relaxed);
        if results.send((result, ready, captured_at)).is_err() {
            anyhow::bail!("the sink thread stopped early");
        }
        scored += 1;
        if opts.max_frames.is_some_and(|m| scored >= m) {
            log::info!("{scored} frames scored (--max-frames): stopping");
            break;
        }
    }
    Ok(())
}

fn sink_loop(
    mut sinks: Sinks,
    results: Receiver<(FrameResult, Instant, Instant)>,
    stats: Arc<Stats>,
    slots: Arc<FrameSlots>,
    liveness: &Liveness,
    device_id: &str,
    interval: Option<Duration>,
) -> Result<crate::daemon::outputs::SinkStats> {
    let mut next_metrics = interval.map(|i| Instant::now() + i);
    loop {
        liveness.sink_alive();
        let wait = if sinks.has_mqtt() {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(100)
        };
        if sinks.can_accept() {
            match results.recv_timeout(wait) {
                Ok((mut r, ready, captured_at)) => {
                    sinks.publish(&mut r)?;
                    stats.published(ready, captured_at, r.payload.latency_ms.inference);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let metrics_asked = sinks.poll(Duration::from_millis(5))?;
        let due = next_metrics.is_some_and(|t| Instant::now() >= t);
        if due || metrics_asked {
            let m = stats.snapshot(device_id, &slots, sinks.stats());
            sinks.metrics(&m)?;
            if let (Some(i), true) = (interval, due) {
                next_metrics = Some(Instant::now() + i);
            }
        }
    }
    sinks.close()
}

/// Print the final metrics as one JSON line (what `run` ends with).
pub fn summary_line(m: &MetricsPayload) -> String {
    serde_json::to_string(m).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(camera: usize, seq: u64) -> Frame {
        Frame {
            camera,
            seq,
            captured: SystemTime::now(),
            captured_at: Instant::now(),
            image: RgbImage::new(1, 1),
        }
    }

    #[test]
    fn newest_frame_wins_and_drops_are_counted() {
        let slots = FrameSlots::new(2);
        let stop = AtomicBool::new(false);
        for seq in 1..=5 {
            slots.offer(frame(0, seq));
        }
        slots.offer(frame(1, 1));
        assert_eq!(slots.waiting(), 2);
        assert_eq!(slots.dropped(), vec![4, 0]);
        // The frame that has waited longest goes first: camera 0's newest (seq 5).
        let f = slots.take(&stop).unwrap();
        assert_eq!((f.camera, f.seq), (0, 5));
        assert_eq!(slots.take(&stop).unwrap().camera, 1);
        slots.close(0);
        slots.close(1);
        assert!(slots.take(&stop).is_none(), "closed and drained");
    }

    #[test]
    fn capture_never_waits_on_a_busy_inference_and_stop_wakes_waiters() {
        let slots = Arc::new(FrameSlots::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        // Nobody takes frames: offering still returns at once.
        let t = Instant::now();
        for seq in 1..=100 {
            slots.offer(frame(0, seq));
        }
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(slots.dropped(), vec![99]);
        // A replay waiting for the slot is released by stop.
        let waiter = {
            let (slots, stop) = (slots.clone(), stop.clone());
            std::thread::spawn(move || slots.wait_free(0, &stop))
        };
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        assert!(!waiter.join().unwrap());
        assert!(slots.take(&stop).is_none());
    }
}
