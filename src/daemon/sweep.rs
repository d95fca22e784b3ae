//! Clearing what an earlier run of this device left retained on the broker and this run
//! no longer publishes: the Home Assistant configs and the `anomalous` state of a camera
//! removed from the config (or of an entity switched off, like the evidence image).
//!
//! At every connect the device subscribes to its own retained namespaces
//! ([`Sweep::filters`]: its discovery configs, `<camera>/anomalous`); the broker answers
//! with what it retains there. Whatever this run does not publish itself is stale and is
//! cleared (a zero-length retained publish). Nothing local is needed (no file that a
//! reflashed device lacks), and nothing is cleared that another device owns: a discovery
//! config counts as this device's only when its `availability` names this device's
//! status topic (two device ids may share a Home Assistant node id, `line.3` and
//! `line_3`). Live messages on these topics (this run's own publishes, echoed back) are
//! dropped by the link.

use serde_json::Value;

use crate::daemon::discovery::ha_id;
use crate::daemon::topics::Topics;

/// This device's retained namespaces and how to tell what in them is its own.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// `<discovery_prefix>/+/maeday_<device>/+/config`, with Home Assistant discovery.
    discovery: Option<String>,
    /// `<prefix>/<device_id>/+/anomalous`.
    anomalous: String,
    /// The status topic a config of this device names in its `availability`.
    status: String,
}

impl Sweep {
    /// `discovery_prefix`: `mqtt.home_assistant.discovery_prefix`, if set.
    pub fn new(topics: &Topics, device_id: &str, discovery_prefix: Option<&str>) -> Sweep {
        Sweep {
            discovery: discovery_prefix
                .map(|p| format!("{p}/+/maeday_{}/+/config", ha_id(device_id))),
            anomalous: topics.anomalous("+"),
            status: topics.status(),
        }
    }

    /// The topic filters to subscribe to.
    pub fn filters(&self) -> Vec<String> {
        self.discovery
            .iter()
            .cloned()
            .chain([self.anomalous.clone()])
            .collect()
    }

    /// Whether a message came on one of these namespaces.
    pub fn covers(&self, topic: &str) -> bool {
        self.filters().iter().any(|f| rumqttc::matches(topic, f))
    }

    /// Whether a retained message found there is this device's (and so, when this run
    /// does not publish it, stale).
    pub fn owns(&self, topic: &str, payload: &[u8]) -> bool {
        if rumqttc::matches(topic, &self.anomalous) {
            return true;
        }
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            return false;
        };
        v["availability"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["topic"] == self.status.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owns_its_own_configs_and_states_only() {
        let topics = Topics::with_prefix("plant", "line.3", &[]);
        let s = Sweep::new(&topics, "line.3", Some("ha"));
        assert_eq!(
            s.filters(),
            ["ha/+/maeday_line_3/+/config", "plant/line.3/+/anomalous"]
        );
        let old = "ha/sensor/maeday_line_3/dock_score/config";
        assert!(s.covers(old) && s.covers("plant/line.3/dock/anomalous"));
        assert!(!s.covers("plant/line.3/dock/result"));
        let mine = br#"{"availability":[{"topic":"plant/line.3/status"}]}"#;
        let theirs = br#"{"availability":[{"topic":"plant/line_3/status"}]}"#;
        assert!(s.owns(old, mine));
        assert!(
            !s.owns(old, theirs),
            "line_3 shares the node id, not the device"
        );
        assert!(!s.owns(old, b"not json"));
        assert!(s.owns("plant/line.3/dock/anomalous", b"ON"));
        let no_ha = Sweep::new(&topics, "line.3", None);
        assert_eq!(no_ha.filters(), ["plant/line.3/+/anomalous"]);
    }
}
