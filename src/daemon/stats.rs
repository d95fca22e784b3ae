//! The daemon's counters and latencies: per-camera frame counts, the latency rings of each
//! pipeline stage, and the [`MetricsPayload`] built from them (published on `metrics` and
//! printed by `run` at exit).
//!
//! Shared by the capture, inference and sink threads; each update is one short lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use heapless::HistoryBuf;
use serde::Serialize;

use crate::daemon::mqtt::stats::MqttStats;
use crate::daemon::payload::LatencyMs;
use crate::eval::roc::quantile;

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
    pub mqtt: Option<MqttStats>,
    /// The folder sink (`files.dir`), if any.
    pub files: Option<FileStats>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueueDepths {
    /// Frames waiting in the newest-frame slots.
    pub frames_waiting: usize,
    /// Results waiting for the sinks.
    pub results_waiting: u64,
}

/// What the frame slots counted (see `capture::FrameSlots::counts`).
#[derive(Debug, Clone, Default)]
pub struct SlotCounts {
    /// Frames waiting for inference now.
    pub waiting: usize,
    /// Per camera: frames replaced by a newer one before inference took them.
    pub dropped: Vec<u64>,
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

/// What the outputs counted, for the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkStats {
    pub mqtt: Option<MqttStats>,
    pub files: Option<FileStats>,
}

/// Counters and latencies shared by the pipeline threads.
pub struct Stats {
    started: Instant,
    cameras: Mutex<Vec<CameraStats>>,
    rings: Mutex<Rings>,
    results_waiting: AtomicU64,
}

impl Stats {
    pub fn new(cameras: Vec<CameraStats>) -> Stats {
        Stats {
            started: Instant::now(),
            cameras: Mutex::new(cameras),
            rings: Mutex::new(Rings::default()),
            results_waiting: AtomicU64::new(0),
        }
    }

    /// Update camera `i`'s counters.
    pub fn camera<R>(&self, i: usize, f: impl FnOnce(&mut CameraStats) -> R) -> R {
        f(&mut self.cameras.lock().unwrap_or_else(|e| e.into_inner())[i])
    }

    fn rings<R>(&self, f: impl FnOnce(&mut Rings) -> R) -> R {
        f(&mut self.rings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Called by the inference thread once a frame of camera `i` is scored; the result
    /// now waits for the sinks.
    pub fn scored(&self, i: usize, latency: &LatencyMs) {
        self.rings(|r| {
            r.queue.write(latency.queue as f32);
            r.preprocess.write(latency.preprocess as f32);
            r.inference.write(latency.inference as f32);
            r.scoring.write(latency.scoring as f32);
        });
        self.camera(i, |c| c.scored += 1);
        self.results_waiting.fetch_add(1, Ordering::Relaxed);
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

    pub fn snapshot(&self, device_id: &str, slots: SlotCounts, sinks: SinkStats) -> MetricsPayload {
        let mut cameras = self
            .cameras
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (c, d) in cameras.iter_mut().zip(slots.dropped) {
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
                frames_waiting: slots.waiting,
                results_waiting: self.results_waiting.load(Ordering::Relaxed),
            },
            mqtt: sinks.mqtt,
            files: sinks.files,
        }
    }
}

/// Print the final metrics as one JSON line (what `run` ends with).
pub fn summary_line(m: &MetricsPayload) -> String {
    serde_json::to_string(m).unwrap_or_default()
}
