//! The MQTT output: results, masks and heatmaps (QoS 1, spooled while the broker is away),
//! metrics, the retained status, and the control plane's replies, all through one
//! [`MqttSink`].
//!
//! No MQTT packet limit stops the output: pictures are made to fit in a packet (see
//! [`crate::daemon::mqtt::packet`]) before they are queued or spooled, and results lose
//! their weakest blobs if they must.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::config::{MqttConfig, PayloadFormat};
use crate::daemon::mqtt::connection::{Deliver, LinkEvent};
use crate::daemon::mqtt::link::{LinkSetup, MqttSink, Received, StatusMessages};
use crate::daemon::mqtt::packet::{self, Fitted};
use crate::daemon::mqtt::spool::Message;
use crate::daemon::mqtt::stats::MqttStats;
use crate::daemon::operator::reply::CameraStates;
use crate::daemon::outputs::output::{Output, Rendered};
use crate::daemon::outputs::status::StatusPayload;
use crate::daemon::payload::{self, Picture, ResultPayload, ServingModel};
use crate::daemon::stats::MetricsPayload;
use crate::daemon::sweep::Sweep;
use crate::daemon::topics::Topics;

/// What the MQTT output is opened with besides `[mqtt]`.
pub struct MqttSetup {
    pub topics: Topics,
    /// The online status (the model serving at start).
    pub status: StatusPayload,
    /// With `[bundles]`: subscribe to the bundle chunk topics too.
    pub bundles: bool,
    /// `run --mqtt-url`.
    pub url: Option<String>,
    pub client_id: String,
    pub format: PayloadFormat,
    /// Where the connection's events go (the sink thread's event channel).
    pub deliver: Deliver,
    /// Topic filters of state inputs (the `[position]` pose): subscribed, and a retained
    /// message there is taken (the newest state), not ignored like a retained command.
    pub state_inputs: Vec<String>,
    /// This device's retained namespaces: what an earlier run left there and this run
    /// does not publish is cleared.
    pub sweep: Sweep,
}

pub struct MqttOutput {
    link: MqttSink,
    topics: Topics,
    status: StatusPayload,
    format: PayloadFormat,
    /// `mqtt.shutdown_grace_ms`.
    grace: Duration,
}

impl MqttOutput {
    pub fn open(cfg: &MqttConfig, s: MqttSetup) -> Result<MqttOutput> {
        let mut link = MqttSink::new(
            cfg,
            LinkSetup {
                url: s.url,
                default_client_id: s.client_id,
                status: StatusMessages {
                    topic: s.topics.status(),
                    online: s.status.encode(s.format)?,
                    offline: s.status.offline("connection lost").encode(s.format)?,
                },
                subscriptions: [
                    s.topics.subscriptions(s.bundles),
                    s.state_inputs.clone(),
                    s.sweep.filters(),
                ]
                .concat(),
                deliver: s.deliver,
            },
        )?;
        link.clear_retained_on(s.topics.clearable());
        link.take_retained_on(s.state_inputs);
        link.sweep(s.sweep);
        Ok(MqttOutput {
            link,
            topics: s.topics,
            status: s.status,
            format: s.format,
            grace: cfg.shutdown_grace(),
        })
    }

    /// False while the link's memory queue is full: the results wait (never dropped).
    pub fn can_accept(&self) -> bool {
        self.link.can_accept()
    }

    pub fn stats(&self) -> MqttStats {
        self.link.stats()
    }

    /// One event of the connection; a message on a subscribed topic is returned.
    pub fn handle(&mut self, e: LinkEvent) -> Option<Received> {
        self.link.handle(e)
    }

    /// Feed the client, reconnect when due.
    pub fn drive(&mut self) {
        self.link.drive()
    }

    pub fn wake_at(&self) -> Option<Instant> {
        self.link.wake_at()
    }

    /// A current-state message (installer status, a refusal): sent if connected.
    pub fn publish_transient(&mut self, m: Message) {
        self.link.publish_transient(&m.topic, m.payload, false);
    }

    /// Event messages (QoS 1, spooled like results).
    pub fn submit(&mut self, msgs: Vec<Message>) -> Result<()> {
        self.link.submit(msgs)
    }

    /// A retained state message, re-published at every connect.
    pub fn set_retained(&mut self, m: Message) {
        self.link.set_retained(m);
    }

    /// `mqtt.max_packet_bytes`.
    pub fn max_packet_bytes(&self) -> usize {
        self.link.max_packet_bytes()
    }

    /// The retained status (and the Last Will of the next connection) names the model
    /// now serving.
    pub fn serving_changed(&mut self, s: ServingModel) -> Result<()> {
        self.status.serve(s);
        self.link.set_status(
            self.status.encode(self.format)?,
            self.status.offline("connection lost").encode(self.format)?,
        );
        Ok(())
    }

    /// The cameras' operator state changed: the retained status follows.
    pub fn set_camera_state(&mut self, s: CameraStates) -> Result<()> {
        self.status.camera_state = s;
        self.link.set_status(
            self.status.encode(self.format)?,
            self.status.offline("connection lost").encode(self.format)?,
        );
        Ok(())
    }

    /// Flush for up to the grace period, then say offline ("shutdown") and disconnect.
    /// `next` waits for the connection's next event.
    pub fn close(mut self, next: impl FnMut(Duration) -> Option<LinkEvent>) -> Result<MqttStats> {
        // A clean stop replaces the Last Will's reason with "shutdown".
        self.link
            .set_offline_reason(self.status.offline("shutdown").encode(self.format)?);
        self.link.shutdown(self.grace, next)
    }

    /// A mask or heatmap message that fits in a packet: as it is, made smaller, or none
    /// (counted and logged).
    fn fitted_picture(
        &mut self,
        picture: &Picture,
        full: Option<Vec<u8>>,
        p: &ResultPayload,
        topic: String,
    ) -> Result<Option<Message>> {
        let (w, h) = picture.dimensions();
        let max = self.link.max_packet_bytes();
        let payload = match packet::fit_picture(picture, full, p, &topic, max)? {
            Fitted::AsIs(png) => png,
            Fitted::Shrunk {
                png,
                size,
                full_bytes,
            } => {
                self.link.count_shrunk(
                    &topic,
                    &format!(
                        "{w}x{h} PNG of {full_bytes} bytes sent at {}x{} ({} bytes)",
                        size.0,
                        size.1,
                        png.len()
                    ),
                );
                png
            }
            Fitted::TooLarge { full_bytes } => {
                self.link.count_oversized(&topic, full_bytes);
                return Ok(None);
            }
        };
        Ok(Some(Message { topic, payload }))
    }

    /// The result message, without its weakest blobs if it must; none if it cannot fit.
    fn result_message(&mut self, p: &ResultPayload) -> Result<Option<Message>> {
        let topic = self.topics.result(&p.camera);
        let max = self.link.max_packet_bytes();
        match packet::fit_result(p, self.format, &topic, max)? {
            Some((payload, left_out)) => {
                if left_out > 0 {
                    self.link.count_shrunk(
                        &topic,
                        &format!("result sent without its {left_out} weakest blob(s)"),
                    );
                }
                Ok(Some(Message { topic, payload }))
            }
            None => {
                let len = payload::encode(p, self.format)?.len();
                self.link.count_oversized(&topic, len);
                Ok(None)
            }
        }
    }
}

impl Output for MqttOutput {
    fn result(&mut self, r: &Rendered) -> Result<()> {
        let p = &r.payload;
        // Pictures first: whether the mask fits decides the result's `mask` field.
        let mask_msg = match &r.mask {
            Some(pic) => {
                self.fitted_picture(pic, r.mask_png.clone(), p, self.topics.mask(&p.camera))?
            }
            None => None,
        };
        let heatmap_msg = match &r.heatmap {
            Some(pic) => {
                let topic = self.topics.heatmap(&p.camera);
                self.fitted_picture(pic, r.heatmap_png.clone(), p, topic)?
            }
            None => None,
        };
        let sent;
        let p = if p.mask && mask_msg.is_none() {
            sent = ResultPayload {
                mask: false,
                ..p.clone()
            };
            &sent
        } else {
            p
        };
        let mut msgs = Vec::with_capacity(3);
        msgs.extend(self.result_message(p)?);
        msgs.extend(mask_msg);
        msgs.extend(heatmap_msg);
        self.link.submit(msgs)
    }

    fn metrics(&mut self, m: &MetricsPayload) -> Result<()> {
        let payload = payload::encode(m, self.format)?;
        self.link
            .publish_transient(&self.topics.metrics(), payload, false);
        Ok(())
    }
}
