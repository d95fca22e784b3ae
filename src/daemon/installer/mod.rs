//! The installer thread: changes what the device serves while the current model keeps
//! serving frames.
//!
//! Inputs ([`InstallerInput`]) come from the MQTT side: bundle chunks, `rollback`, and
//! enrollment jobs with captured good frames. Outputs are status messages (`bundle/status`,
//! `enroll/status`, through the outbox) and [`Swap`]s: a loaded detector the inference
//! thread takes between two frames. Every change ends the same way (`Installer::hand_over`):
//! the detector goes to the inference thread, then the slot choice is persisted, then the
//! installer builds on the new model.
//!
//! What each input does is in its own file: `install` (chunks, verification, staging,
//! golden frames), `enroll` (a memory bank from good frames, or enrolled again for a new
//! graph), `rollback`. The A/B slots on disk are `crate::update::slots`.

mod enroll;
mod install;
mod rollback;

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};

use anyhow::Result;
use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use crate::daemon::events::{Events, SinkEvent};
use crate::daemon::mqtt::spool::Message;
use crate::daemon::topics::Topics;
use crate::detect::detector::{Detector, DetectorOptions};
use crate::detect::fuse::ScorerKind;
use crate::detect::preprocess::Fit;
use crate::enroll::request::{EnrollJob, EnrollStatus};
use crate::enroll::EnrollSettings;
use crate::model::manifest::Model;
use crate::update::bundle::{reject, Rejection};
use crate::update::slots::Slots;
use crate::update::transfer::{Assembler, Limits};

/// What the installer thread is asked to do.
pub enum InstallerInput {
    /// A message on a bundle chunk topic.
    Chunk(Vec<u8>),
    Rollback,
    /// Build a memory bank from captured good frames and install it.
    Enroll(EnrollJob),
}

/// A loaded detector for the inference thread to switch to between two frames.
pub struct Swap {
    pub detector: Detector,
    /// The bundle version now serving (`None`: the factory model).
    pub version: Option<u64>,
}

/// The `bundle/status` payload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BundleStatus {
    /// `receiving`, `chunk-rejected` (one chunk refused; the transfer goes on), `installed`,
    /// `rejected` (the bundle; with `reason`), `rolled-back`.
    pub state: &'static str,
    pub bundle_sha256: String,
    pub version: Option<u64>,
    pub received: Option<u32>,
    pub count: Option<u32>,
    /// Up to 64 chunk indexes still missing (a sender re-sends them).
    pub missing: Vec<u32>,
    pub reason: Option<&'static str>,
    pub detail: Option<String>,
    /// Milliseconds from the complete bundle to the switch.
    pub install_ms: Option<f64>,
}

pub struct InstallerSettings {
    pub device_id: String,
    /// `mqtt.topic_prefix`.
    pub topic_prefix: String,
    pub groups: Vec<String>,
    pub trusted: Vec<VerifyingKey>,
    pub max_bundle_bytes: u64,
    /// Bounds on partial transfers.
    pub limits: Limits,
    pub state_dir: PathBuf,
    /// How serving detectors are built (device overrides such as the mask count).
    pub serving: DetectorOptions,
    pub format: crate::config::PayloadFormat,
    pub enroll: EnrollSettings,
    /// The model shipped with the device (what a rollback past every slot returns to).
    pub factory: PathBuf,
}

impl InstallerSettings {
    /// The scratch detector a memory bank is enrolled with: the serving options (engine,
    /// mask overrides, extractor) with MAEDAY alone, no bank, and the frames' `fit`.
    fn enrollment_options(&self, fit: Fit) -> DetectorOptions {
        DetectorOptions {
            fit,
            scorer: Some(ScorerKind::Maeday),
            banks: Vec::new(),
            ..self.serving.clone()
        }
    }
}

/// How the persisted slot choice changes once the inference thread has the new detector.
enum SlotChange {
    /// A freshly staged slot serves (`sha`: the bundle's, for a bundle install).
    Activate { slot: String, sha: Option<String> },
    /// The previous slot serves again.
    Rollback,
    /// The factory model serves.
    Factory,
}

/// A model to serve next, as [`Installer::hand_over`] takes it.
struct Handover {
    model: Model,
    /// Already loaded (the golden-checked detector); `None`: built with the serving options.
    detector: Option<Detector>,
    /// The bundle version it is (`None`: the factory model, or an enrollment on it).
    version: Option<u64>,
    change: SlotChange,
}

pub struct Installer {
    s: InstallerSettings,
    slots: Slots,
    assembler: Assembler,
    /// The model serving now (what a settings-only bundle builds on; its ABI is the device's).
    serving: Model,
    status_topic: String,
    enroll_topic: String,
    outbox: Events,
    swaps: Sender<Swap>,
}

impl Installer {
    pub fn new(
        s: InstallerSettings,
        slots: Slots,
        serving: Model,
        outbox: Events,
        swaps: Sender<Swap>,
    ) -> Result<Installer> {
        let assembler = Assembler::new(&s.state_dir.join("incoming"), s.limits.clone())?;
        Ok(Installer {
            status_topic: Topics::with_prefix(&s.topic_prefix, &s.device_id, &[]).bundle_status(),
            enroll_topic: Topics::with_prefix(&s.topic_prefix, &s.device_id, &[]).enroll_status(),
            s,
            slots,
            assembler,
            serving,
            outbox,
            swaps,
        })
    }

    /// Serve requests until the sender side closes.
    pub fn run(mut self, inputs: Receiver<InstallerInput>) {
        // Loading and testing a model must not slow the model serving frames: run this
        // thread (and the scoring threads it spawns, which inherit it) at nice 10. On Linux
        // the nice value is per thread.
        #[cfg(target_os = "linux")]
        // SAFETY: setpriority only reads its integer arguments; who = 0 is this thread.
        unsafe {
            if libc::setpriority(libc::PRIO_PROCESS, 0, 10) != 0 {
                log::debug!("cannot lower the installer's priority");
            }
        }
        for input in inputs {
            match input {
                InstallerInput::Chunk(bytes) => self.on_chunk(&bytes),
                InstallerInput::Rollback => self.rollback(),
                InstallerInput::Enroll(job) => self.enroll(job),
            }
        }
    }

    /// Switch to a new model: build its detector (unless given), send it to the inference
    /// thread, persist the slot choice, and build on the model from now on. Any failure
    /// before the send leaves the serving model and the persisted choice untouched.
    fn hand_over(&mut self, h: Handover) -> Result<(), Rejection> {
        let detector = match h.detector {
            Some(d) => d,
            None => Detector::new(h.model.clone(), &self.s.serving)
                .map_err(|e| reject("invalid-model", format!("{e:#}")))?,
        };
        self.swaps
            .send(Swap {
                detector,
                version: h.version,
            })
            .map_err(|_| reject("install-failed", "the inference thread has stopped"))?;
        crate::faults::crash_point("switched");
        let persisted = match &h.change {
            SlotChange::Activate { slot, sha } => {
                self.slots
                    .activate(slot, h.version.unwrap_or(0), sha.as_deref())
            }
            SlotChange::Rollback => self.slots.swap(),
            SlotChange::Factory => self.slots.to_factory(),
        };
        persisted.map_err(|e| reject("install-failed", format!("{e:#}")))?;
        self.serving = h.model;
        Ok(())
    }

    fn status(&self, st: &BundleStatus) {
        self.publish(&self.status_topic, "bundle", st);
    }

    fn enroll_status(&self, st: &EnrollStatus) {
        self.publish(&self.enroll_topic, "enroll", st);
    }

    fn publish(&self, topic: &str, what: &str, payload: &impl Serialize) {
        match crate::daemon::payload::encode(payload, self.s.format) {
            Ok(payload) => {
                let _ = self.outbox.send(SinkEvent::Outbox(Message {
                    topic: topic.to_string(),
                    payload,
                }));
            }
            Err(e) => log::error!("cannot encode the {what} status: {e:#}"),
        }
    }

    /// Publish a refusal of a bundle (or of a rollback: no sha); the serving model stays.
    fn rejected(&self, sha: &str, version: Option<u64>, r: &Rejection) {
        log::warn!("bundle {sha} rejected: {r}; the current model keeps serving");
        self.status(&BundleStatus {
            state: "rejected",
            bundle_sha256: sha.to_string(),
            version,
            reason: Some(r.reason),
            detail: Some(r.detail.clone()),
            ..Default::default()
        });
    }
}
