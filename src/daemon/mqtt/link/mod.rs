//! The MQTT sink: QoS 1 publishing with store-and-forward, on rumqttc.
//!
//! Delivery is at-least-once and in order, across broker outages and daemon restarts:
//! - every publish is tracked until its PUBACK (packet ids are matched to our messages
//!   through rumqttc's `Outgoing::Publish(pkid)` events, which follow publish order);
//! - while connected with an empty spool, messages go straight from memory;
//! - while disconnected (or while a spool is draining) messages go to the on-disk
//!   [`Spool`]; on a disconnect, unacknowledged in-memory messages are written to the spool
//!   first, so the spool always holds the oldest messages and order is kept;
//! - after a reconnect the spool drains, oldest first, before new messages go direct.
//!
//! rumqttc keeps unacknowledged publishes only in memory and re-sends them itself after a
//! reconnect; to have one owner of that state, each connection gets a fresh client and
//! event loop ([`connection`](crate::daemon::mqtt::connection), a thread), and a lost
//! connection is dropped whole. The connection's events reach the link through its owner
//! (the sink thread's one event channel): the owner hands each to [`MqttSink::handle`]
//! and calls [`MqttSink::drive`] after it, and on every wake-up. Subscriptions are re-sent
//! after every CONNACK (a clean-session reconnect forgets them). The max packet size is set
//! explicitly (rumqttc's default, 10 KiB, would reject mask PNGs), and no message over it is
//! ever handed to the client: rumqttc fails the whole connection on one, and a message that
//! goes back to the head of the spool would then fail every connection after it. The sinks
//! shrink pictures to fit ([`crate::daemon::mqtt::packet`]); what is over the limit here (from a spool
//! written under another limit, or a topic too long) is dropped and counted.

mod session;
mod shutdown;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Result;
use rumqttc::{Client, LastWill, MqttOptions, QoS};

use crate::config::MqttConfig;
use crate::daemon::mqtt::connection::{self, Deliver};
use crate::daemon::mqtt::inflight::{Inflight, Origin};
use crate::daemon::mqtt::options::options;
use crate::daemon::mqtt::packet;
use crate::daemon::mqtt::spool::{Message, Spool};
use crate::daemon::mqtt::stats::MqttStats;
use crate::daemon::sweep::Sweep;
use crate::daemon::throttle::{more, Throttle};

/// A message from the broker on a subscribed topic.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What the status topic says, encoded by the caller.
pub struct StatusMessages {
    pub topic: String,
    pub online: Vec<u8>,
    /// Also the Last Will: what the broker publishes when the connection dies.
    pub offline: Vec<u8>,
}

/// What the link is built from besides `[mqtt]`.
pub struct LinkSetup {
    /// `run --mqtt-url`: overrides `mqtt.url`.
    pub url: Option<String>,
    /// Used when `mqtt.client_id` is not set.
    pub default_client_id: String,
    pub status: StatusMessages,
    pub subscriptions: Vec<String>,
    /// Where connection threads deliver their events.
    pub deliver: Deliver,
}

pub struct MqttSink {
    options: MqttOptions,
    client: Option<Client>,
    generation: u64,
    deliver: Deliver,
    connected: bool,
    retry_at: Instant,
    backoff: Duration,
    max_inflight: usize,
    inflight: Inflight,
    /// Messages waiting to go direct (only while connected with an empty spool).
    queue: VecDeque<Message>,
    spool: Spool,
    /// The last spool id handed to the client during this connection.
    spool_cursor: Option<u64>,
    acked_spool: Vec<u64>,
    status: StatusMessages,
    subscriptions: Vec<String>,
    stats: MqttStats,
    /// Shutting down: the disconnect that follows is ours, not a loss.
    closing: bool,
    max_packet: usize,
    /// Oversized spool entries read, to remove with the next acknowledgements.
    discarded_spool: Vec<u64>,
    oversize_log: Throttle,
    spool_failed_log: Throttle,
    /// This device's own command/chunk topics: a retained message found there is cleared
    /// (a zero-length retained publish), since commands and chunks are never retained.
    clearable: Vec<String>,
    /// The last connection died on an incoming packet over the limit (typically a retained
    /// command re-sent at every subscribe): clear `clearable` before subscribing again.
    clear_on_connect: bool,
    connected_at: Instant,
    /// Retained state messages (event states, Home Assistant discovery), one per topic,
    /// re-published at every connect like the status.
    retained: Vec<Message>,
    /// Topic filters of state inputs (a pose), where a retained message is taken.
    state_inputs: Vec<String>,
    /// This device's retained namespaces, where what an earlier run left is cleared.
    sweep: Option<Sweep>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl MqttSink {
    /// Open the spool and start connecting.
    pub fn new(cfg: &MqttConfig, setup: LinkSetup) -> Result<MqttSink> {
        let LinkSetup {
            url,
            default_client_id,
            status,
            subscriptions,
            deliver,
        } = setup;
        let options = options(
            cfg,
            url.as_deref(),
            &default_client_id,
            &status.topic,
            &status.offline,
        )?;
        let spool = Spool::open_or_memory(&cfg.spool.dir, cfg.spool.max_bytes);
        if !spool.is_empty() {
            log::info!(
                "spool {} holds {} messages ({} bytes) from before: they go first",
                cfg.spool.dir.display(),
                spool.len(),
                spool.bytes()
            );
        }
        let mut sink = MqttSink {
            options,
            client: None,
            generation: 0,
            deliver,
            connected: false,
            retry_at: Instant::now(),
            backoff: MIN_BACKOFF,
            max_inflight: cfg.max_inflight,
            inflight: Inflight::default(),
            queue: VecDeque::new(),
            spool,
            spool_cursor: None,
            acked_spool: Vec::new(),
            status,
            subscriptions,
            stats: MqttStats::default(),
            closing: false,
            max_packet: cfg.max_packet_bytes,
            discarded_spool: Vec::new(),
            oversize_log: Throttle::default(),
            spool_failed_log: Throttle::default(),
            clearable: Vec::new(),
            clear_on_connect: false,
            connected_at: Instant::now(),
            retained: Vec::new(),
            state_inputs: Vec::new(),
            sweep: None,
        };
        sink.stats.spool_messages = sink.spool.len();
        sink.connect();
        Ok(sink)
    }

    /// Start a fresh client and event-loop thread (the old one, if any, is dropped).
    fn connect(&mut self) {
        self.generation += 1;
        let capacity = self.max_inflight + 64;
        self.client = connection::start(
            self.options.clone(),
            capacity,
            self.generation,
            self.deliver.clone(),
        );
    }

    /// Topics of this device on which a retained message is cleared when seen.
    pub fn clear_retained_on(&mut self, topics: Vec<String>) {
        self.clearable = topics;
    }

    /// Topic filters of state inputs: a retained message there is the newest state, taken
    /// like any other.
    pub fn take_retained_on(&mut self, filters: Vec<String>) {
        self.state_inputs = filters;
    }

    /// Clear this device's stale retained messages (subscribe to `sweep.filters()` too).
    pub fn sweep(&mut self, sweep: Sweep) {
        self.sweep = Some(sweep);
    }

    fn is_state_input(&self, topic: &str) -> bool {
        self.state_inputs.iter().any(|f| rumqttc::matches(topic, f))
    }

    pub fn stats(&self) -> MqttStats {
        let mut s = self.stats;
        s.connected = self.connected;
        s.spool_messages = self.spool.len();
        s.spool_bytes = self.spool.bytes();
        s.spool_dropped = self.spool.dropped;
        s.spool_errors = self.spool.errors;
        s.spool_on_disk = self.spool.on_disk();
        s
    }

    /// `mqtt.max_packet_bytes`: no packet over it is sent.
    pub fn max_packet_bytes(&self) -> usize {
        self.max_packet
    }

    fn fits(&self, m: &Message) -> bool {
        packet::fits(&m.topic, m.payload.len(), self.max_packet)
    }

    /// A message was made smaller to fit (`from` -> `to` payload bytes, or blobs left out).
    pub fn count_shrunk(&mut self, topic: &str, what: &str) {
        self.stats.oversized_shrunk += 1;
        if let Some(n) = self.oversize_log.ready() {
            log::warn!(
                "{topic}: over mqtt.max_packet_bytes ({}): {what}{}",
                self.max_packet,
                more(n)
            );
        }
    }

    /// A message over the limit could not be made to fit: it is dropped.
    pub fn count_oversized(&mut self, topic: &str, payload: usize) {
        self.stats.oversized_dropped += 1;
        if let Some(n) = self.oversize_log.ready() {
            log::warn!(
                "{topic}: {} bytes as a packet, over mqtt.max_packet_bytes ({}): dropped{}",
                packet::publish_bytes(topic, payload),
                self.max_packet,
                more(n)
            );
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the sink wants more messages now. False only while connected and the
    /// in-memory queue is full: the caller then waits (results are never dropped). (The
    /// queue holds messages only while the spool is empty, or when the spool's disk refused
    /// them: then they wait in memory behind the spool.)
    pub fn can_accept(&self) -> bool {
        !self.connected || self.queue.len() < 4 * self.max_inflight
    }

    /// Nothing left to deliver (for a clean shutdown).
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.spool.is_empty() && self.inflight.is_empty()
    }

    /// Queue messages for at-least-once, in-order delivery. A message over
    /// `max_packet_bytes` is dropped and counted (the sinks shrink what they can first).
    pub fn submit(&mut self, messages: Vec<Message>) -> Result<()> {
        let mut ok = Vec::with_capacity(messages.len());
        for m in messages {
            if self.fits(&m) {
                ok.push(m);
            } else {
                self.count_oversized(&m.topic, m.payload.len());
            }
        }
        if self.connected && self.spool.is_empty() {
            self.queue.extend(ok);
        } else if self.connected && !self.queue.is_empty() {
            // Already waiting in memory behind the spool (its disk refused them): keep order.
            self.queue.extend(ok);
        } else {
            self.spool_or_keep(ok);
        }
        Ok(())
    }

    /// Spool messages; while connected, what the spool's disk refuses waits in memory
    /// behind the spool instead of being lost (the queue is bounded by `can_accept`).
    fn spool_or_keep(&mut self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        if self.spool.push(&messages) {
            self.stats.spooled += messages.len() as u64;
        } else if self.connected {
            self.queue.extend(messages);
        } else {
            self.stats.spool_failed += messages.len() as u64;
            if let Some(n) = self.spool_failed_log.ready() {
                log::warn!(
                    "{} message(s) lost: the spool could not store them ({} lost in all){}",
                    messages.len(),
                    self.stats.spool_failed,
                    more(n)
                );
            }
        }
    }

    /// Publish a current-state message (status, metrics) if connected; otherwise it is
    /// dropped: a stale one is worth nothing later.
    pub fn publish_transient(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
        if !self.connected {
            return;
        }
        if !packet::fits(topic, payload.len(), self.max_packet) {
            self.count_oversized(topic, payload.len());
            return;
        }
        if let Some(c) = &self.client {
            if c.try_publish(topic, QoS::AtLeastOnce, retain, payload)
                .is_ok()
            {
                self.inflight.push(Origin::Transient);
            }
        }
    }

    /// Move every undelivered in-memory message (unacknowledged in-flight ones first, then
    /// the queue) to the end of the spool, in order. Spool-sourced in-flight entries are
    /// still in the spool; transient ones are dropped.
    fn spill_memory(&mut self) {
        let mut back = self.inflight.take_memory();
        back.extend(self.queue.drain(..));
        let was = self.connected;
        // Not connected any more: what the disk refuses is lost (and counted).
        self.connected = false;
        self.spool_or_keep(back);
        self.connected = was;
    }

    /// Hand messages to the client, up to `max_inflight` awaiting PUBACK.
    fn feed(&mut self) {
        if !self.connected || self.client.is_none() {
            return;
        }
        let room = self.max_inflight.saturating_sub(self.inflight.len());
        if room == 0 {
            return;
        }
        if !self.spool.is_empty() {
            let batch = self.spool.next_batch(self.spool_cursor, room);
            for (id, m) in batch {
                if !packet::fits(&m.topic, m.payload.len(), self.max_packet) {
                    // Spooled under another limit (or version): it can never be sent.
                    self.spool_cursor = Some(id);
                    self.discarded_spool.push(id);
                    self.count_oversized(&m.topic, m.payload.len());
                    continue;
                }
                let Some(client) = self.client.as_ref() else {
                    break;
                };
                if client
                    .try_publish(m.topic, QoS::AtLeastOnce, false, m.payload)
                    .is_err()
                {
                    break;
                }
                self.spool_cursor = Some(id);
                self.inflight.push(Origin::Spool(id));
            }
        } else if let Some(client) = self.client.as_ref() {
            for _ in 0..room {
                let Some(m) = self.queue.pop_front() else {
                    break;
                };
                if client
                    .try_publish(m.topic.clone(), QoS::AtLeastOnce, false, m.payload.clone())
                    .is_err()
                {
                    self.queue.push_front(m);
                    break;
                }
                self.inflight.push(Origin::Memory(m));
            }
        }
    }

    fn flush_acks(&mut self) {
        if !self.acked_spool.is_empty() || !self.discarded_spool.is_empty() {
            let mut ids = std::mem::take(&mut self.acked_spool);
            ids.append(&mut self.discarded_spool);
            self.spool.remove(&ids);
        }
    }

    /// New status messages (the serving model changed): the online one is published
    /// (retained) now if connected, and both are used from the next connection on. MQTT
    /// cannot change the Last Will of a live connection, so until a reconnect the broker
    /// would still announce the previous model if this connection died.
    pub fn set_status(&mut self, online: Vec<u8>, offline: Vec<u8>) {
        self.options.set_last_will(LastWill::new(
            self.status.topic.clone(),
            offline.clone(),
            QoS::AtLeastOnce,
            true,
        ));
        self.status.online = online;
        self.status.offline = offline;
        let topic = self.status.topic.clone();
        let online = self.status.online.clone();
        self.publish_transient(&topic, online, true);
    }

    /// Set a retained state message: published now if connected, and at every connect.
    pub fn set_retained(&mut self, m: Message) {
        self.publish_transient(&m.topic, m.payload.clone(), true);
        match self.retained.iter_mut().find(|r| r.topic == m.topic) {
            Some(r) => *r = m,
            None => self.retained.push(m),
        }
    }

    /// The offline status a clean shutdown publishes (the Last Will keeps its own).
    pub fn set_offline_reason(&mut self, offline: Vec<u8>) {
        self.status.offline = offline;
    }
}
