//! An MQTT broker inside the daemon (rumqttd), for single-box installs and the built-in
//! demo: `maeday-edge run` on a fresh machine publishes somewhere a newcomer can watch
//! (`mosquitto_sub -h 127.0.0.1 -p 1883 -t 'maeday/#' -v`) without installing a broker.
//! Also `maeday-edge broker`, a standalone broker process (tests stop and restart it).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Start a broker on `listen` in background threads; returns once it accepts connections.
pub fn start(listen: SocketAddr, max_payload_bytes: usize) -> Result<()> {
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
            auth: None,
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
            log::info!("embedded MQTT broker listening on {listen}");
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
