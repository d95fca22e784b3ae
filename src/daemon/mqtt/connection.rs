//! One MQTT connection: a rumqttc client and the thread that drives its event loop
//! (keep-alive pings, retries of the socket, reading packets).
//!
//! The thread does nothing but forward each event, tagged with the connection's
//! generation, to whoever owns the link (the sink thread's event channel); it ends at the
//! first error, and the link starts a fresh connection when it wants one. Events of a
//! connection already given up are recognised by their generation and ignored.

use std::sync::Arc;

use rumqttc::{Client, ConnectionError, Event, MqttOptions};

/// An event of the connection numbered `generation`.
#[derive(Debug)]
pub struct LinkEvent {
    pub(super) generation: u64,
    pub(super) event: Result<Event, ConnectionError>,
}

/// Where a connection thread delivers its events; false once nobody listens.
pub type Deliver = Arc<dyn Fn(LinkEvent) -> bool + Send + Sync>;

/// Start a client and its event-loop thread; `None` (logged) if the thread cannot start.
/// `capacity` bounds the client's request queue.
pub fn start(
    options: MqttOptions,
    capacity: usize,
    generation: u64,
    deliver: Deliver,
) -> Option<Client> {
    let (client, mut connection) = Client::new(options, capacity);
    let spawned = std::thread::Builder::new()
        .name("mqtt-events".into())
        .spawn(move || {
            for event in connection.iter() {
                let failed = event.is_err();
                if !deliver(LinkEvent { generation, event }) || failed {
                    break;
                }
            }
        });
    match spawned {
        Ok(_) => Some(client),
        Err(e) => {
            log::error!("cannot start the MQTT event thread: {e}");
            None
        }
    }
}
