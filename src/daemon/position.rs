//! The position stamp (`[position]`): the newest pose of a moving camera (a FOD cart's
//! robot pose, a gpsd bridge), read from one MQTT topic filter, stamped on every result
//! and event with its age.
//!
//! Runs on the sink thread, which receives the pose messages and stamps the results, so
//! nothing is shared. A pose is state, so a retained one is taken (the newest pose at
//! connect). The payload is hostile: at most `position.max_bytes`, a JSON object whose
//! configured fields are all finite numbers, or it is refused whole (logged, rate-limited)
//! and the previous pose stays, ageing. Never invented: a frame captured before any pose
//! is stamped `{"age_ms": null, "stale": true}` without coordinates.
//!
//! Poses are stamped by capture time, not publish time: a frame is scored a few hundred
//! milliseconds after its capture, while poses keep arriving, so the last
//! [`HISTORY`] poses are kept and a frame gets the newest one received at or before its
//! capture (`age_ms` = capture time minus the pose's receipt time).

use std::collections::VecDeque;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

use crate::config::PositionConfig;
use crate::daemon::throttle::{more, Throttle};
use crate::update::command::excerpt;

/// Poses kept to stamp frames by their capture time (2.5 s of a 100 Hz pose topic).
pub const HISTORY: usize = 256;

/// One pose as received.
#[derive(Debug, Clone, PartialEq)]
struct Pose {
    /// Receipt time, ms since the Unix epoch.
    received_ms: u64,
    /// The configured fields' values, in their order.
    values: Vec<f64>,
}

/// The `position` of a result or event.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionStamp {
    /// The configured fields and their values; empty when no pose was known.
    pub fields: Vec<(String, f64)>,
    /// Capture time minus the pose's receipt time; `None` when no pose was known.
    pub age_ms: Option<u64>,
    /// Older than `position.max_age_s`, or no pose known.
    pub stale: bool,
}

impl Serialize for PositionStamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.fields.len() + 2))?;
        for (k, v) in &self.fields {
            m.serialize_entry(k, v)?;
        }
        m.serialize_entry("age_ms", &self.age_ms)?;
        m.serialize_entry("stale", &self.stale)?;
        m.end()
    }
}

/// The pose reader and stamper.
pub struct Positions {
    filter: String,
    fields: Vec<String>,
    max_age_ms: u64,
    max_bytes: usize,
    /// Newest last.
    history: VecDeque<Pose>,
    refused_log: Throttle,
    /// Poses refused so far.
    pub refused: u64,
}

impl Positions {
    pub fn new(cfg: &PositionConfig) -> Positions {
        Positions {
            filter: cfg.topic.clone(),
            fields: cfg.fields.clone(),
            max_age_ms: cfg.max_age().as_millis() as u64,
            max_bytes: cfg.max_bytes,
            history: VecDeque::new(),
            refused_log: Throttle::default(),
            refused: 0,
        }
    }

    /// Whether a received message is a pose.
    pub fn is_pose(&self, topic: &str) -> bool {
        rumqttc::matches(topic, &self.filter)
    }

    /// A pose message received at `now_ms`: kept, or refused and logged.
    pub fn receive(&mut self, topic: &str, payload: &[u8], now_ms: u64) {
        match self.parse(payload) {
            Ok(values) => {
                if self.history.len() == HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back(Pose {
                    received_ms: now_ms,
                    values,
                });
            }
            Err(why) => {
                self.refused += 1;
                if let Some(n) = self.refused_log.ready() {
                    log::warn!(
                        "position: pose on {topic} refused: {why} ({}){}",
                        excerpt(payload, 200),
                        more(n)
                    );
                }
            }
        }
    }

    /// The configured fields of a payload, or why not.
    fn parse(&self, payload: &[u8]) -> Result<Vec<f64>, String> {
        if payload.len() > self.max_bytes {
            return Err(format!(
                "{} bytes, over position.max_bytes ({})",
                payload.len(),
                self.max_bytes
            ));
        }
        let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
        if !v.is_object() {
            return Err("not a JSON object".into());
        }
        self.fields
            .iter()
            .map(|f| {
                let x = f
                    .split('.')
                    .try_fold(&v, |v, key| v.get(key))
                    .ok_or_else(|| format!("no field {f:?}"))?;
                match x.as_f64() {
                    Some(n) if n.is_finite() => Ok(n),
                    _ => Err(format!("field {f:?} is not a finite number ({x})")),
                }
            })
            .collect()
    }

    /// The stamp of a frame captured at `captured_ms`: the newest pose received at or
    /// before it.
    pub fn stamp(&self, captured_ms: u64) -> PositionStamp {
        let pose = self
            .history
            .iter()
            .rev()
            .find(|p| p.received_ms <= captured_ms);
        match pose {
            Some(p) => {
                let age = captured_ms - p.received_ms;
                PositionStamp {
                    fields: self.fields.iter().cloned().zip(p.values.clone()).collect(),
                    age_ms: Some(age),
                    stale: age > self.max_age_ms,
                }
            }
            None => PositionStamp {
                fields: Vec::new(),
                age_ms: None,
                stale: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(fields: &[&str]) -> Positions {
        Positions::new(&PositionConfig {
            topic: "robot/+/pose".into(),
            fields: fields.iter().map(|f| f.to_string()).collect(),
            max_age_s: 1.0,
            max_bytes: 1024,
        })
    }

    #[test]
    fn stamps_the_newest_pose_received_before_the_capture() {
        let mut p = positions(&["x", "y"]);
        assert!(p.is_pose("robot/7/pose") && !p.is_pose("robot/7/pose/x"));
        let none = p.stamp(1_000);
        assert_eq!(
            (none.age_ms, none.stale, none.fields.len()),
            (None, true, 0)
        );
        p.receive("robot/7/pose", br#"{"x":1.5,"y":-2,"yaw":0.1}"#, 1_000);
        p.receive("robot/7/pose", br#"{"x":2.5,"y":-3}"#, 2_000);
        let s = p.stamp(1_500);
        assert_eq!(s.fields, [("x".into(), 1.5), ("y".into(), -2.0)]);
        assert_eq!((s.age_ms, s.stale), (Some(500), false));
        let s = p.stamp(3_500);
        assert_eq!((s.fields[0].1, s.age_ms, s.stale), (2.5, Some(1_500), true));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"x":2.5,"y":-3.0,"age_ms":1500,"stale":true}"#
        );
        assert_eq!(
            serde_json::to_string(&none).unwrap(),
            r#"{"age_ms":null,"stale":true}"#
        );
    }

    #[test]
    fn refuses_malformed_poses_whole_and_keeps_the_last_good_one() {
        let mut p = positions(&["pose.lat", "pose.lon"]);
        p.receive("t", br#"{"pose":{"lat":52.1,"lon":4.3}}"#, 10);
        let bad: [&[u8]; 6] = [
            br#"{"pose":{"lat":52.2}}"#,
            br#"{"pose":{"lat":"52.2","lon":4.3}}"#,
            br#"{"pose":{"lat":1e999,"lon":4.3}}"#,
            br#"[1,2]"#,
            b"\xff\xfe",
            &[b' '; 2000],
        ];
        for b in bad {
            p.receive("t", b, 20);
        }
        assert_eq!(p.refused, 6);
        let s = p.stamp(30);
        assert_eq!(s.fields[0], ("pose.lat".into(), 52.1));
        assert_eq!(s.age_ms, Some(20));
    }

    #[test]
    fn history_is_bounded() {
        let mut p = positions(&["x", "y"]);
        for i in 0..(HISTORY as u64 + 10) {
            p.receive("t", format!(r#"{{"x":{i},"y":0}}"#).as_bytes(), 100 + i);
        }
        assert_eq!(p.history.len(), HISTORY);
        // Older than the history: nothing known, never the oldest kept pose.
        assert_eq!(p.stamp(100).age_ms, None);
    }
}
