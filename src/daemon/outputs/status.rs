//! The retained `status` payload: online with the model serving, or offline and why.

use anyhow::Result;
use serde::Serialize;

use crate::config::PayloadFormat;
use crate::daemon::operator::reply::CameraStates;
use crate::daemon::payload::{self, ServingModel};

/// The retained `status` payload.
#[derive(Debug, Clone, Serialize)]
pub struct StatusPayload {
    /// "online" or "offline".
    pub state: &'static str,
    pub device_id: String,
    pub version: &'static str,
    pub model: String,
    pub model_sha256: String,
    pub schedule: String,
    pub engine: String,
    /// The retrain bundle serving (`None`: the factory model). Follows swaps and rollbacks.
    pub bundle_version: Option<u64>,
    /// How frames are scored: `maeday`, or `ensemble (bank 3136 rows)` once enrolled.
    pub scorer: String,
    pub cameras: Vec<String>,
    /// Per camera: paused by an operator, the thresholds in force and where they come from.
    pub camera_state: CameraStates,
    /// The payload format of result, status and metrics (`output.format`: `json` or `cbor`).
    pub format: &'static str,
    /// Why offline: "shutdown" (clean stop) or "connection lost" (the Last Will).
    pub reason: Option<&'static str>,
}

impl StatusPayload {
    pub fn online(
        device_id: &str,
        cameras: Vec<String>,
        s: ServingModel,
        format: PayloadFormat,
    ) -> StatusPayload {
        StatusPayload {
            state: "online",
            device_id: device_id.to_string(),
            version: env!("CARGO_PKG_VERSION"),
            model: s.name,
            model_sha256: s.sha256,
            schedule: s.schedule,
            engine: s.engine,
            bundle_version: s.bundle_version,
            scorer: s.scorer,
            cameras,
            camera_state: CameraStates::new(),
            format: format.name(),
            reason: None,
        }
    }

    /// The model serving changed (a swap, rollback or enrollment).
    pub fn serve(&mut self, s: ServingModel) {
        self.model = s.name;
        self.model_sha256 = s.sha256;
        self.schedule = s.schedule;
        self.engine = s.engine;
        self.bundle_version = s.bundle_version;
        self.scorer = s.scorer;
    }

    /// The same status, offline for `reason` ("connection lost": the Last Will).
    pub fn offline(&self, reason: &'static str) -> StatusPayload {
        StatusPayload {
            state: "offline",
            reason: Some(reason),
            ..self.clone()
        }
    }

    pub fn encode(&self, format: PayloadFormat) -> Result<Vec<u8>> {
        payload::encode(self, format)
    }
}
