//! The inference thread: takes the frame that has waited longest, scores it (or its ROI)
//! with the one serving detector, and sends the result to the sink thread.
//!
//! Between two frames it switches to a detector the installer loaded (and tells the sinks,
//! so the retained status follows) and takes `enroll` requests. Each job is one function:
//! [`Inference::switch_models`], [`Inference::score`], [`Inference::deliver`].

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use image::{DynamicImage, RgbImage};

use crate::config::{roi_fits, Config};
use crate::daemon::capture::{Frame, FrameSlots};
use crate::daemon::enrollment::Enrollment;
use crate::daemon::events::{Events, Scored, SinkEvent};
use crate::daemon::http::live::LiveWatch;
use crate::daemon::installer::Swap;
use crate::daemon::operator::state::{FrameAsk, Operator};
use crate::daemon::payload::{FrameFacts, FrameResult, LatencyMs, ResultPayload, ServingModel};
use crate::daemon::shutdown::Shutdown;
use crate::daemon::stats::Stats;
use crate::daemon::watchdog::Liveness;
use crate::detect::detector::{Detection, Detector};

/// Everything the inference thread works with.
pub struct Inference<'a> {
    pub config: &'a Config,
    /// This start's number (see `daemon::boot`).
    pub boot: u64,
    pub detector: Detector,
    /// Detectors loaded by the installer, to switch to between two frames.
    pub swaps: &'a Receiver<Swap>,
    /// With `[bundles]`: `enroll` requests and their capture.
    pub enrollment: Option<Enrollment>,
    pub slots: Arc<FrameSlots>,
    pub stats: Arc<Stats>,
    pub liveness: Arc<Liveness>,
    pub events: Events,
    /// `--max-frames`: stop after this many scored frames.
    pub max_frames: Option<u64>,
    pub shutdown: Shutdown,
    /// With `[http]`: whether the live page watches (then frames keep their pixels).
    pub live: Option<LiveWatch>,
    /// Paused cameras, operator thresholds, frame requests (`trigger`, `snapshot`).
    pub operator: Arc<Operator>,
}

/// The operator's requests a frame answers, and whether its camera is paused.
struct Asked {
    asks: Vec<FrameAsk>,
    paused: bool,
    snapshot: Option<RgbImage>,
}

/// One frame's detection, before it becomes a result.
struct Scoring {
    roi: [u32; 4],
    crop: DynamicImage,
    det: Detection,
    /// The whole frame when the ROI is a part of it (the crop is a copy then).
    full: Option<RgbImage>,
}

impl Inference<'_> {
    /// Score frames until the cameras end, `max_frames` are scored or the daemon stops.
    /// Fails only when the sink thread is gone.
    pub fn run(mut self) -> Result<()> {
        if self.max_frames == Some(0) {
            // `--max-frames 0`: score nothing, only deliver what the spool holds.
            return Ok(());
        }
        let mut scored = 0u64;
        while let Some(frame) = self.slots.take(&self.shutdown) {
            self.switch_models();
            if let Some(e) = self.enrollment.as_mut() {
                e.take_requests(&self.config.cameras, self.config.enroll.frames);
            }
            // A paused camera's frames are scored only for a request that asked for one.
            let asks = self.operator.take_asks(frame.camera);
            let paused = self.operator.paused(frame.camera);
            if paused && asks.is_empty() {
                continue;
            }
            // A snapshot needs the whole frame.
            let snapshot = asks.iter().any(|a| a.snapshot).then(|| frame.image.clone());
            let asked = Asked {
                asks,
                paused,
                snapshot,
            };
            if !self.deliver(frame, asked)? {
                continue;
            }
            scored += 1;
            if self.max_frames.is_some_and(|m| scored >= m) {
                log::info!("{scored} frames scored (--max-frames): stopping");
                break;
            }
        }
        Ok(())
    }

    /// A new model from the installer: switch between two frames, and tell the sinks.
    fn switch_models(&mut self) {
        while let Ok(swap) = self.swaps.try_recv() {
            self.detector = swap.detector;
            let d = &self.detector;
            let serving = ServingModel::of(d, swap.version);
            log::info!(
                "now serving {} ({}, {}, scorer {})",
                swap.version
                    .map_or("the factory model".to_string(), |v| format!("bundle v{v}")),
                d.model.dir.display(),
                serving.schedule,
                serving.scorer
            );
            // Operator thresholds were set on the old model's score scale.
            self.operator.serving(&serving);
            // Sent before the next result, on the same channel: the status changes with it.
            self.events.send(SinkEvent::Serving(serving));
        }
    }

    /// Score one frame and send its result; false when its inference failed (counted and
    /// logged).
    fn deliver(&mut self, frame: Frame, asked: Asked) -> Result<bool> {
        let cam = &self.config.cameras[frame.camera];
        let start = Instant::now();
        let queue_ms = (start - frame.captured_at).as_secs_f64() * 1e3;
        let frame_size = [frame.image.width(), frame.image.height()];
        self.liveness.inference_started();
        crate::faults::inference_stall(frame.seq);
        let attempt = self.score(frame.image, cam.fit(), cam.roi);
        self.liveness.inference_done();
        let Scoring {
            roi,
            crop,
            det,
            full,
        } = match attempt {
            Ok(s) => s,
            Err(e) => {
                self.stats.camera(frame.camera, |c| c.failed += 1);
                log::error!("camera {:?} frame {}: {e:#}", cam.name, frame.seq);
                return Ok(false);
            }
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let ready = Instant::now();
        let latency = LatencyMs {
            queue: queue_ms,
            preprocess: ms(det.times.preprocess),
            inference: ms(det.times.inference),
            scoring: ms(det.times.scoring),
            total: ms(ready - frame.captured_at),
        };
        self.stats.scored(frame.camera, &latency);
        let manifest = &self.detector.model.manifest;
        let payload = ResultPayload::new(FrameFacts {
            device_id: &self.config.device_id,
            camera: &cam.name,
            boot: self.boot,
            seq: frame.seq,
            captured: frame.captured,
            frame_size,
            roi,
            score: det.score,
            map: &det.map,
            windows: det.windows,
            thresholds: self
                .operator
                .thresholds(frame.camera, cam.thresholds.or(self.detector.thresholds())),
            latency,
            model_sha256: &manifest.graph_sha256,
            schedule: &self.detector.schedule.id(),
            scorer: self.detector.scorer().to_string(),
        });
        if let Some(e) = self.enrollment.as_mut() {
            e.offer(frame.camera, cam, frame.seq, &crop);
        }
        // The live page's pixels cost no copy here: kept, not drawn (the HTTP thread draws).
        let watched = self.live.as_ref().is_some_and(|l| l.watched());
        let result = FrameResult {
            payload,
            map: det.map,
            roi_image: (self.keep_pixels() || watched).then(|| crop.into_rgb8()),
            full_frame: full.filter(|_| watched),
        };
        let scored = Scored {
            result,
            ready,
            captured_at: frame.captured_at,
            asks: asked.asks,
            snapshot: asked.snapshot,
            paused: asked.paused,
        };
        anyhow::ensure!(
            self.events.send_result(scored),
            "the sink thread stopped early"
        );
        Ok(true)
    }

    /// Crop the ROI and detect. The frame is ours: it is scored without another copy
    /// when the ROI is the whole frame.
    /// Whether results carry the ROI's pixels: for the heatmap, or an event's evidence.
    fn keep_pixels(&self) -> bool {
        self.config.output.heatmap
            || self
                .config
                .events
                .as_ref()
                .is_some_and(crate::daemon::incidents::Incidents::wants_pixels)
    }

    fn score(
        &mut self,
        image: RgbImage,
        fit: crate::detect::preprocess::Fit,
        roi: Option<[u32; 4]>,
    ) -> Result<Scoring> {
        self.detector.set_fit(fit)?;
        let roi = roi_of(&image, roi)?;
        let (crop, full) = if roi == [0, 0, image.width(), image.height()] {
            (image, None)
        } else {
            let crop = image::imageops::crop_imm(&image, roi[0], roi[1], roi[2], roi[3]);
            (crop.to_image(), Some(image))
        };
        let crop = DynamicImage::ImageRgb8(crop);
        let det = self.detector.detect(&crop)?;
        Ok(Scoring {
            roi,
            crop,
            det,
            full,
        })
    }
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
