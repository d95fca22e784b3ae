//! Every MQTT topic the daemon (and `maeday-edge bundle send|command`) uses, formatted in one
//! place.
//!
//! A [`Topics`] value is built once from the device id (and the fleet groups it listens
//! to); each topic has a method, so a topic name cannot drift between the code that
//! publishes on it, the code that subscribes to it and the README.

/// The topics of one device: `maeday/<device_id>/...` and `maeday/fleet/<group>/...`.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `maeday/<device_id>`.
    base: String,
    /// Fleet groups whose bundle chunks this device takes (`bundles.groups`).
    groups: Vec<String>,
}

impl Topics {
    pub fn new(device_id: &str, groups: &[String]) -> Topics {
        Topics {
            base: format!("maeday/{device_id}"),
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

    fn camera(&self, camera: &str, what: &str) -> String {
        format!("{}/{camera}/{what}", self.base)
    }

    /// What the device subscribes to: its command topic and, with bundles, its own and its
    /// groups' chunk topics.
    pub fn subscriptions(&self, bundles: bool) -> Vec<String> {
        let mut topics = vec![self.command()];
        if bundles {
            topics.push(self.bundle_chunk());
            topics.extend(self.groups.iter().map(|g| Topics::fleet_chunk(g)));
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
    }
}
