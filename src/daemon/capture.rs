//! The capture side: one thread per camera reading its source into a one-frame slot.
//!
//! Each camera has a slot where the newest frame wins: when inference is slower than the
//! camera, the older waiting frame is dropped and counted, so capture never blocks (a
//! camera that is not read loses frames in the driver, and latency grows). A replay
//! without a frame rate instead waits for the slot, so every frame is scored.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use image::RgbImage;

use crate::config::roi_fits;
use crate::daemon::operator::state::Operator;
use crate::daemon::shutdown::{Shutdown, RECHECK};
use crate::daemon::source::{FrameSource, Next};
use crate::daemon::stats::{SlotCounts, Stats};

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

    /// Wake every waiter (they look at the stop flag).
    pub fn wake(&self) {
        let _guard = self.lock();
        self.changed.notify_all();
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
    pub fn wait_free(&self, camera: usize, stop: &Shutdown) -> bool {
        let mut s = self.lock();
        while s.frames[camera].is_some() {
            if stop.is_set() {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, RECHECK)
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
    pub fn take(&self, stop: &Shutdown) -> Option<Frame> {
        let mut s = self.lock();
        loop {
            if stop.is_set() {
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
                .wait_timeout(s, RECHECK)
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

    /// Waiting and dropped frames, for the metrics.
    pub fn counts(&self) -> SlotCounts {
        let s = self.lock();
        SlotCounts {
            waiting: s.frames.iter().filter(|f| f.is_some()).count(),
            dropped: s.dropped.clone(),
        }
    }
}

/// One camera for its capture thread.
pub struct Camera {
    pub source: Box<dyn FrameSource>,
    /// Index into `config.cameras` (and the slots).
    pub index: usize,
    /// `cameras.roi`: frames that do not hold it are counted corrupt.
    pub roi: Option<[u32; 4]>,
}

/// What every capture thread shares.
#[derive(Clone)]
pub struct CaptureShared {
    pub slots: Arc<FrameSlots>,
    /// A paused camera's replay that waits for the pipeline waits here instead.
    pub operator: Arc<Operator>,
    pub stats: Arc<Stats>,
    pub shutdown: Shutdown,
}

/// Start the camera's capture thread; it closes the camera's slot when it ends.
pub fn spawn(camera: Camera, shared: CaptureShared) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("capture-{}", camera.index))
        .spawn(move || capture(camera, shared))
}

fn capture(mut cam: Camera, s: CaptureShared) {
    let camera = cam.index;
    let every = cam.source.wants_every_frame();
    let mut seq = 0u64;
    let mut misfits = RoiMisfits::default();
    loop {
        if every && !s.operator.wait_wanted(camera, &s.shutdown) {
            break;
        }
        if every && !s.slots.wait_free(camera, &s.shutdown) {
            break;
        }
        let next = cam.source.next_frame();
        if s.shutdown.is_set() {
            break;
        }
        if let (Next::Frame(image), Some(r)) = (&next, cam.roi) {
            if !roi_fits(r, image.width(), image.height()) {
                seq += 1;
                s.stats.camera(camera, |c| {
                    c.captured += 1;
                    c.corrupt += 1;
                });
                misfits.report(&cam.source.describe(), seq, r, image.dimensions());
                continue;
            }
        }
        match next {
            // A paused camera's frames are read (a live camera keeps streaming) and let go.
            Next::Frame(_) if !s.operator.wants_frames(camera) => {}
            Next::Frame(image) => {
                seq += 1;
                s.stats.camera(camera, |c| c.captured += 1);
                // With `every`, the slot is free: nothing is replaced.
                s.slots.offer(Frame {
                    camera,
                    seq,
                    captured: cam.source.frame_time().unwrap_or_else(SystemTime::now),
                    captured_at: Instant::now(),
                    image,
                });
            }
            Next::Corrupt(e) => {
                seq += 1;
                s.stats.camera(camera, |c| {
                    c.captured += 1;
                    c.corrupt += 1;
                });
                log::warn!("{}: frame {seq} skipped: {e:#}", cam.source.describe());
            }
            Next::End => break,
        }
    }
    s.slots.close(camera);
}

/// Frame sizes already reported as not holding the ROI: one log line per size (for the
/// first 16 sizes), not one per frame.
#[derive(Default)]
struct RoiMisfits(Vec<(u32, u32)>);

impl RoiMisfits {
    fn report(&mut self, source: &str, seq: u64, roi: [u32; 4], size: (u32, u32)) {
        if self.0.len() < 16 && !self.0.contains(&size) {
            self.0.push(size);
            log::error!(
                "{source}: frame {seq}: roi {roi:?} does not fit the {}x{} frame: frames of this \
                 size are counted as corrupt (logged once)",
                size.0,
                size.1
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

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

    fn not_stopped() -> Shutdown {
        Shutdown::new(Arc::new(AtomicBool::new(false)))
    }

    #[test]
    fn newest_frame_wins_and_drops_are_counted() {
        let slots = FrameSlots::new(2);
        let stop = not_stopped();
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
        let stop = not_stopped();
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
        stop.trigger();
        assert!(!waiter.join().unwrap());
        assert!(slots.take(&stop).is_none());
    }
}
