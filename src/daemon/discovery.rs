//! Home Assistant MQTT discovery (opt-in, `mqtt.home_assistant`): retained entity configs
//! under `<discovery_prefix>/<component>/<node_id>/<object_id>/config`, so a Home Assistant
//! install shows the device and its cameras with no YAML.
//!
//! Per camera: a binary sensor (anomalous: the event state with `[events]`, else each
//! result's verdict), a sensor (the score of each result) and, with event evidence, an
//! image entity (the last evidence JPEG). Every entity is available while the retained
//! `status` says `online` (its Last Will says `offline`), so the configs need JSON
//! payloads (`--check` insists). They are re-published (retained) at every connect.

use serde_json::{json, Value};

use crate::daemon::mqtt::spool::Message;
use crate::daemon::topics::Topics;

/// What the configs are made from.
pub struct Discovery<'a> {
    /// `mqtt.home_assistant.discovery_prefix`.
    pub prefix: &'a str,
    pub device_id: &'a str,
    pub cameras: &'a [String],
    pub topics: &'a Topics,
    /// `[events]` is on (the binary sensor follows events, not single frames).
    pub events: bool,
    /// Events carry evidence JPEGs (the image entity).
    pub evidence: bool,
    /// The model serving at start (the device's `model` in Home Assistant).
    pub model: &'a str,
}

/// Home Assistant's ids allow `[a-zA-Z0-9_-]`: anything else becomes `_`.
pub fn ha_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Discovery<'_> {
    /// `maeday_<device_id>`: the node id and the device's identifier.
    fn node_id(&self) -> String {
        format!("maeday_{}", ha_id(self.device_id))
    }

    fn device(&self) -> Value {
        json!({
            "identifiers": [self.node_id()],
            "name": format!("maeday {}", self.device_id),
            "manufacturer": "maeday-edge",
            "model": self.model,
            "sw_version": env!("CARGO_PKG_VERSION"),
        })
    }

    fn availability(&self) -> Value {
        json!([{
            "topic": self.topics.status(),
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }])
    }

    /// One entity's config message.
    fn config(&self, component: &str, camera: &str, what: &str, mut fields: Value) -> Message {
        let object_id = format!("{}_{what}", ha_id(camera));
        let unique = format!("{}_{object_id}", self.node_id());
        let extra = fields.as_object_mut().expect("fields are an object");
        extra.insert("unique_id".into(), unique.into());
        extra.insert("device".into(), self.device());
        extra.insert("availability".into(), self.availability());
        Message {
            topic: format!(
                "{}/{component}/{}/{object_id}/config",
                self.prefix,
                self.node_id()
            ),
            payload: serde_json::to_vec(&fields).expect("JSON values encode"),
        }
    }

    /// Every entity config (retained).
    pub fn configs(&self) -> Vec<Message> {
        let mut out = Vec::new();
        for cam in self.cameras {
            let anomalous = if self.events {
                json!({ "state_topic": self.topics.anomalous(cam) })
            } else {
                json!({
                    "state_topic": self.topics.result(cam),
                    "value_template": "{{ 'ON' if value_json.anomalous else 'OFF' }}",
                })
            };
            let mut anomalous = anomalous;
            anomalous["name"] = format!("{cam} anomalous").into();
            anomalous["device_class"] = "problem".into();
            anomalous["payload_on"] = "ON".into();
            anomalous["payload_off"] = "OFF".into();
            out.push(self.config("binary_sensor", cam, "anomalous", anomalous));
            let score = json!({
                "name": format!("{cam} score"),
                "state_topic": self.topics.result(cam),
                "value_template": "{{ value_json.score }}",
                "state_class": "measurement",
                "json_attributes_topic": self.topics.result(cam),
                "json_attributes_template":
                    "{{ {'seq': value_json.seq, 'image_threshold': value_json.image_threshold} | tojson }}",
            });
            out.push(self.config("sensor", cam, "score", score));
            if self.events && self.evidence {
                let image = json!({
                    "name": format!("{cam} evidence"),
                    "image_topic": self.topics.evidence(cam),
                    "content_type": "image/jpeg",
                });
                out.push(self.config("image", cam, "evidence", image));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_follow_the_discovery_schema() {
        let topics = Topics::new("line.3", &[]);
        let cameras = ["belt".to_string()];
        let d = Discovery {
            prefix: "homeassistant",
            device_id: "line.3",
            cameras: &cameras,
            topics: &topics,
            events: true,
            evidence: true,
            model: "default",
        };
        let configs = d.configs();
        let topics: Vec<&str> = configs.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/binary_sensor/maeday_line_3/belt_anomalous/config",
                "homeassistant/sensor/maeday_line_3/belt_score/config",
                "homeassistant/image/maeday_line_3/belt_evidence/config",
            ]
        );
        let v: Value = serde_json::from_slice(&configs[0].payload).unwrap();
        assert_eq!(v["state_topic"], "maeday/line.3/belt/anomalous");
        assert_eq!(v["unique_id"], "maeday_line_3_belt_anomalous");
        assert_eq!(v["device"]["identifiers"][0], "maeday_line_3");
        assert_eq!(v["availability"][0]["topic"], "maeday/line.3/status");
        let no_events = Discovery { events: false, ..d };
        let configs = no_events.configs();
        assert_eq!(configs.len(), 2, "no image entity without events");
        let v: Value = serde_json::from_slice(&configs[0].payload).unwrap();
        assert_eq!(v["state_topic"], "maeday/line.3/belt/result");
    }
}
