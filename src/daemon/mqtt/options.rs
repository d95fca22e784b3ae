//! The rumqttc options of the link, from `[mqtt]`: URL and client id, keep-alive, packet
//! and in-flight limits, the Last Will, credentials (`MAEDAY_MQTT_USERNAME`/`_PASSWORD`
//! over the config) and TLS.

use std::time::Duration;

use anyhow::{Context, Result};
use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};

use crate::config::{url_with_client_id, MqttConfig};

/// `url` overrides the configured one (`run --mqtt-url`); the Last Will is the offline
/// status `offline` on `status_topic`.
pub fn options(
    cfg: &MqttConfig,
    url: Option<&str>,
    default_client_id: &str,
    status_topic: &str,
    offline: &[u8],
) -> Result<MqttOptions> {
    let url = url.unwrap_or(&cfg.url);
    let client_id = cfg.client_id.as_deref().unwrap_or(default_client_id);
    let mut options = MqttOptions::parse_url(url_with_client_id(url, client_id))
        .map_err(|e| anyhow::anyhow!("MQTT URL {url:?} is not usable: {e}"))?;
    options.set_keep_alive(Duration::from_secs(cfg.keep_alive_s));
    options.set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes);
    options.set_clean_session(true);
    options.set_inflight((cfg.max_inflight + 8).min(u16::MAX as usize) as u16);
    options.set_request_channel_capacity(cfg.max_inflight + 64);
    options.set_last_will(LastWill::new(
        status_topic,
        offline.to_vec(),
        QoS::AtLeastOnce,
        true,
    ));
    let user = std::env::var("MAEDAY_MQTT_USERNAME")
        .ok()
        .or(cfg.username.clone());
    let pass = std::env::var("MAEDAY_MQTT_PASSWORD")
        .ok()
        .or(cfg.password.clone());
    if let Some(user) = user {
        options.set_credentials(user, pass.unwrap_or_default());
    }
    if let Some(tls) = &cfg.tls {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p)
                .with_context(|| format!("mqtt.tls.{what}: cannot read {}", p.display()))
        };
        let ca = read(&tls.ca, "ca")?;
        let client_auth = match (&tls.client_cert, &tls.client_key) {
            (Some(c), Some(k)) => Some((read(c, "client_cert")?, read(k, "client_key")?)),
            _ => None,
        };
        options.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(options)
}
