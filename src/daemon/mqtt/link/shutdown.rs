//! A clean stop of the link: a grace period for the broker to take what is queued, the
//! rest to the spool, the offline status (retained), then the disconnect.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::MqttSink;
use crate::daemon::mqtt::connection::LinkEvent;
use crate::daemon::mqtt::stats::MqttStats;

impl MqttSink {
    /// Stop: give the broker up to `grace` to take what is queued, spool the rest, say
    /// offline (retained) and disconnect. `next` waits up to the given time for the next
    /// event of the connection (the owner still holds the event channel).
    pub fn shutdown(
        mut self,
        grace: Duration,
        mut next: impl FnMut(Duration) -> Option<LinkEvent>,
    ) -> Result<MqttStats> {
        let mut pump = |link: &mut MqttSink| {
            link.drive();
            if let Some(e) = next(Duration::from_millis(20)) {
                // Commands that arrive while stopping are not run.
                let _ = link.handle(e);
            }
        };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !self.is_idle() {
            pump(&mut self);
        }
        self.flush_acks();
        self.spill_memory();
        if !self.spool.is_empty() {
            log::warn!(
                "{} messages stay in the spool for the next start",
                self.spool.len()
            );
        }
        if self.connected {
            let topic = self.status.topic.clone();
            let offline = self.status.offline.clone();
            self.publish_transient(&topic, offline, true);
            // Wait (briefly) for the offline status to be acknowledged, then disconnect.
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until && !self.inflight.is_empty() && self.connected {
                pump(&mut self);
            }
            self.closing = true;
            if let Some(c) = &self.client {
                let _ = c.try_disconnect();
            }
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until && self.connected {
                pump(&mut self);
            }
        }
        Ok(self.stats())
    }
}
