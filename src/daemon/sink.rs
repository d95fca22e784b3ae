//! The sink thread: waits on its one event channel ([`crate::daemon::events`]) and reacts.
//!
//! - results and serving-model changes go to the [`Outputs`], in the order inference sent
//!   them; while MQTT's memory queue is full they wait here (never dropped), and
//!   inference waits for room in the channel;
//! - the MQTT connection's events drive the link; a received message becomes a
//!   [`Command`] ([`Control`]) routed to the installer, the inference thread (`enroll`)
//!   or the metrics, or a refusal answered on its status topic;
//! - poses on the `[position]` topic are kept and stamped on each result;
//! - operator requests go to the [`Desk`], which answers each on `command/reply`; a
//!   paused camera's result reaches only the requests that asked for its frame;
//! - the installer's status messages are published;
//! - metrics go out every `output.metrics_interval_s`;
//! - after `Stop`, what waits is published and the outputs close (MQTT's grace period).
//!
//! The thread wakes at least every [`HEARTBEAT`] so the systemd watchdog sees it alive.

use std::collections::VecDeque;
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;

use crate::config::PayloadFormat;
use crate::daemon::capture::FrameSlots;
use crate::daemon::control::{Command, Control, Refusal};
use crate::daemon::events::{EventQueue, Scored, SinkEvent};
use crate::daemon::http::feed::HttpFeed;
use crate::daemon::incidents::Incidents;
use crate::daemon::installer::InstallerInput;
use crate::daemon::mqtt::link::Received;
use crate::daemon::operator::desk::Desk;
use crate::daemon::outputs::Outputs;
use crate::daemon::payload::{unix_ms, FrameResult, ServingModel};
use crate::daemon::position::Positions;
use crate::daemon::stats::{SinkStats, Stats};
use crate::daemon::topics::Topics;
use crate::daemon::watchdog::Liveness;
use crate::enroll::request::EnrollRequest;

/// The longest the thread waits without an event.
pub const HEARTBEAT: Duration = Duration::from_millis(100);

/// Where commands go.
#[derive(Default)]
pub struct Routes {
    /// The installer (chunks, rollback); with `[bundles]`.
    pub installer: Option<Sender<InstallerInput>>,
    /// The inference thread (`enroll`, which captures the frames); with `[bundles]`.
    pub enroll: Option<Sender<EnrollRequest>>,
}

/// Everything the sink thread owns.
pub struct Sink {
    pub outputs: Outputs,
    pub control: Control,
    pub routes: Routes,
    pub topics: Topics,
    pub format: PayloadFormat,
    pub stats: Arc<Stats>,
    pub slots: Arc<FrameSlots>,
    pub liveness: Arc<Liveness>,
    pub device_id: String,
    /// `output.metrics_interval_s`.
    pub metrics_interval: Option<Duration>,
    /// Debounced anomaly events (`[events]`), fed each result after its outputs.
    pub incidents: Option<Incidents>,
    /// With `[http]`: what the HTTP server shows.
    pub http: Option<Arc<HttpFeed>>,
    /// With `[position]`: the poses received, stamped on each result before its outputs.
    pub position: Option<Positions>,
    /// Operator requests (pause, thresholds, trigger, snapshot).
    pub desk: Desk,
}

/// Results and serving changes, in the order inference sent them.
enum Ordered {
    Result(Box<Scored>),
    Serving(ServingModel),
}

impl Sink {
    /// Start the sink thread.
    pub fn spawn(self, events: EventQueue) -> std::io::Result<JoinHandle<Result<SinkStats>>> {
        std::thread::Builder::new()
            .name("sinks".into())
            .spawn(move || self.run(events))
    }

    /// Run until `Stop` and everything before it is handled; returns what the outputs
    /// counted.
    pub fn run(mut self, events: EventQueue) -> Result<SinkStats> {
        let mut waiting: VecDeque<Ordered> = VecDeque::new();
        let mut next_metrics = self.metrics_interval.map(|i| Instant::now() + i);
        let mut stopping = false;
        loop {
            self.liveness.sink_alive();
            while self.outputs.can_accept() {
                let Some(item) = waiting.pop_front() else {
                    break;
                };
                self.deliver(item, &events)?;
            }
            if stopping && waiting.is_empty() {
                break;
            }
            self.desk.expire(&mut self.outputs);
            // Hand what was just queued to the MQTT client before waiting.
            self.outputs.drive();
            if let Some(h) = &self.http {
                h.sink_stats(self.outputs.stats());
            }
            let mut metrics_asked = false;
            match events.next(self.wait(next_metrics)) {
                Ok(SinkEvent::Result(s)) => waiting.push_back(Ordered::Result(s)),
                Ok(SinkEvent::Serving(s)) => waiting.push_back(Ordered::Serving(s)),
                Ok(SinkEvent::Outbox(m)) => self.outputs.publish_transient(m),
                Ok(SinkEvent::Mqtt(e)) => {
                    if let Some(msg) = self.outputs.mqtt_event(e) {
                        metrics_asked = self.received(msg)?;
                    }
                }
                Ok(SinkEvent::Stop) | Err(RecvTimeoutError::Disconnected) => stopping = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let due = next_metrics.is_some_and(|t| Instant::now() >= t);
            if due || metrics_asked {
                self.metrics()?;
                if let (Some(i), true) = (self.metrics_interval, due) {
                    next_metrics = Some(Instant::now() + i);
                }
            }
        }
        // The installer ends when its input closes.
        self.routes = Routes::default();
        self.outputs.close(|wait| match events.next(wait) {
            Ok(SinkEvent::Mqtt(e)) => Some(e),
            _ => None,
        })
    }

    /// How long to wait for the next event: the heartbeat, or less when metrics or an
    /// MQTT reconnect are due sooner.
    fn wait(&self, next_metrics: Option<Instant>) -> Duration {
        let now = Instant::now();
        [next_metrics, self.outputs.wake_at()]
            .into_iter()
            .flatten()
            .map(|t| t.saturating_duration_since(now))
            .fold(HEARTBEAT, Duration::min)
    }

    fn deliver(&mut self, item: Ordered, events: &EventQueue) -> Result<()> {
        match item {
            Ordered::Serving(s) => {
                if let Some(h) = &self.http {
                    h.serving(s.clone());
                }
                self.desk
                    .serving_changed(&s, &mut self.outputs, self.http.as_deref());
                self.outputs.serving_changed(s)
            }
            Ordered::Result(s) => {
                let Scored {
                    mut result,
                    ready,
                    captured_at,
                    asks,
                    snapshot,
                    paused,
                } = *s;
                let inference_ms = result.payload.latency_ms.inference;
                if let Some(p) = &self.position {
                    result.payload.position = Some(p.stamp(result.payload.captured_unix_ms));
                }
                let answered = (!asks.is_empty()).then(|| result.payload.clone());
                if !paused {
                    self.publish(result, captured_at)?;
                }
                if let Some(payload) = answered {
                    let frame = snapshot.as_ref();
                    self.desk.answer(asks, &payload, frame, &mut self.outputs)?;
                }
                self.stats.published(ready, captured_at, inference_ms);
                events.result_done();
                Ok(())
            }
        }
    }

    /// A result to every output, the HTTP page and the anomaly events.
    fn publish(&mut self, mut result: FrameResult, captured_at: Instant) -> Result<()> {
        let incident = self.incidents.as_mut().map(|i| i.observe(&result));
        let camera = self.http.as_ref().map(|h| {
            h.offer(&mut result);
            result.payload.camera.clone()
        });
        self.outputs.publish(result)?;
        if let (Some(h), Some(c)) = (&self.http, camera) {
            h.published(&c, captured_at);
        }
        if let Some(incident) = incident {
            let incident = incident?;
            if let (Some(h), Some(e)) = (&self.http, &incident.summary) {
                h.incident(e);
            }
            self.outputs.publish_incident(incident)?;
        }
        Ok(())
    }

    fn metrics(&mut self) -> Result<()> {
        let m = self
            .stats
            .snapshot(&self.device_id, self.slots.counts(), self.outputs.stats());
        self.outputs.metrics(&m)
    }

    /// A message on a subscribed topic: run it, or answer why not. True when it asks for
    /// the metrics.
    fn received(&mut self, msg: Received) -> Result<bool> {
        if let Some(p) = self.position.as_mut().filter(|p| p.is_pose(&msg.topic)) {
            p.receive(&msg.topic, &msg.payload, unix_ms(SystemTime::now()));
            return Ok(false);
        }
        let topic = msg.topic.clone();
        let refusal = match self.control.parse(msg) {
            Ok(None) => None,
            Ok(Some(Command::Metrics)) => return Ok(true),
            Ok(Some(Command::Chunk(c))) => self.to_installer(&topic, InstallerInput::Chunk(c)),
            Ok(Some(Command::Rollback)) => self.to_installer(&topic, InstallerInput::Rollback),
            Ok(Some(Command::Enroll(req))) => self.enroll(&topic, req),
            Ok(Some(Command::Operator(req))) => {
                let http = self.http.as_deref();
                return Ok(self.desk.handle(req, &mut self.outputs, http));
            }
            Err(r) => Some(r),
        };
        if let Some(r) = refusal {
            // A refused command is answered where its verdict would have come.
            self.outputs
                .publish_transient(r.reply(&self.topics, self.format)?);
        }
        Ok(false)
    }

    fn to_installer(&self, topic: &str, input: InstallerInput) -> Option<Refusal> {
        match &self.routes.installer {
            Some(tx) => {
                let _ = tx.send(input);
            }
            None => log::warn!("{topic}: bundles are not enabled (no [bundles])"),
        }
        None
    }

    fn enroll(&self, topic: &str, req: EnrollRequest) -> Option<Refusal> {
        let sent = self.routes.enroll.as_ref().map(|tx| tx.send(req));
        let why = match sent {
            Some(Ok(())) => return None,
            Some(Err(_)) => "enroll: the inference thread has stopped",
            None => "enroll: enrollment installs into a model slot and needs [bundles]",
        };
        log::warn!("{topic}: {why}");
        Some(Refusal::Enroll(why.to_string()))
    }
}
