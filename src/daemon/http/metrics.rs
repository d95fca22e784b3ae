//! `/metrics`: the daemon in the OpenMetrics text format, encoded by `prometheus-client`
//! (the official Rust client). At each scrape a [`Collector`] reads the same snapshot the
//! `metrics` message carries (frame counters per camera, queue and spool depth, MQTT
//! state, the files sink) and the serving model as an info metric whose labels name the
//! model, its graph's sha256, the schedule, engine, scorer (with the bank) and bundle;
//! the latency histograms ([`Latencies`]) are registered as they are.

use std::fmt::Error;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::daemon::http::feed::HttpFeed;
use crate::daemon::outputs::status::StatusPayload;
use crate::daemon::stats::{CameraStats, MetricsPayload};

/// The content type of [`Exposition::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry behind `/metrics`.
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    pub fn new(feed: Arc<HttpFeed>) -> Exposition {
        let mut registry = Registry::with_prefix("maeday");
        registry.register_with_unit(
            "frame_latency",
            "Frame latency per camera and stage",
            Unit::Seconds,
            feed.latencies.family.clone(),
        );
        registry.register_collector(Box::new(Snapshot { feed }));
        Exposition { registry }
    }

    /// The text exposition, ending with `# EOF`.
    pub fn render(&self) -> Result<String, Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads the daemon's counters at each scrape.
struct Snapshot {
    feed: Arc<HttpFeed>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot")
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: `(labels, value)` per series.
fn family<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        value.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), Error> {
    family(
        e,
        name,
        help,
        MetricType::Counter,
        [(vec![], ConstCounter::new(v))],
    )
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), Error> {
    family(
        e,
        name,
        help,
        MetricType::Gauge,
        [(vec![], ConstGauge::new(v))],
    )
}

/// One per-camera counter: name, help, and where its value is.
type CameraCounter = (&'static str, &'static str, fn(&CameraStats) -> u64);

const PER_CAMERA: [CameraCounter; 5] = [
    ("frames_captured", "Frames delivered by the camera", |c| {
        c.captured
    }),
    ("frames_scored", "Frames scored", |c| c.scored),
    (
        "frames_dropped",
        "Frames replaced by a newer one before scoring",
        |c| c.dropped,
    ),
    (
        "frames_corrupt",
        "Corrupt or truncated frames, skipped",
        |c| c.corrupt,
    ),
    ("frames_failed", "Frames whose inference failed", |c| {
        c.failed
    }),
];

/// Frame counters per camera, and the queues.
fn frames(e: &mut DescriptorEncoder, m: &MetricsPayload) -> Result<(), Error> {
    for (name, help, value) in PER_CAMERA {
        let series = m.cameras.iter().map(|c| {
            (
                vec![("camera", c.name.clone())],
                ConstCounter::new(value(c)),
            )
        });
        family(e, name, help, MetricType::Counter, series)?;
    }
    let q = m.queues;
    gauge(
        e,
        "frames_waiting",
        "Frames waiting for inference",
        q.frames_waiting as i64,
    )?;
    gauge(
        e,
        "results_waiting",
        "Results waiting for the outputs",
        q.results_waiting as i64,
    )
}

/// The MQTT link and its spool, the files sink.
fn delivery(e: &mut DescriptorEncoder, m: &MetricsPayload) -> Result<(), Error> {
    if let Some(s) = m.mqtt {
        gauge(
            e,
            "mqtt_connected",
            "1 while connected to the broker",
            s.connected as i64,
        )?;
        counter(
            e,
            "mqtt_delivered",
            "Messages acknowledged by the broker",
            s.delivered,
        )?;
        counter(
            e,
            "mqtt_spooled",
            "Messages written to the spool",
            s.spooled,
        )?;
        gauge(
            e,
            "spool_messages",
            "Messages in the spool",
            s.spool_messages as i64,
        )?;
        gauge(e, "spool_bytes", "Bytes in the spool", s.spool_bytes as i64)?;
        counter(
            e,
            "spool_dropped",
            "Spooled messages dropped (full)",
            s.spool_dropped,
        )?;
        counter(
            e,
            "spool_failed",
            "Messages the spool's disk refused",
            s.spool_failed,
        )?;
        counter(e, "mqtt_connects", "Connections to the broker", s.connects)?;
        counter(e, "mqtt_disconnects", "Connections lost", s.disconnects)?;
    }
    if let Some(f) = m.files {
        counter(
            e,
            "files_results",
            "Result lines written to files.dir",
            f.results,
        )?;
        counter(
            e,
            "files_failed",
            "Lines and PNGs the disk refused",
            f.failed,
        )?;
    }
    Ok(())
}

/// The model serving, as labels of an info metric.
fn model(e: &mut DescriptorEncoder, s: StatusPayload) -> Result<(), Error> {
    let labels: Labels = vec![
        ("model", s.model),
        ("model_sha256", s.model_sha256),
        ("schedule", s.schedule),
        ("engine", s.engine),
        ("scorer", s.scorer),
        (
            "bundle_version",
            s.bundle_version.map_or("factory".into(), |v| v.to_string()),
        ),
        ("version", s.version.to_string()),
    ];
    let info = Info::new(labels);
    info.encode(e.encode_descriptor("model", "The model serving", None, MetricType::Info)?)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), Error> {
        let m = self.feed.metrics();
        frames(&mut e, &m)?;
        delivery(&mut e, &m)?;
        model(&mut e, self.feed.status())?;
        gauge(
            &mut e,
            "uptime_seconds",
            "Seconds since start",
            m.uptime_s as i64,
        )
    }
}
