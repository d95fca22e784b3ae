//! The sink thread's side of operator requests: runs each [`Request`] and answers it
//! exactly once on `command/reply`.
//!
//! Pause, resume and thresholds are answered at once (after the change is persisted), with
//! the cameras' new state; the retained `status` follows. `trigger` and `snapshot` ask the
//! inference thread for the camera's next frame (a paused camera captures one for them)
//! and are answered when that frame's result reaches this thread: `trigger` with the
//! result, `snapshot` after its JPEG went out on `<camera>/snapshot`. A frame request
//! that gets no frame within `commands.reply_timeout_s` (a camera that has ended or
//! fails) is answered with an error; at most [`MAX_WAITING`] wait at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use image::RgbImage;

use crate::config::{Config, PayloadFormat};
use crate::daemon::http::feed::HttpFeed;
use crate::daemon::mqtt::spool::Message;
use crate::daemon::operator::reply::{CameraStates, Reply, SnapshotInfo};
use crate::daemon::operator::request::{Action, Request, RequestId, ThresholdChange};
use crate::daemon::operator::snapshot;
use crate::daemon::operator::state::{Base, FrameAsk, Operator};
use crate::daemon::outputs::Outputs;
use crate::daemon::payload::{ResultPayload, ServingModel};
use crate::daemon::topics::Topics;
use crate::model::manifest::Thresholds;

/// Frame requests waiting at once; more are refused.
pub const MAX_WAITING: usize = 64;

/// A `trigger` or `snapshot` waiting for its frame.
struct Waiting {
    id: RequestId,
    camera: usize,
    command: &'static str,
    deadline: Instant,
    /// Inference took it (its frame is being scored) when it first timed out.
    taken: bool,
}

/// Runs operator requests on the sink thread.
pub struct Desk {
    operator: Arc<Operator>,
    topics: Topics,
    format: PayloadFormat,
    names: Vec<String>,
    /// `camera.thresholds` of each camera.
    config_thresholds: Vec<Option<Thresholds>>,
    /// What each camera has without the operator (follows the serving model).
    bases: Vec<Base>,
    waiting: Vec<Waiting>,
    timeout: Duration,
    snapshot_max_px: u32,
    snapshot_quality: u8,
}

impl Desk {
    pub fn new(
        config: &Config,
        operator: Arc<Operator>,
        topics: Topics,
        serving: &ServingModel,
    ) -> Desk {
        let config_thresholds: Vec<_> = config.cameras.iter().map(|c| c.thresholds).collect();
        Desk {
            bases: config_thresholds
                .iter()
                .map(|t| Base::of(*t, serving))
                .collect(),
            config_thresholds,
            operator,
            topics,
            format: config.output.format,
            names: config.cameras.iter().map(|c| c.name.clone()).collect(),
            waiting: Vec::new(),
            timeout: config.commands.reply_timeout(),
            snapshot_max_px: config.commands.snapshot_max_px,
            snapshot_quality: config.commands.snapshot_quality,
        }
    }

    /// Every camera's state now (the retained status's `camera_state`).
    pub fn states(&self) -> CameraStates {
        self.operator.states(&self.bases)
    }

    /// Run one request; true when it asks for the metrics.
    pub fn handle(&mut self, req: Request, out: &mut Outputs, http: Option<&HttpFeed>) -> bool {
        let Request { id, action } = req;
        let command = action.name();
        let rid = id.clone();
        let reply = match action {
            Action::Metrics => Ok(Some(Reply::ok(id, command))),
            Action::Pause { camera } | Action::Resume { camera } => {
                let paused = command == "pause";
                self.operator
                    .set_paused(camera, paused)
                    .map(|()| Some(self.changed(id, command, &[camera], out, http)))
            }
            Action::Thresholds { camera, change } => {
                let cameras: Vec<usize> =
                    camera.map_or((0..self.names.len()).collect(), |c| vec![c]);
                self.thresholds(&cameras, change).and_then(|()| {
                    self.operator.set_thresholds(&cameras, change)?;
                    Ok(Some(self.changed(id, command, &cameras, out, http)))
                })
            }
            Action::Trigger { camera } => Ok(self.ask(id, command, camera, false)),
            Action::Snapshot { camera } => Ok(self.ask(id, command, camera, true)),
        };
        let reply = reply.unwrap_or_else(|e| {
            log::error!("{command}: {e:#}");
            Some(Reply::error(Some(rid), Some(command), format!("{e:#}")))
        });
        if let Some(r) = reply {
            self.send(r, out);
        }
        command == "metrics"
    }

    /// A set that would leave a camera with only one threshold is refused.
    fn thresholds(&self, cameras: &[usize], change: ThresholdChange) -> Result<()> {
        let ThresholdChange::Set { image, pixel } = change else {
            return Ok(());
        };
        for &c in cameras {
            let current = self.operator.thresholds(c, self.bases[c].thresholds);
            anyhow::ensure!(
                (image.is_some() || current.is_some()) && (pixel.is_some() || current.is_some()),
                "camera {}: it has no thresholds yet (the model is not calibrated): give both \
                 image and pixel",
                self.names[c]
            );
        }
        Ok(())
    }

    /// The reply to a change of `cameras`, after the status follows it.
    fn changed(
        &self,
        id: RequestId,
        command: &'static str,
        cameras: &[usize],
        out: &mut Outputs,
        http: Option<&HttpFeed>,
    ) -> Reply {
        let states = self.publish_state(out, http);
        let changed = cameras
            .iter()
            .filter_map(|&c| {
                let name = &self.names[c];
                states.get(name).map(|s| (name.clone(), s.clone()))
            })
            .collect();
        Reply {
            cameras: Some(changed),
            ..Reply::ok(id, command)
        }
    }

    /// Queue a frame request; a reply now only when it is refused.
    fn ask(
        &mut self,
        id: RequestId,
        command: &'static str,
        camera: usize,
        snapshot: bool,
    ) -> Option<Reply> {
        if self.waiting.len() >= MAX_WAITING {
            let why = format!("{MAX_WAITING} frame requests are waiting already");
            return Some(Reply::error(Some(id), Some(command), why));
        }
        if self.waiting.iter().any(|w| w.id == id) {
            let why = "a request with this id is waiting already".to_string();
            return Some(Reply::error(Some(id), Some(command), why));
        }
        self.operator.ask(
            camera,
            FrameAsk {
                id: id.clone(),
                snapshot,
            },
        );
        self.waiting.push(Waiting {
            id,
            camera,
            command,
            deadline: Instant::now() + self.timeout,
            taken: false,
        });
        None
    }

    /// A scored frame that answers `asks`; `frame` is its whole picture when a snapshot
    /// asked for it.
    pub fn answer(
        &mut self,
        asks: Vec<FrameAsk>,
        result: &ResultPayload,
        frame: Option<&RgbImage>,
        out: &mut Outputs,
    ) -> Result<()> {
        for ask in asks {
            let Some(i) = self.waiting.iter().position(|w| w.id == ask.id) else {
                continue; // answered already (timed out)
            };
            let w = self.waiting.swap_remove(i);
            let reply = match (ask.snapshot, frame) {
                (true, Some(f)) => self.snapshot(w.id, w.command, result, f, out)?,
                (true, None) => Reply::error(Some(w.id), Some(w.command), "no frame kept".into()),
                (false, _) => Reply {
                    result: Some(result.clone()),
                    ..Reply::ok(w.id, w.command)
                },
            };
            self.send(reply, out);
        }
        Ok(())
    }

    fn snapshot(
        &self,
        id: RequestId,
        command: &'static str,
        result: &ResultPayload,
        frame: &RgbImage,
        out: &mut Outputs,
    ) -> Result<Reply> {
        let topic = self.topics.snapshot(&result.camera);
        let Some(max_packet) = out.max_packet_bytes() else {
            return Ok(Reply::error(
                Some(id),
                Some(command),
                "no MQTT output".into(),
            ));
        };
        let q = self.snapshot_quality;
        Ok(
            match snapshot::jpeg(frame, &topic, self.snapshot_max_px, q, max_packet)? {
                Some(snapshot::Jpeg {
                    bytes,
                    size: (width, height),
                }) => {
                    let info = SnapshotInfo {
                        topic: topic.clone(),
                        bytes: bytes.len(),
                        width,
                        height,
                        seq: result.seq,
                    };
                    out.publish_transient(Message {
                        topic,
                        payload: bytes,
                    });
                    Reply {
                        snapshot: Some(info),
                        ..Reply::ok(id, command)
                    }
                }
                None => {
                    let why = "the JPEG does not fit in mqtt.max_packet_bytes".to_string();
                    Reply::error(Some(id), Some(command), why)
                }
            },
        )
    }

    /// Answer the frame requests whose frame did not come in time.
    pub fn expire(&mut self, out: &mut Outputs) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.waiting.len() {
            let w = &mut self.waiting[i];
            if now < w.deadline {
                i += 1;
                continue;
            }
            if !w.taken && !self.operator.withdraw(w.camera, &w.id) {
                // Inference took it: its frame is being scored; give it one more period.
                w.taken = true;
                w.deadline = now + self.timeout;
                i += 1;
                continue;
            }
            let w = self.waiting.swap_remove(i);
            let why = format!(
                "no frame from camera {} within {:.1} s",
                self.names[w.camera],
                self.timeout.as_secs_f64()
            );
            log::warn!("{} {}: {why}", w.command, w.id.as_str());
            self.send(Reply::error(Some(w.id), Some(w.command), why), out);
        }
    }

    /// Another model serves: the thresholds the cameras have without the operator follow
    /// it (the inference thread dropped operator thresholds set for the old one).
    pub fn serving_changed(
        &mut self,
        s: &ServingModel,
        out: &mut Outputs,
        http: Option<&HttpFeed>,
    ) {
        self.bases = self
            .config_thresholds
            .iter()
            .map(|t| Base::of(*t, s))
            .collect();
        self.publish_state(out, http);
    }

    /// The retained status (and `/api/status`) follow the cameras' state.
    pub fn publish_state(&self, out: &mut Outputs, http: Option<&HttpFeed>) -> CameraStates {
        let states = self.states();
        if let Some(h) = http {
            h.camera_state(states.clone());
        }
        if let Err(e) = out.camera_state(states.clone()) {
            log::error!("status: {e:#}");
        }
        states
    }

    fn send(&self, reply: Reply, out: &mut Outputs) {
        match reply.message(&self.topics, self.format) {
            Ok(m) => out.publish_transient(m),
            Err(e) => log::error!("command reply: {e:#}"),
        }
    }
}
