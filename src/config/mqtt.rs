//! `[mqtt]`: the broker, TLS, the store-and-forward spool and the embedded broker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use serde::Deserialize;

use super::checks::{topic_level, MAX_GRACE_S, MAX_PACKET_BYTES};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    #[serde(default = "default_url")]
    pub url: String,
    /// Default: `maeday-<device_id>`.
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Largest packet sent or accepted (rumqttc's own default, 10 KiB, is too small for masks).
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// Publishes awaiting their PUBACK at once.
    #[serde(default = "default_inflight")]
    pub max_inflight: usize,
    /// Overridden by `$MAEDAY_MQTT_USERNAME` / `$MAEDAY_MQTT_PASSWORD`.
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Run an MQTT broker inside the daemon, listening here (e.g. "127.0.0.1:1883").
    pub embedded_broker: Option<SocketAddr>,
    /// Username -> password for the embedded broker; without it the broker is anonymous
    /// (and warns when it listens beyond loopback).
    #[serde(default)]
    pub embedded_broker_users: std::collections::HashMap<String, String>,
    /// Seconds to wait at shutdown for the broker to take what is queued (the rest stays
    /// in the spool for the next start).
    #[serde(default = "default_grace")]
    pub shutdown_grace_s: f64,
    /// The first topic levels of every topic: `<topic_prefix>/<device_id>/...`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Home Assistant MQTT discovery (opt-in): retained entity configs.
    pub home_assistant: Option<HomeAssistantConfig>,
}

/// `mqtt.home_assistant`: where Home Assistant looks for discovery configs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantConfig {
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
}

fn default_prefix() -> String {
    "maeday".into()
}

fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

/// One or more topic levels (`a` or `a/b`), each a [`topic_level`], at most 128 bytes.
pub fn topic_levels(key: &str, value: &str) -> Result<()> {
    ensure!(
        value.len() <= 128,
        "{key}: at most 128 characters (got {})",
        value.len()
    );
    value
        .split('/')
        .try_for_each(|level| topic_level(key, level))
}

impl MqttConfig {
    pub fn validate(&self) -> Result<()> {
        let m = self;
        let url = url_with_client_id(&m.url, "probe");
        rumqttc::MqttOptions::parse_url(url)
            .map_err(|e| anyhow::anyhow!("mqtt.url: {:?} is not usable: {e}", m.url))?;
        ensure!(
            (1024..=MAX_PACKET_BYTES).contains(&m.max_packet_bytes),
            "mqtt.max_packet_bytes: must be 1024 to {MAX_PACKET_BYTES} (MQTT's own limit; got {})",
            m.max_packet_bytes
        );
        ensure!(
            (1..=u16::MAX as usize).contains(&m.max_inflight),
            "mqtt.max_inflight: must be 1..=65535"
        );
        ensure!(
            (5..=u16::MAX as u64).contains(&m.keep_alive_s),
            "mqtt.keep_alive_s: must be 5 to 65535 (got {})",
            m.keep_alive_s
        );
        ensure!(
            m.spool.max_bytes >= 4096,
            "mqtt.spool.max_bytes: must be at least 4096"
        );
        ensure!(
            m.shutdown_grace_s.is_finite() && (0.0..=MAX_GRACE_S).contains(&m.shutdown_grace_s),
            "mqtt.shutdown_grace_s: must be 0 to {MAX_GRACE_S} (got {})",
            m.shutdown_grace_s
        );
        if let Some(t) = &m.tls {
            ensure!(
                t.client_cert.is_some() == t.client_key.is_some(),
                "mqtt.tls: client_cert and client_key go together"
            );
            ensure!(
                m.url.starts_with("mqtts://"),
                "mqtt.tls: is set but mqtt.url is not mqtts://"
            );
        }
        for (user, pass) in &m.embedded_broker_users {
            ensure!(
                !user.is_empty() && !pass.is_empty(),
                "mqtt.embedded_broker_users: user names and passwords must not be empty"
            );
        }
        topic_levels("mqtt.topic_prefix", &m.topic_prefix)?;
        if let Some(ha) = &m.home_assistant {
            topic_levels("mqtt.home_assistant.discovery_prefix", &ha.discovery_prefix)?;
        }
        #[cfg(not(feature = "embedded-broker"))]
        ensure!(
            m.embedded_broker.is_none(),
            "mqtt.embedded_broker: this build has no embedded broker (feature embedded-broker)"
        );
        Ok(())
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace_s)
    }
}

fn default_url() -> String {
    "mqtt://127.0.0.1:1883".into()
}

fn default_keep_alive() -> u64 {
    15
}

fn default_max_packet() -> usize {
    1 << 20
}

fn default_inflight() -> usize {
    32
}

fn default_grace() -> f64 {
    5.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// PEM client certificate and key, for brokers that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Where results wait while the broker is unreachable (survives restarts).
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// Bound on the spooled payload bytes; when full the oldest are dropped (and counted).
    #[serde(default = "default_spool_bytes")]
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: default_spool_dir(),
            max_bytes: default_spool_bytes(),
        }
    }
}

fn default_spool_dir() -> PathBuf {
    PathBuf::from("spool")
}

fn default_spool_bytes() -> u64 {
    256 << 20
}

/// rumqttc's URL parser requires a client id; add ours unless the URL has one.
pub fn url_with_client_id(url: &str, client_id: &str) -> String {
    if url.contains("client_id=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&client_id={client_id}")
    } else {
        format!("{url}?client_id={client_id}")
    }
}
