//! `[bundles]`: signed retrain bundles over MQTT: trust, size bounds, partial transfers.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use serde::Deserialize;

use super::checks::{topic_level, MAX_BUNDLE_BYTES};
use super::mqtt::MqttConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlesConfig {
    /// Model slots, the active choice and partial transfers live here.
    pub state_dir: PathBuf,
    /// Public keys (hex files from `maeday-edge bundle keygen`) whose bundles are accepted.
    pub trusted_keys: Vec<PathBuf>,
    /// Fleet groups: bundles sent to `maeday/fleet/<group>/bundle/chunk` are for us too.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default = "default_bundle_bytes")]
    pub max_bundle_bytes: u64,
    #[serde(default = "default_chunk_bytes")]
    pub max_chunk_bytes: usize,
    /// Partial transfers kept at once under `state_dir/incoming` (the least recently
    /// updated one is evicted for a new one): unsigned chunks cannot pile up.
    #[serde(default = "default_max_transfers")]
    pub max_transfers: usize,
    /// A partial transfer that gets no chunk for this long is deleted.
    #[serde(default = "default_transfer_expiry")]
    pub transfer_expiry_s: u64,
    /// Bound on all partial transfers together.
    #[serde(default = "default_incoming_bytes")]
    pub max_incoming_bytes: u64,
    /// Accept unsigned `enroll` commands (only for a broker where nobody else can publish
    /// on the command topic). `rollback` is always signed.
    #[serde(default)]
    pub allow_unsigned_enroll: bool,
}

fn default_bundle_bytes() -> u64 {
    256 << 20
}

fn default_chunk_bytes() -> usize {
    256 << 10
}

fn default_max_transfers() -> usize {
    4
}

fn default_transfer_expiry() -> u64 {
    3600
}

fn default_incoming_bytes() -> u64 {
    512 << 20
}

impl BundlesConfig {
    /// Checks these keys; chunks must fit in the MQTT packets `m` allows.
    pub fn validate(&self, m: &MqttConfig) -> Result<()> {
        let b = self;
        ensure!(
            !b.trusted_keys.is_empty(),
            "bundles.trusted_keys: at least one public key is needed"
        );
        for (i, g) in b.groups.iter().enumerate() {
            topic_level(&format!("bundles.groups[{i}]"), g)?;
        }
        ensure!(
            b.max_chunk_bytes >= 1024 && b.max_chunk_bytes + 4096 <= m.max_packet_bytes,
            "bundles.max_chunk_bytes: must be at least 1024 and 4 KiB below mqtt.max_packet_bytes ({})",
            m.max_packet_bytes
        );
        ensure!(
            b.max_bundle_bytes >= b.max_chunk_bytes as u64 && b.max_bundle_bytes <= MAX_BUNDLE_BYTES,
            "bundles.max_bundle_bytes: must be at least max_chunk_bytes and at most {MAX_BUNDLE_BYTES} (got {})",
            b.max_bundle_bytes
        );
        ensure!(
            (1..=64).contains(&b.max_transfers),
            "bundles.max_transfers: must be 1 to 64 (got {})",
            b.max_transfers
        );
        ensure!(
            b.transfer_expiry_s >= 1,
            "bundles.transfer_expiry_s: must be at least 1"
        );
        ensure!(
            b.max_incoming_bytes >= b.max_bundle_bytes,
            "bundles.max_incoming_bytes: must be at least max_bundle_bytes ({})",
            b.max_bundle_bytes
        );
        Ok(())
    }
}
