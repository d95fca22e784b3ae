//! An MQTT broker inside the daemon (rumqttd), for single-box installs and the built-in
//! demo: `maeday-edge run` on a fresh machine publishes somewhere a newcomer can watch
//! (`mosquitto_sub -h 127.0.0.1 -p 1883 -t 'maeday/#' -v`) without installing a broker.
//! Also `maeday-edge broker`, a standalone broker process (tests stop and restart it).
//!
//! Trust: whoever can publish on a device's `command` and `bundle/chunk` topics can ask it
//! to change what serves; those commands are signed (see `bundle::command`), but an
//! anonymous broker still lets anyone flood chunks and read results. With `users` the
//! broker only accepts clients that log in with one of the username/password pairs; an
//! anonymous broker that listens beyond loopback says so loudly at start.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Start an anonymous broker on `listen` (see [`start_with_users`]).
pub fn start(listen: SocketAddr, max_payload_bytes: usize) -> Result<()> {
    start_with_users(listen, max_payload_bytes, &HashMap::new())
}

/// The warning for a broker anyone on the network may use, if this one is such a broker.
pub fn exposure_warning(listen: SocketAddr, authenticated: bool) -> Option<String> {
    (!authenticated && !listen.ip().is_loopback()).then(|| {
        format!(
            "EMBEDDED MQTT BROKER ON {listen} HAS NO AUTHENTICATION: anyone who reaches this \
             address can connect, read results and flood command and chunk topics; set \
             mqtt.embedded_broker_users (or --user) or listen on 127.0.0.1"
        )
    })
}

/// Start a broker on `listen` in background threads; returns once it accepts connections.
/// With `users` (username -> password) only clients that log in with one of them connect.
pub fn start_with_users(
    listen: SocketAddr,
    max_payload_bytes: usize,
    users: &HashMap<String, String>,
) -> Result<()> {
    if let Some(w) = exposure_warning(listen, !users.is_empty()) {
        log::warn!("{w}");
    }
    // Fail early and clearly when the port is taken (rumqttd would only log it).
    drop(
        TcpListener::bind(listen).with_context(|| {
            format!("embedded broker: cannot listen on {listen} (port in use?)")
        })?,
    );
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_payload_bytes,
            max_inflight_count: 256,
            auth: (!users.is_empty()).then(|| users.clone()),
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 256,
            max_outgoing_packet_count: 256,
            // Per-topic in-memory log: 4 x 8 MiB at most.
            max_segment_size: 8 << 20,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..Default::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                log::error!("embedded broker stopped: {e}");
            }
        })
        .context("cannot start the embedded broker thread")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&listen_addr(listen), Duration::from_millis(200)).is_ok() {
            log::info!(
                "embedded MQTT broker listening on {listen} ({})",
                if users.is_empty() {
                    "anonymous".to_string()
                } else {
                    format!("{} user(s)", users.len())
                }
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("embedded broker did not start listening on {listen} within 5 s")
}

/// Where to connect to reach a listener (0.0.0.0 means "this host").
fn listen_addr(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], a.port()))
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_anonymous_broker_beyond_loopback_is_warned_about() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(exposure_warning(a("127.0.0.1:1883"), false).is_none());
        assert!(exposure_warning(a("[::1]:1883"), false).is_none());
        assert!(exposure_warning(a("0.0.0.0:1883"), true).is_none());
        let w = exposure_warning(a("0.0.0.0:1883"), false).unwrap();
        assert!(w.contains("NO AUTHENTICATION") && w.contains("embedded_broker_users"));
        assert!(exposure_warning(a("192.168.1.5:1883"), false).is_some());
    }
}
