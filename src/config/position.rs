//! `[position]`: where the camera is, for cameras that move (FOD carts, patrol robots).
//!
//! A result from a moving camera is only useful with where it was taken. The daemon
//! subscribes to one MQTT topic filter (a robot's pose, a gpsd bridge), reads a few
//! numeric fields of its JSON payload, and stamps every result and event with the newest
//! pose and its age. The keys and their checks live here; the reader in
//! `daemon::position`.

use std::time::Duration;

use anyhow::{ensure, Result};
use serde::Deserialize;

/// The most fields a pose may carry (x, y, z, roll, pitch, yaw, ...).
pub const MAX_FIELDS: usize = 8;

/// The longest field path (`pose.position.x`).
const MAX_FIELD_CHARS: usize = 64;

/// The longest topic filter.
const MAX_TOPIC_CHARS: usize = 256;

/// The largest pose payload read, by default (bytes).
const DEFAULT_MAX_BYTES: usize = 1024;

/// The largest `max_bytes` allowed.
const MAX_MAX_BYTES: usize = 64 * 1024;

/// Keys the stamp adds itself: no field may take their name.
pub const RESERVED: [&str; 2] = ["age_ms", "stale"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionConfig {
    /// The MQTT topic filter to subscribe to (absolute: not under `mqtt.topic_prefix`).
    pub topic: String,
    /// The numeric fields to read; a dot goes down a level (`pose.position.x`).
    #[serde(default = "default_fields")]
    pub fields: Vec<String>,
    /// A pose older than this (seconds) is stale.
    #[serde(default = "default_max_age")]
    pub max_age_s: f64,
    /// The largest payload read (bytes); larger ones are refused.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

impl PositionConfig {
    pub fn validate(&self) -> Result<()> {
        let t = &self.topic;
        ensure!(
            !t.is_empty()
                && t.len() <= MAX_TOPIC_CHARS
                && !t.contains('\0')
                && !t.starts_with('$')
                && rumqttc::valid_filter(t),
            "position.topic: {t:?} must be an MQTT topic filter of 1-{MAX_TOPIC_CHARS} \
             characters ('+' and '#' only as whole levels, '#' last, not a '$' topic)"
        );
        ensure!(
            (1..=MAX_FIELDS).contains(&self.fields.len()),
            "position.fields: must name 1 to {MAX_FIELDS} fields (got {})",
            self.fields.len()
        );
        for (i, f) in self.fields.iter().enumerate() {
            ensure!(
                !f.is_empty()
                    && f.len() <= MAX_FIELD_CHARS
                    && f.split('.').all(|p| !p.is_empty())
                    && !f.chars().any(|c| c.is_control() || c.is_whitespace()),
                "position.fields[{i}]: {f:?} must be 1-{MAX_FIELD_CHARS} characters, no spaces, \
                 levels separated by single dots"
            );
            ensure!(
                !RESERVED.contains(&f.as_str()),
                "position.fields[{i}]: {f:?} is a name the stamp uses itself ({RESERVED:?})"
            );
            ensure!(
                !self.fields[..i].contains(f),
                "position.fields[{i}]: {f:?} is listed twice"
            );
        }
        ensure!(
            self.max_age_s.is_finite() && (0.001..=86_400.0).contains(&self.max_age_s),
            "position.max_age_s: must be 0.001 to 86400 (got {})",
            self.max_age_s
        );
        ensure!(
            (16..=MAX_MAX_BYTES).contains(&self.max_bytes),
            "position.max_bytes: must be 16 to {MAX_MAX_BYTES} (got {})",
            self.max_bytes
        );
        Ok(())
    }

    pub fn max_age(&self) -> Duration {
        Duration::from_secs_f64(self.max_age_s)
    }
}

fn default_fields() -> Vec<String> {
    vec!["x".into(), "y".into()]
}

fn default_max_age() -> f64 {
    2.0
}

fn default_max_bytes() -> usize {
    DEFAULT_MAX_BYTES
}

impl PositionConfig {
    /// The filter must not match the device's own topics: the broker would hand the
    /// device's results (or its commands) back as poses.
    pub fn validate_apart(&self, prefix: &str, device_id: &str, cameras: &[String]) -> Result<()> {
        let base = format!("{prefix}/{device_id}");
        let mut own = vec![
            format!("{base}/status"),
            format!("{base}/command"),
            format!("{base}/metrics"),
        ];
        for c in cameras {
            own.push(format!("{base}/{c}/result"));
            own.push(format!("{base}/{c}/anomalous"));
        }
        if let Some(t) = own.iter().find(|t| rumqttc::matches(t, &self.topic)) {
            anyhow::bail!(
                "position.topic: {:?} matches the device's own topic {t:?}",
                self.topic
            );
        }
        Ok(())
    }
}
