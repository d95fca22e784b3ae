//! Enrollment asked for over MQTT: the operator's request (`enroll [frames] [camera]`), the
//! good frames the daemon captured for it, and the progress reported on `enroll/status`.

use anyhow::Result;
use serde::Serialize;

use crate::bank::store::Shot;
use crate::detect::preprocess::Fit;

/// The `enroll [frames] [camera]` command, as the inference thread gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollRequest {
    /// `None`: `[enroll] frames`.
    pub frames: Option<usize>,
    /// `None`: the first camera.
    pub camera: Option<String>,
}

impl EnrollRequest {
    /// `[]`, `["4"]`, `["4", "line1"]`.
    pub fn parse(args: &[&str]) -> Result<EnrollRequest> {
        anyhow::ensure!(args.len() <= 2, "usage: enroll [frames] [camera]");
        let frames = match args.first() {
            Some(n) => {
                let n: usize = n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("enroll: {n:?} is not a frame count"))?;
                anyhow::ensure!((1..=64).contains(&n), "enroll: frames must be 1 to 64");
                Some(n)
            }
            None => None,
        };
        Ok(EnrollRequest {
            frames,
            camera: args.get(1).map(|c| c.to_string()),
        })
    }
}

/// Good frames captured from a live camera, ready to enroll.
pub struct EnrollJob {
    pub camera: String,
    pub fit: Fit,
    pub shots: Vec<Shot>,
}

/// The `enroll/status` payload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EnrollStatus {
    /// `building`, `enrolled`, `rejected` (with `detail`).
    pub state: &'static str,
    pub camera: String,
    pub frames: usize,
    pub rows: Option<usize>,
    pub rows_before_coreset: Option<usize>,
    pub image_threshold: Option<f32>,
    /// Milliseconds from the captured frames to the switch.
    pub enroll_ms: Option<f64>,
    pub detail: Option<String>,
}
