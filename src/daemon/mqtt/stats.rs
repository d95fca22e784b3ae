//! The MQTT link's counters (`mqtt` in the metrics).

/// Counters for the `metrics` message.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct MqttStats {
    pub connected: bool,
    /// PUBACKed result/mask/heatmap messages.
    pub delivered: u64,
    /// Messages written to the spool.
    pub spooled: u64,
    pub spool_messages: u64,
    pub spool_bytes: u64,
    /// Dropped (oldest first) because the spool was full (`mqtt.spool.max_bytes` or a full
    /// disk), or unreadable.
    pub spool_dropped: u64,
    /// New messages lost because the spool's disk refused them even after dropping the
    /// oldest.
    pub spool_failed: u64,
    /// IO errors of the spool's disk.
    pub spool_errors: u64,
    /// False once the spool fell back to memory (its folder could not hold it).
    pub spool_on_disk: bool,
    /// Masks and heatmaps made smaller, and results sent without their weakest blobs, to
    /// fit `max_packet_bytes`.
    pub oversized_shrunk: u64,
    /// Messages over `max_packet_bytes` that could not be made to fit: dropped.
    pub oversized_dropped: u64,
    pub connects: u64,
    pub disconnects: u64,
}
