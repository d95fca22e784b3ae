//! `[commands]`: the operator commands on `<prefix>/<device>/command` (JSON requests with
//! an id, each acknowledged on `command/reply`).
//!
//! Pause/resume and thresholds change what the device reports, so by default they must be
//! signed like `rollback` (an attacker on the broker could otherwise blind the device);
//! `allow_unsigned = true` accepts them unsigned, for a locked-down broker where only the
//! operators can publish on the command topic. Trigger, snapshot and metrics only read.

use anyhow::{ensure, Result};
use serde::Deserialize;

use super::http::FRAME_PX;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    /// Accept unsigned `pause`, `resume` and `thresholds` requests.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// How long a `trigger` or `snapshot` waits for its camera's next frame before its
    /// reply says it got none (seconds).
    #[serde(default = "default_reply_timeout")]
    pub reply_timeout_s: f64,
    /// The snapshot JPEG's longest side (pixels; halved further until it fits a packet).
    #[serde(default = "default_snapshot_max_px")]
    pub snapshot_max_px: u32,
    /// The snapshot JPEG's quality (1..100).
    #[serde(default = "default_snapshot_quality")]
    pub snapshot_quality: u8,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            allow_unsigned: false,
            reply_timeout_s: default_reply_timeout(),
            snapshot_max_px: default_snapshot_max_px(),
            snapshot_quality: default_snapshot_quality(),
        }
    }
}

fn default_reply_timeout() -> f64 {
    10.0
}

fn default_snapshot_max_px() -> u32 {
    1280
}

fn default_snapshot_quality() -> u8 {
    80
}

impl CommandsConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.reply_timeout_s.is_finite() && (0.1..=3600.0).contains(&self.reply_timeout_s),
            "commands.reply_timeout_s: must be 0.1 to 3600 (got {})",
            self.reply_timeout_s
        );
        ensure!(
            FRAME_PX.contains(&self.snapshot_max_px),
            "commands.snapshot_max_px: must be {} to {} (got {})",
            FRAME_PX.start(),
            FRAME_PX.end(),
            self.snapshot_max_px
        );
        ensure!(
            (1..=100).contains(&self.snapshot_quality),
            "commands.snapshot_quality: must be 1 to 100 (got {})",
            self.snapshot_quality
        );
        Ok(())
    }

    /// How long a frame request waits.
    pub fn reply_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.reply_timeout_s)
    }
}
