//! Where results go: the [`console`] (one line per frame), a folder ([`files`]: JSON lines
//! and mask PNGs) and [`mqtt`], each an [`Output`]. [`Outputs`] holds those configured,
//! decides once per frame which pictures it gets (mask policy and rate limit, heatmap),
//! encodes them once, and hands the frame to each output in turn, on the sink thread.

pub mod console;
pub mod files;
pub mod mqtt;
pub mod output;
pub mod status;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::config::{MaskPolicy, OutputConfig};
use crate::daemon::mqtt::connection::LinkEvent;
use crate::daemon::mqtt::link::Received;
use crate::daemon::mqtt::spool::Message;
use crate::daemon::operator::reply::CameraStates;
use crate::daemon::outputs::console::Console;
use crate::daemon::outputs::files::FileSink;
use crate::daemon::outputs::mqtt::MqttOutput;
use crate::daemon::outputs::output::{Output, Rendered};
use crate::daemon::payload::{self, FrameResult, ServingModel};
use crate::daemon::stats::{MetricsPayload, SinkStats};

/// The configured outputs.
pub struct Outputs {
    pub console: Option<Console>,
    pub files: Option<FileSink>,
    pub mqtt: Option<MqttOutput>,
    output: OutputConfig,
    /// When each camera's last mask went out (`output.mask_interval_ms`).
    last_mask: HashMap<String, Instant>,
}

impl Outputs {
    pub fn new(output: OutputConfig) -> Outputs {
        Outputs {
            console: None,
            files: None,
            mqtt: None,
            output,
            last_mask: HashMap::new(),
        }
    }

    fn each(&mut self) -> impl Iterator<Item = &mut dyn Output> {
        let console = self.console.as_mut().map(|o| o as &mut dyn Output);
        let files = self.files.as_mut().map(|o| o as &mut dyn Output);
        let mqtt = self.mqtt.as_mut().map(|o| o as &mut dyn Output);
        console.into_iter().chain(files).chain(mqtt)
    }

    /// Whether the outputs take a result now (MQTT's memory queue may be full).
    pub fn can_accept(&self) -> bool {
        self.mqtt.as_ref().is_none_or(|m| m.can_accept())
    }

    /// What the outputs have counted so far.
    pub fn stats(&self) -> SinkStats {
        SinkStats {
            mqtt: self.mqtt.as_ref().map(|m| m.stats()),
            files: self.files.as_ref().map(|f| f.stats()),
        }
    }

    /// Whether this frame's mask goes out (policy and per-camera rate limit).
    fn wants_mask(&mut self, r: &FrameResult) -> bool {
        let p = &r.payload;
        let wanted = p.pixel_threshold.is_some()
            && match self.output.mask {
                MaskPolicy::Always => true,
                MaskPolicy::Anomalous => p.anomalous == Some(true),
                MaskPolicy::Never => false,
            };
        if !wanted {
            return false;
        }
        let now = Instant::now();
        if let Some(interval) = self.output.mask_interval() {
            if let Some(last) = self.last_mask.get(&p.camera) {
                if now.duration_since(*last) < interval {
                    return false;
                }
            }
        }
        self.last_mask.insert(p.camera.clone(), now);
        true
    }

    /// The frame with its pictures, each encoded once for every output.
    fn render(&mut self, r: FrameResult) -> Result<Rendered> {
        let mask = if self.wants_mask(&r) {
            let t = r.payload.pixel_threshold.expect("wants_mask checks it");
            Some(payload::mask_picture(&r, t))
        } else {
            None
        };
        let heatmap = if self.output.heatmap {
            payload::heatmap_picture(&r)
        } else {
            None
        };
        let mut p = r.payload;
        p.mask = mask.is_some();
        let mask_png = mask.as_ref().map(|m| m.png(&p)).transpose()?;
        // The folder keeps a heatmap only beside a mask; encoded once, for both outputs.
        let heatmap_png = match (&heatmap, &mask_png) {
            (Some(h), Some(_)) if self.files.is_some() => Some(h.png(&p)?),
            _ => None,
        };
        Ok(Rendered {
            payload: p,
            mask,
            mask_png,
            heatmap,
            heatmap_png,
        })
    }

    /// Hand one result to every output.
    pub fn publish(&mut self, r: FrameResult) -> Result<()> {
        let frame = self.render(r)?;
        for o in self.each() {
            o.result(&frame)?;
        }
        Ok(())
    }

    pub fn metrics(&mut self, m: &MetricsPayload) -> Result<()> {
        for o in self.each() {
            o.metrics(m)?;
        }
        Ok(())
    }

    /// The model serving changed: the retained status follows.
    pub fn serving_changed(&mut self, s: ServingModel) -> Result<()> {
        match self.mqtt.as_mut() {
            Some(m) => m.serving_changed(s),
            None => Ok(()),
        }
    }

    /// The cameras' operator state changed: the retained status follows.
    pub fn camera_state(&mut self, s: CameraStates) -> Result<()> {
        match self.mqtt.as_mut() {
            Some(m) => m.set_camera_state(s),
            None => Ok(()),
        }
    }

    /// `mqtt.max_packet_bytes`, with MQTT.
    pub fn max_packet_bytes(&self) -> Option<usize> {
        self.mqtt.as_ref().map(|m| m.max_packet_bytes())
    }

    /// An anomaly event's messages (MQTT only, QoS 1, spooled), then its retained state.
    pub fn publish_incident(&mut self, p: crate::daemon::incidents::Publish) -> Result<()> {
        if let Some(m) = self.mqtt.as_mut() {
            m.submit(p.messages)?;
            if let Some(state) = p.state {
                m.set_retained(state);
            }
        }
        Ok(())
    }

    /// A retained state message (MQTT only), re-published at every connect.
    pub fn set_retained(&mut self, m: Message) {
        if let Some(q) = self.mqtt.as_mut() {
            q.set_retained(m);
        }
    }

    /// A control-plane message (installer status, a refusal): MQTT only, if connected.
    pub fn publish_transient(&mut self, m: Message) {
        if let Some(q) = self.mqtt.as_mut() {
            q.publish_transient(m);
        }
    }

    /// One event of the MQTT connection; a message on a subscribed topic is returned.
    pub fn mqtt_event(&mut self, e: LinkEvent) -> Option<Received> {
        self.mqtt.as_mut()?.handle(e)
    }

    /// Let MQTT feed its client and reconnect when due.
    pub fn drive(&mut self) {
        if let Some(m) = self.mqtt.as_mut() {
            m.drive();
        }
    }

    /// When [`Outputs::drive`] has work without an event.
    pub fn wake_at(&self) -> Option<Instant> {
        self.mqtt.as_ref()?.wake_at()
    }

    /// Flush everything; MQTT gets its grace period (`next` waits for its events), then
    /// says offline.
    pub fn close(mut self, next: impl FnMut(Duration) -> Option<LinkEvent>) -> Result<SinkStats> {
        let files = self.stats().files;
        let mqtt = match self.mqtt.take() {
            Some(m) => Some(m.close(next)?),
            None => None,
        };
        Ok(SinkStats { mqtt, files })
    }
}
