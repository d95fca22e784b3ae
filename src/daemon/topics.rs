//! Every MQTT topic the daemon (and `maeday-edge bundle send|command`) uses, formatted in one
//! place.
//!
//! A [`Topics`] value is built once from the device id (and the fleet groups it listens
//! to); each topic has a method, so a topic name cannot drift between the code that
//! publishes on it, the code that subscribes to it and the README.

/// The default first level(s) of every topic (`mqtt.topic_prefix`).
pub const DEFAULT_PREFIX: &str = "maeday";

/// The topics of one device: `<prefix>/<device_id>/...` and `<prefix>/fleet/<group>/...`
/// (`prefix` = `mqtt.topic_prefix`, `maeday` by default).
#[derive(Debug, Clone)]
pub struct Topics {
    /// `<prefix>/<device_id>`.
    base: String,
    prefix: String,
    /// Fleet groups whose bundle chunks this device takes (`bundles.groups`).
    groups: Vec<String>,
}

impl Topics {
    /// Under the default prefix (`maeday`).
    pub fn new(device_id: &str, groups: &[String]) -> Topics {
        Topics::with_prefix(DEFAULT_PREFIX, device_id, groups)
    }

    /// Under `prefix` (`mqtt.topic_prefix`, checked as topic levels).
    pub fn with_prefix(prefix: &str, device_id: &str, groups: &[String]) -> Topics {
        Topics {
            base: format!("{prefix}/{device_id}"),
            prefix: prefix.to_string(),
            groups: groups.to_vec(),
        }
    }

    /// Retained `online`/`offline` status (also the Last Will).
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    /// Commands to the device (`metrics`, `rollback`, `enroll ...`).
    pub fn command(&self) -> String {
        format!("{}/command", self.base)
    }

    /// The reply to each operator request (never retained).
    pub fn command_reply(&self) -> String {
        format!("{}/command/reply", self.base)
    }

    pub fn metrics(&self) -> String {
        format!("{}/metrics", self.base)
    }

    /// Bundle chunks addressed to this device alone.
    pub fn bundle_chunk(&self) -> String {
        format!("{}/bundle/chunk", self.base)
    }

    /// Bundle chunks for a fleet group.
    pub fn fleet_chunk(group: &str) -> String {
        format!("maeday/fleet/{group}/bundle/chunk")
    }

    /// Bundle chunks for a fleet group, under this device's prefix.
    pub fn group_chunk(&self, group: &str) -> String {
        format!("{}/fleet/{group}/bundle/chunk", self.prefix)
    }

    /// Whether a received message came on a bundle chunk topic (own or fleet).
    pub fn is_chunk(&self, topic: &str) -> bool {
        topic.ends_with("/bundle/chunk")
    }

    /// Install progress, verdicts and refused bundle commands.
    pub fn bundle_status(&self) -> String {
        format!("{}/bundle/status", self.base)
    }

    /// Enrollment progress, verdicts and refused `enroll` commands.
    pub fn enroll_status(&self) -> String {
        format!("{}/enroll/status", self.base)
    }

    /// The result of each scored frame of `camera`.
    pub fn result(&self, camera: &str) -> String {
        self.camera(camera, "result")
    }

    /// The binary mask PNG of a frame of `camera`.
    pub fn mask(&self, camera: &str) -> String {
        self.camera(camera, "mask")
    }

    /// The heatmap overlay PNG of a frame of `camera`.
    pub fn heatmap(&self, camera: &str) -> String {
        self.camera(camera, "heatmap")
    }

    /// Debounced anomaly events of `camera` (`start`, `update`, `end`).
    pub fn event(&self, camera: &str) -> String {
        self.camera(camera, "event")
    }

    /// The evidence JPEG of `camera`'s latest event peak.
    pub fn evidence(&self, camera: &str) -> String {
        self.camera(camera, "evidence")
    }

    /// Retained `ON`/`OFF`: whether `camera` is in an anomaly event now.
    pub fn anomalous(&self, camera: &str) -> String {
        self.camera(camera, "anomalous")
    }

    /// The JPEG a `snapshot` request asked for.
    pub fn snapshot(&self, camera: &str) -> String {
        self.camera(camera, "snapshot")
    }

    fn camera(&self, camera: &str, what: &str) -> String {
        format!("{}/{camera}/{what}", self.base)
    }

    /// What the device subscribes to: its command topic and, with bundles, its own and its
    /// groups' chunk topics.
    pub fn subscriptions(&self, bundles: bool) -> Vec<String> {
        let mut topics = vec![self.command()];
        if bundles {
            topics.push(self.bundle_chunk());
            topics.extend(self.groups.iter().map(|g| self.group_chunk(g)));
        }
        topics
    }

    /// This device's own inputs, where a retained message is cleared when seen (commands
    /// and chunks are events, never retained).
    pub fn clearable(&self) -> Vec<String> {
        vec![self.command(), self.bundle_chunk()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_those_the_readme_documents() {
        let t = Topics::new("cam-7", &["line".to_string()]);
        assert_eq!(t.status(), "maeday/cam-7/status");
        assert_eq!(t.result("a"), "maeday/cam-7/a/result");
        assert_eq!(t.mask("a"), "maeday/cam-7/a/mask");
        assert_eq!(t.heatmap("a"), "maeday/cam-7/a/heatmap");
        assert_eq!(t.enroll_status(), "maeday/cam-7/enroll/status");
        assert_eq!(t.bundle_status(), "maeday/cam-7/bundle/status");
        assert_eq!(
            t.subscriptions(true),
            [
                "maeday/cam-7/command",
                "maeday/cam-7/bundle/chunk",
                "maeday/fleet/line/bundle/chunk"
            ]
        );
        assert_eq!(t.subscriptions(false), ["maeday/cam-7/command"]);
        assert_eq!(t.event("a"), "maeday/cam-7/a/event");
        assert_eq!(t.evidence("a"), "maeday/cam-7/a/evidence");
        assert_eq!(t.anomalous("a"), "maeday/cam-7/a/anomalous");
        assert_eq!(t.command_reply(), "maeday/cam-7/command/reply");
        assert_eq!(t.snapshot("a"), "maeday/cam-7/a/snapshot");
    }

    #[test]
    fn every_topic_follows_the_prefix() {
        let t = Topics::with_prefix("plant/line3", "cam-7", &["line".to_string()]);
        assert_eq!(t.status(), "plant/line3/cam-7/status");
        assert_eq!(t.result("a"), "plant/line3/cam-7/a/result");
        assert_eq!(
            t.subscriptions(true),
            [
                "plant/line3/cam-7/command",
                "plant/line3/cam-7/bundle/chunk",
                "plant/line3/fleet/line/bundle/chunk"
            ]
        );
    }
}
