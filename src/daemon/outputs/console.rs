//! The console output (`console = true`): one log line per frame and per metrics tick.

use anyhow::Result;

use crate::daemon::outputs::output::{Output, Rendered};
use crate::daemon::stats::MetricsPayload;

pub struct Console;

impl Output for Console {
    fn result(&mut self, r: &Rendered) -> Result<()> {
        let p = &r.payload;
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
        Ok(())
    }

    fn metrics(&mut self, m: &MetricsPayload) -> Result<()> {
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
        Ok(())
    }
}
