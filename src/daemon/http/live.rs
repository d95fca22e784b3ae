//! The newest frame of each camera for the live page, kept only while someone watches.
//!
//! The inference thread asks [`LiveWatch::watched`] (one atomic load, never a lock) whether
//! to keep the frame's pixels; the sink thread hands each result to [`LiveView::offer`],
//! which swaps an `Arc` under a short lock; the HTTP thread renders the overlay JPEG from
//! it only when a client asks ([`LiveView::jpeg`]), once per frame (cached), so an idle page
//! costs nothing and a busy one costs the HTTP thread, never inference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::daemon::http::overlay::{self, Drawing, LiveFrame};
use crate::daemon::payload::{FrameResult, ResultPayload};

/// A frame request keeps frames coming for this long.
pub const WATCH_WINDOW: Duration = Duration::from_secs(10);

/// Whether the live page was asked for a frame recently (cheap to clone and to ask).
#[derive(Clone)]
pub struct LiveWatch {
    started: Instant,
    /// Milliseconds after `started` of the last frame request, plus one (0: never).
    last: Arc<AtomicU64>,
}

impl LiveWatch {
    pub fn new() -> LiveWatch {
        LiveWatch {
            started: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// A client asked for a frame.
    pub fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A frame was asked for within [`WATCH_WINDOW`].
    pub fn watched(&self) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        last != 0 && self.now_ms().saturating_sub(last) <= WATCH_WINDOW.as_millis() as u64
    }
}

impl Default for LiveWatch {
    fn default() -> Self {
        LiveWatch::new()
    }
}

/// `(boot, seq)`: names a frame.
type FrameKey = (u64, u64);

#[derive(Default)]
struct CameraLive {
    /// The newest result (always kept: the page shows its score).
    latest: Option<ResultPayload>,
    /// The newest frame with pixels (while watched).
    frame: Option<Arc<LiveFrame>>,
    /// The JPEG of `frame`, by seq and boot.
    jpeg: Option<(FrameKey, Arc<Vec<u8>>)>,
}

/// Per camera: the newest result and frame, and its rendered JPEG.
pub struct LiveView {
    pub watch: LiveWatch,
    names: Vec<String>,
    cameras: Vec<Mutex<CameraLive>>,
    drawing: Vec<Drawing>,
}

impl LiveView {
    /// `drawing[i]`: how camera `i`'s frames are drawn (its fit, the size limit).
    pub fn new(names: Vec<String>, drawing: Vec<Drawing>) -> LiveView {
        LiveView {
            watch: LiveWatch::new(),
            cameras: names.iter().map(|_| Mutex::default()).collect(),
            names,
            drawing,
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn camera(&self, i: usize) -> std::sync::MutexGuard<'_, CameraLive> {
        self.cameras[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A result on its way to the outputs (the sink thread). Its pixels are taken when
    /// the outputs do not need them (`keep_roi`: the heatmap output does: copied then).
    pub fn offer(&self, r: &mut FrameResult, keep_roi: bool) {
        let Some(i) = self.names.iter().position(|n| *n == r.payload.camera) else {
            return;
        };
        let roi_image = if keep_roi {
            r.roi_image.clone()
        } else {
            r.roi_image.take()
        };
        let frame = match (self.watch.watched(), roi_image) {
            (true, Some(roi_image)) => Some(Arc::new(LiveFrame {
                payload: r.payload.clone(),
                map: r.map.clone(),
                roi_image,
                full_frame: r.full_frame.take(),
            })),
            _ => None,
        };
        let mut c = self.camera(i);
        c.latest = Some(r.payload.clone());
        if frame.is_some() {
            c.frame = frame;
        }
    }

    /// The newest result of each camera.
    pub fn latest(&self) -> Vec<Option<ResultPayload>> {
        (0..self.names.len())
            .map(|i| self.camera(i).latest.clone())
            .collect()
    }

    /// Camera `i`'s newest overlay JPEG (rendered now if the frame is new), or `None`
    /// before a frame was kept. Marks the page watched.
    pub fn jpeg(&self, i: usize) -> Result<Option<Arc<Vec<u8>>>> {
        self.watch.touch();
        let frame = {
            let c = self.camera(i);
            let Some(frame) = c.frame.clone() else {
                return Ok(None);
            };
            let key = (frame.payload.boot, frame.payload.seq);
            if let Some((k, jpeg)) = &c.jpeg {
                if *k == key {
                    return Ok(Some(jpeg.clone()));
                }
            }
            frame
        };
        // Rendered outside the lock: the sink thread may store the next frame meanwhile.
        let jpeg = Arc::new(overlay::jpeg(&frame, &self.drawing[i])?);
        let key = (frame.payload.boot, frame.payload.seq);
        self.camera(i).jpeg = Some((key, jpeg.clone()));
        Ok(Some(jpeg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_lasts_its_window() {
        let mut w = LiveWatch::new();
        assert!(!w.watched(), "nobody asked yet");
        // A watch started 20 s ago: a request at its start has expired, a new one holds.
        w.started = Instant::now()
            .checked_sub(Duration::from_secs(20))
            .expect("the clock is past 20 s");
        w.last.store(1, Ordering::Relaxed);
        assert!(!w.watched(), "a request 20 s ago has expired");
        w.touch();
        assert!(w.watched());
    }
}
