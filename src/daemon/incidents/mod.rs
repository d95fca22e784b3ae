//! Anomaly events ("incidents", so as not to be confused with the sink thread's
//! [`crate::daemon::events`] channel): each camera's results, in order, become debounced
//! events with a lifecycle (`start`, `update`, `end`) on `<camera>/event`, their evidence
//! (a JPEG of the heatmap at the peak, [`evidence`]) on `<camera>/evidence`, and a
//! retained `ON`/`OFF` on `<camera>/anomalous` (Home Assistant's binary sensor reads it).
//!
//! Per-frame verdicts flicker; what a person or an automation reacts to is one event per
//! object passing by. [`debounce`] is the pure state machine; this file feeds it on the
//! sink thread (after the frame's own result is handed to the outputs) and turns its steps
//! into messages. Events are results: QoS 1, spooled while the broker is away.

pub mod debounce;
pub mod evidence;

use std::collections::HashMap;

use anyhow::Result;
use serde::Serialize;

use crate::config::{EventsConfig, PayloadFormat};
use crate::daemon::mqtt::spool::Message;
use crate::daemon::payload::{self, Blob, FrameResult};
use crate::daemon::position::PositionStamp;
use crate::daemon::topics::Topics;
use debounce::{Debouncer, Incident, Seen, Settings, Step};
use evidence::{EvidenceSettings, PeakFrame};

/// The retained state payloads (Home Assistant's binary sensor defaults).
pub const ON: &[u8] = b"ON";
pub const OFF: &[u8] = b"OFF";

/// The `<camera>/event` payload.
#[derive(Debug, Clone, Serialize)]
pub struct EventPayload<'a> {
    /// `start`, `update` or `end`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `<camera>-<boot>-<seq of the first anomalous frame>`: unique for good.
    pub event_id: String,
    pub device_id: &'a str,
    pub camera: &'a str,
    pub boot: u64,
    pub start_unix_ms: u64,
    /// The last anomalous frame's capture time; `null` until `end`.
    pub end_unix_ms: Option<u64>,
    /// The last anomalous frame so far.
    pub last_unix_ms: u64,
    /// Anomalous frames so far.
    pub frames: u64,
    pub peak: PeakInfo,
    /// The peak frame's blobs (strongest first, frame pixels).
    pub blobs: &'a [Blob],
    pub image_threshold: Option<f32>,
    /// An `<camera>/evidence` JPEG of this peak follows.
    pub evidence: bool,
    /// With `[position]`: where the camera was at the peak frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<PositionStamp>,
}

/// Where an event peaked.
#[derive(Debug, Clone, Serialize)]
pub struct PeakInfo {
    pub score: f32,
    pub seq: u64,
    pub captured_unix_ms: u64,
    /// The strongest blob's `[x, y, w, h]` in frame pixels.
    pub bbox: Option<[u32; 4]>,
}

/// One camera's debouncer and the picture of its event's peak.
struct Camera {
    debouncer: Debouncer,
    peak: Option<PeakFrame>,
    /// The peak (seq) whose evidence went out last.
    evidence_of: Option<u64>,
    /// The (candidate) peak frame's position stamp.
    peak_position: Option<PositionStamp>,
}

/// What one frame asks to publish.
#[derive(Default)]
pub struct Publish {
    /// Event and evidence messages (QoS 1, spooled).
    pub messages: Vec<Message>,
    /// The new retained `anomalous` state.
    pub state: Option<Message>,
    /// The event message's gist (the live page lists it).
    pub summary: Option<EventSummary>,
}

/// The gist of an event message, for the live page.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSummary {
    pub event_id: String,
    pub camera: String,
    pub boot: u64,
    pub start_unix_ms: u64,
    pub last_unix_ms: u64,
    pub frames: u64,
    pub peak_score: f32,
    pub peak_seq: u64,
    pub image_threshold: Option<f32>,
    /// This message is the event's `end`.
    pub ended: bool,
}

impl EventSummary {
    fn of(step: Step, incident: &Incident, p: &payload::ResultPayload) -> EventSummary {
        EventSummary {
            event_id: format!("{}-{}-{}", p.camera, p.boot, incident.first_seq),
            camera: p.camera.clone(),
            boot: p.boot,
            start_unix_ms: incident.start_ms,
            last_unix_ms: incident.last_ms,
            frames: incident.frames,
            peak_score: incident.peak.score,
            peak_seq: incident.peak.seq,
            image_threshold: p.image_threshold,
            ended: step == Step::End,
        }
    }
}

/// The events of every camera, on the sink thread.
pub struct Incidents {
    settings: Settings,
    evidence: Option<EvidenceSettings>,
    topics: Topics,
    format: PayloadFormat,
    cameras: HashMap<String, Camera>,
}

impl Incidents {
    pub fn new(
        cfg: &EventsConfig,
        topics: Topics,
        format: PayloadFormat,
        max_packet: usize,
    ) -> Incidents {
        Incidents {
            settings: Settings {
                start_frames: cfg.start_frames,
                end_frames: cfg.end_frames,
                update_interval: cfg.update_interval(),
            },
            evidence: cfg.evidence.then_some(EvidenceSettings {
                max_px: cfg.evidence_max_px,
                quality: cfg.evidence_quality,
                max_packet,
            }),
            topics,
            format,
            cameras: HashMap::new(),
        }
    }

    /// Whether the inference thread must keep each frame's pixels (for the evidence).
    pub fn wants_pixels(cfg: &EventsConfig) -> bool {
        cfg.evidence
    }

    /// The retained `OFF` of each camera at start: no event is open.
    pub fn initial_states(&self, cameras: &[String]) -> Vec<Message> {
        cameras.iter().map(|c| self.state(c, false)).collect()
    }

    fn state(&self, camera: &str, on: bool) -> Message {
        Message {
            topic: self.topics.anomalous(camera),
            payload: if on { ON } else { OFF }.to_vec(),
        }
    }

    /// Feed one scored frame (in order per camera); what to publish after its result.
    pub fn observe(&mut self, r: &FrameResult) -> Result<Publish> {
        let p = &r.payload;
        let settings = self.settings;
        let cam = self
            .cameras
            .entry(p.camera.clone())
            .or_insert_with(|| Camera {
                debouncer: Debouncer::new(settings),
                peak: None,
                evidence_of: None,
                peak_position: None,
            });
        let seen = Seen {
            anomalous: p.anomalous == Some(true),
            score: p.score,
            seq: p.seq,
            at_ms: p.captured_unix_ms,
            blobs: &p.blobs,
        };
        let o = cam.debouncer.observe(seen);
        if o.new_peak && self.evidence.is_some() {
            cam.peak = PeakFrame::of(r);
        }
        if o.new_peak {
            cam.peak_position = p.position.clone();
        }
        let Some(step) = o.step else {
            if cam.debouncer.incident().is_none() && o.ended.is_none() && !seen.anomalous {
                cam.peak = None;
            }
            return Ok(Publish::default());
        };
        let incident = match (&o.ended, cam.debouncer.incident()) {
            (Some(i), _) | (None, Some(i)) => i.clone(),
            (None, None) => return Ok(Publish::default()),
        };
        let evidence = match (&self.evidence, &cam.peak) {
            (Some(s), Some(frame)) if cam.evidence_of != Some(incident.peak.seq) => {
                cam.evidence_of = Some(incident.peak.seq);
                frame.jpeg(&self.topics.evidence(&p.camera), *s)?
            }
            _ => None,
        };
        let mut out = Publish::default();
        if step != Step::Update {
            log::info!(
                "{} event {}-{}-{} {step:?}: {} anomalous frame(s), peak {:.4} at #{}",
                p.camera,
                p.camera,
                p.boot,
                incident.first_seq,
                incident.frames,
                incident.peak.score,
                incident.peak.seq
            );
        }
        let position = cam.peak_position.clone();
        let event = self.event(step, &incident, r, evidence.is_some(), position)?;
        out.summary = Some(EventSummary::of(step, &incident, p));
        out.messages.push(event);
        out.messages.extend(evidence.map(|jpeg| Message {
            topic: self.topics.evidence(&p.camera),
            payload: jpeg,
        }));
        match step {
            Step::Start => out.state = Some(self.state(&p.camera, true)),
            Step::End => {
                out.state = Some(self.state(&p.camera, false));
                if let Some(cam) = self.cameras.get_mut(&p.camera) {
                    cam.peak = None;
                }
            }
            Step::Update => {}
        }
        Ok(out)
    }

    fn event(
        &self,
        step: Step,
        inc: &Incident,
        r: &FrameResult,
        evidence: bool,
        position: Option<PositionStamp>,
    ) -> Result<Message> {
        let p = &r.payload;
        let event = EventPayload {
            kind: match step {
                Step::Start => "start",
                Step::Update => "update",
                Step::End => "end",
            },
            event_id: format!("{}-{}-{}", p.camera, p.boot, inc.first_seq),
            device_id: &p.device_id,
            camera: &p.camera,
            boot: p.boot,
            start_unix_ms: inc.start_ms,
            end_unix_ms: (step == Step::End).then_some(inc.last_ms),
            last_unix_ms: inc.last_ms,
            frames: inc.frames,
            peak: PeakInfo {
                score: inc.peak.score,
                seq: inc.peak.seq,
                captured_unix_ms: inc.peak.at_ms,
                bbox: inc.peak.blobs.first().map(|b| b.bbox),
            },
            blobs: &inc.peak.blobs,
            image_threshold: p.image_threshold,
            evidence,
            position,
        };
        Ok(Message {
            topic: self.topics.event(&p.camera),
            payload: payload::encode(&event, self.format)?,
        })
    }
}
