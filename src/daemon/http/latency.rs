//! Frame latencies as Prometheus histograms (seconds), per camera and stage, observed on
//! the sink thread as each result goes out: `queue`, `preprocess`, `inference`, `scoring`,
//! `total` (capture to result ready) and `end_to_end` (capture to handed to every output).

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::daemon::payload::LatencyMs;

/// `[("camera", name), ("stage", stage)]`.
pub type StageLabels = Vec<(&'static str, String)>;

type Constructor = fn() -> Histogram;

/// The latency histograms (cheap to clone: they share their counts).
#[derive(Clone)]
pub struct Latencies {
    pub family: Family<StageLabels, Histogram, Constructor>,
}

fn histogram() -> Histogram {
    // 2.5 ms .. 41 s, doubling.
    Histogram::new(exponential_buckets(0.0025, 2.0, 15))
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            family: Family::new_with_constructor(histogram),
        }
    }
}

impl Latencies {
    fn observe(&self, camera: &str, stage: &'static str, ms: f64) {
        let labels = vec![("camera", camera.to_string()), ("stage", stage.to_string())];
        self.family
            .get_or_create(&labels)
            .observe((ms / 1e3).max(0.0));
    }

    /// A result's stage times.
    pub fn stages(&self, camera: &str, l: &LatencyMs) {
        for (stage, ms) in [
            ("queue", l.queue),
            ("preprocess", l.preprocess),
            ("inference", l.inference),
            ("scoring", l.scoring),
            ("total", l.total),
        ] {
            self.observe(camera, stage, ms);
        }
    }

    /// Capture to handed to every output.
    pub fn end_to_end(&self, camera: &str, ms: f64) {
        self.observe(camera, "end_to_end", ms);
    }
}
