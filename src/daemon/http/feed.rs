//! [`HttpFeed`]: what the HTTP server shows, fed by the daemon's threads and read by the
//! server's. The sink thread hands it each result, each anomaly event message, each
//! serving change and the outputs'
//! counters; the pipeline's own counters ([`Stats`], the frame slots) are read at request
//! time. Every lock here is held for a copy or a pointer swap, never for rendering.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::daemon::capture::FrameSlots;
use crate::daemon::http::latency::Latencies;
use crate::daemon::http::live::LiveView;
use crate::daemon::http::recent::Recent;
use crate::daemon::incidents::EventSummary;
use crate::daemon::outputs::status::StatusPayload;
use crate::daemon::payload::{FrameResult, ServingModel};
use crate::daemon::stats::{MetricsPayload, SinkStats, Stats};

/// The state the server reads.
pub struct HttpFeed {
    pub device_id: String,
    pub live: LiveView,
    pub latencies: Latencies,
    pub stats: Arc<Stats>,
    pub slots: Arc<FrameSlots>,
    /// Whether the outputs keep the ROI pixels themselves (`output.heatmap`).
    pub heatmap_output: bool,
    recent: Mutex<Recent>,
    status: Mutex<StatusPayload>,
    sinks: Mutex<SinkStats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What an [`HttpFeed`] starts from.
pub struct FeedSetup {
    pub device_id: String,
    pub live: LiveView,
    pub stats: Arc<Stats>,
    pub slots: Arc<FrameSlots>,
    pub heatmap_output: bool,
    /// The status as the retained MQTT one says it (online, the model serving).
    pub status: StatusPayload,
    /// How many recent events to list.
    pub events: usize,
    /// `[events]` is on: the list shows anomaly events, not single anomalous frames.
    pub from_events: bool,
}

impl HttpFeed {
    pub fn new(s: FeedSetup) -> HttpFeed {
        HttpFeed {
            device_id: s.device_id,
            live: s.live,
            latencies: Latencies::default(),
            stats: s.stats,
            slots: s.slots,
            heatmap_output: s.heatmap_output,
            recent: Mutex::new(Recent::new(s.events, s.from_events)),
            status: Mutex::new(s.status),
            sinks: Mutex::new(SinkStats::default()),
        }
    }

    /// A result on its way to the outputs (sink thread).
    pub fn offer(&self, r: &mut FrameResult) {
        self.latencies
            .stages(&r.payload.camera, &r.payload.latency_ms);
        lock(&self.recent).result(&r.payload);
        self.live.offer(r, self.heatmap_output);
    }

    /// An anomaly event's message was handed to the outputs (sink thread).
    pub fn incident(&self, e: &EventSummary) {
        lock(&self.recent).event(e);
    }

    /// A result was handed to every output (sink thread).
    pub fn published(&self, camera: &str, captured_at: Instant) {
        let ms = captured_at.elapsed().as_secs_f64() * 1e3;
        self.latencies.end_to_end(camera, ms);
    }

    /// The model serving changed: `/api/status` follows, like the retained status.
    pub fn serving(&self, s: ServingModel) {
        lock(&self.status).serve(s);
    }

    /// The cameras' operator state changed: `/api/status` follows, like the retained status.
    pub fn camera_state(&self, s: crate::daemon::operator::reply::CameraStates) {
        lock(&self.status).camera_state = s;
    }

    /// The outputs' counters now (sink thread).
    pub fn sink_stats(&self, s: SinkStats) {
        *lock(&self.sinks) = s;
    }

    pub fn status(&self) -> StatusPayload {
        lock(&self.status).clone()
    }

    pub fn recent(&self) -> Vec<crate::daemon::http::recent::RecentEvent> {
        lock(&self.recent).list()
    }

    /// The same snapshot the `metrics` message carries.
    pub fn metrics(&self) -> MetricsPayload {
        let sinks = *lock(&self.sinks);
        self.stats
            .snapshot(&self.device_id, self.slots.counts(), sinks)
    }
}
