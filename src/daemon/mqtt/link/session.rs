//! The link's side of a connection's events: a CONNACK (online status, clearing retained
//! commands, subscriptions), publish ids and PUBACKs, messages on subscribed topics
//! (clearing stale retained state of this device), and a lost connection (backoff, and
//! every unacknowledged message back to the spool).

use std::time::{Duration, Instant};

use rumqttc::{ConnectionError, Event, Incoming, Outgoing, QoS, StateError};

use super::{MqttSink, Received, MAX_BACKOFF, MIN_BACKOFF};
use crate::daemon::mqtt::connection::LinkEvent;
use crate::daemon::mqtt::inflight::Origin;

impl MqttSink {
    /// Hand queued messages to the client, reconnect when due, forget acknowledged spool
    /// entries. Called after every event and wake-up of the owner.
    pub fn drive(&mut self) {
        self.feed();
        if self.client.is_none() && !self.closing && Instant::now() >= self.retry_at {
            self.connect();
        }
        self.flush_acks();
    }

    /// When [`MqttSink::drive`] has something to do without an event: the next connect
    /// attempt.
    pub fn wake_at(&self) -> Option<Instant> {
        (self.client.is_none() && !self.closing).then_some(self.retry_at)
    }

    /// One event of a connection; what the broker sent on a subscribed topic is returned.
    /// Events of a connection already given up are ignored.
    pub fn handle(&mut self, e: LinkEvent) -> Option<Received> {
        if e.generation != self.generation {
            return None;
        }
        let received = self.on_event(e.event);
        self.drive();
        received
    }

    fn on_event(&mut self, event: Result<Event, ConnectionError>) -> Option<Received> {
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                log::info!("MQTT connected ({:?})", ack.code);
                self.connected = true;
                self.connected_at = Instant::now();
                self.stats.connects += 1;
                self.spool_cursor = None;
                let topic = self.status.topic.clone();
                let online = self.status.online.clone();
                self.publish_transient(&topic, online, true);
                for m in self.retained.clone() {
                    self.publish_transient(&m.topic, m.payload, true);
                }
                if std::mem::take(&mut self.clear_on_connect) {
                    for t in self.clearable.clone() {
                        log::warn!("clearing any retained message on {t} before subscribing");
                        self.publish_transient(&t, Vec::new(), true);
                    }
                }
                if let Some(c) = &self.client {
                    for t in &self.subscriptions {
                        if let Err(e) = c.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                            log::warn!("cannot subscribe to {t}: {e}");
                        }
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => self.inflight.sent(pkid),
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                if let Some(origin) = self.inflight.acked(ack.pkid) {
                    match origin {
                        Origin::Memory(_) => self.stats.delivered += 1,
                        Origin::Spool(id) => {
                            self.stats.delivered += 1;
                            self.acked_spool.push(id);
                        }
                        Origin::Transient => {}
                    }
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                if self.sweep.as_ref().is_some_and(|s| s.covers(&p.topic)) {
                    self.swept(&p.topic, &p.payload, p.retain);
                    return None;
                }
                // Commands and chunks are events, never state: a retained one would run
                // again at every reconnect. An empty one is a clear (ours, or the broker's).
                // A state input (a pose) is state: its retained message is the newest.
                let state = self.is_state_input(&p.topic) && !p.payload.is_empty();
                if p.retain && !state {
                    if !p.payload.is_empty() {
                        log::warn!(
                            "ignoring a retained message on {} ({}): commands and chunks are never retained",
                            p.topic,
                            crate::update::command::excerpt(&p.payload, 80)
                        );
                        if self.clearable.contains(&p.topic) {
                            self.publish_transient(&p.topic.clone(), Vec::new(), true);
                        }
                    }
                    return None;
                }
                return Some(Received {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                });
            }
            Ok(_) => {}
            Err(e) => self.lost(e),
        }
        None
    }

    /// A message on this device's own retained namespaces ([`crate::daemon::sweep`]): a
    /// retained one this run does not publish, and that is this device's, is cleared. Live
    /// ones (this run's own publishes, echoed back) are dropped.
    fn swept(&mut self, topic: &str, payload: &[u8], retain: bool) {
        if !retain || payload.is_empty() || self.retained.iter().any(|r| r.topic == topic) {
            return;
        }
        if self.sweep.as_ref().is_some_and(|s| s.owns(topic, payload)) {
            log::info!("clearing {topic}: retained by an earlier run, not published by this one");
            self.publish_transient(topic, Vec::new(), true);
        }
    }

    /// The connection failed or dropped: give it up, keep every unacknowledged message.
    fn lost(&mut self, e: ConnectionError) {
        use rumqttc::mqttbytes::Error as Bytes;
        if let ConnectionError::MqttState(StateError::Deserialization(
            Bytes::PayloadSizeLimitExceeded(n),
        )) = &e
        {
            log::warn!(
                "an incoming message of {n} bytes is over mqtt.max_packet_bytes and cannot be \
                 read: it is dropped with this connection; retained messages on {:?} are \
                 cleared at the next connect",
                self.clearable
            );
            self.clear_on_connect = true;
        }
        // A connection that lived a while resets the backoff; one that dies right after
        // its CONNACK (a packet it cannot take, a broker that kicks it) backs off further.
        if self.connected && self.connected_at.elapsed() >= Duration::from_secs(2) {
            self.backoff = MIN_BACKOFF;
        }
        if self.closing {
            log::debug!("MQTT disconnected: {e}");
        } else if self.connected {
            log::warn!("MQTT connection lost: {e}; spooling until it is back");
            self.stats.disconnects += 1;
        } else {
            log::debug!("MQTT connect failed: {e}");
            if self.stats.connects == 0 && self.generation == 1 {
                log::warn!("MQTT broker not reachable ({e}); spooling results until it is");
            }
        }
        self.connected = false;
        self.client = None;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        // Acknowledged spool entries first (they are delivered), then the oldest messages:
        // unacked in-memory ones, then the memory queue. While memory was in use the spool
        // was empty, so appending keeps the global order.
        self.flush_acks();
        self.spill_memory();
        self.spool_cursor = None;
    }
}
