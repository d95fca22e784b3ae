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
use crate::daemon::stats::CameraStats;

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

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), Error> {
        let m = self.feed.metrics();
        let cams = |f: fn(&CameraStats) -> u64| {
            m.cameras
                .iter()
                .map(move |c| (vec![("camera", c.name.clone())], ConstCounter::new(f(c))))
                .collect::<Vec<_>>()
        };
        let per_camera: [(&str, &str, fn(&CameraStats) -> u64); 5] = [
            (
                "frames_captured",
                "Frames delivered by the camera",
                |c: &CameraStats| c.captured,
            ),
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
        for (name, help, f) in per_camera {
            family(&mut e, name, help, MetricType::Counter, cams(f))?;
        }
        let q = m.queues;
        gauge(
            &mut e,
            "frames_waiting",
            "Frames waiting for inference",
            q.frames_waiting as i64,
        )?;
        gauge(
            &mut e,
            "results_waiting",
            "Results waiting for the outputs",
            q.results_waiting as i64,
        )?;
        if let Some(s) = m.mqtt {
            gauge(
                &mut e,
                "mqtt_connected",
                "1 while connected to the broker",
                s.connected as i64,
            )?;
            counter(
                &mut e,
                "mqtt_delivered",
                "Messages acknowledged by the broker",
                s.delivered,
            )?;
            counter(
                &mut e,
                "mqtt_spooled",
                "Messages written to the spool",
                s.spooled,
            )?;
            gauge(
                &mut e,
                "spool_messages",
                "Messages in the spool",
                s.spool_messages as i64,
            )?;
            gauge(
                &mut e,
                "spool_bytes",
                "Bytes in the spool",
                s.spool_bytes as i64,
            )?;
            counter(
                &mut e,
                "spool_dropped",
                "Spooled messages dropped (full)",
                s.spool_dropped,
            )?;
            counter(
                &mut e,
                "spool_failed",
                "Messages the spool's disk refused",
                s.spool_failed,
            )?;
            counter(
                &mut e,
                "mqtt_connects",
                "Connections to the broker",
                s.connects,
            )?;
            counter(
                &mut e,
                "mqtt_disconnects",
                "Connections lost",
                s.disconnects,
            )?;
        }
        if let Some(f) = m.files {
            counter(
                &mut e,
                "files_results",
                "Result lines written to files.dir",
                f.results,
            )?;
            counter(
                &mut e,
                "files_failed",
                "Lines and PNGs the disk refused",
                f.failed,
            )?;
        }
        let s = self.feed.status();
        let model: Labels = vec![
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
        let info = Info::new(model);
        info.encode(e.encode_descriptor(
            "model",
            "The model serving",
            None,
            info.metric_type(),
        )?)?;
        gauge(
            &mut e,
            "uptime_seconds",
            "Seconds since start",
            m.uptime_s as i64,
        )
    }
}
