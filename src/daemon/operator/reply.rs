//! What the device answers: one [`Reply`] per request on `command/reply` (never retained),
//! and the per-camera [`CameraState`] the retained `status` carries.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::config::PayloadFormat;
use crate::daemon::mqtt::spool::Message;
use crate::daemon::operator::request::{Malformed, RequestId};
use crate::daemon::payload::{self, ResultPayload};
use crate::daemon::topics::Topics;

/// A camera as the operator left it: paused or not, the thresholds in force and where
/// they come from (`operator`, `config`, `model` or `bank`; `null` without thresholds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraState {
    pub paused: bool,
    pub image_threshold: Option<f32>,
    pub pixel_threshold: Option<f32>,
    pub thresholds_from: Option<&'static str>,
    /// Why operator thresholds were dropped (`model changed`), until new ones are set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholds_reset: Option<&'static str>,
}

/// Camera name -> state, as `status.camera_state` and in replies.
pub type CameraStates = BTreeMap<String, CameraState>;

/// Where a snapshot went.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub topic: String,
    pub bytes: usize,
    pub width: u32,
    pub height: u32,
    pub seq: u64,
}

/// The reply to one request.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Reply {
    /// The request's id (`null` when it had no valid one).
    pub id: Option<RequestId>,
    /// The command (`null` when it named none the device knows).
    pub command: Option<&'static str>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The cameras the command changed, as they are now (pause, resume, thresholds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cameras: Option<CameraStates>,
    /// `trigger`: the scored frame's result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultPayload>,
    /// `snapshot`: the JPEG published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
}

impl Reply {
    pub fn ok(id: RequestId, command: &'static str) -> Reply {
        Reply {
            id: Some(id),
            command: Some(command),
            ok: true,
            ..Default::default()
        }
    }

    pub fn error(id: Option<RequestId>, command: Option<&'static str>, error: String) -> Reply {
        Reply {
            id,
            command,
            ok: false,
            error: Some(error),
            ..Default::default()
        }
    }

    pub fn malformed(m: Malformed) -> Reply {
        Reply::error(m.id, m.command, m.error)
    }

    /// The message on `command/reply`.
    pub fn message(&self, topics: &Topics, format: PayloadFormat) -> Result<Message> {
        Ok(Message {
            topic: topics.command_reply(),
            payload: payload::encode(self, format)?,
        })
    }
}
