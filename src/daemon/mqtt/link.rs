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
//! event loop (thread), and a lost connection is dropped whole. Subscriptions are re-sent
//! after every CONNACK (a clean-session reconnect forgets them). The max packet size is set
//! explicitly (rumqttc's default, 10 KiB, would reject mask PNGs), and no message over it is
//! ever handed to the client: rumqttc fails the whole connection on one, and a message that
//! goes back to the head of the spool would then fail every connection after it. The sinks
//! shrink pictures to fit ([`crate::daemon::mqtt::packet`]); what is over the limit here (from a spool
//! written under another limit, or a topic too long) is dropped and counted.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rumqttc::{
    Client, ConnectionError, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS, StateError,
    TlsConfiguration, Transport,
};

use crate::config::{url_with_client_id, MqttConfig};
use crate::daemon::mqtt::packet;
use crate::daemon::mqtt::spool::{Message, Spool};
use crate::daemon::throttle::{more, Throttle};

/// Where an in-flight message came from.
#[derive(Debug)]
enum Origin {
    /// Straight from memory; spooled again if the connection drops before its PUBACK.
    Memory(Message),
    /// From the spool; removed from it at PUBACK.
    Spool(u64),
    /// Status and metrics: current-state messages that are not worth keeping.
    Transient,
}

#[derive(Debug)]
struct Inflight {
    origin: Origin,
    pkid: Option<u16>,
}

/// A message from the broker on a subscribed topic.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
}

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

/// What the status topic says, encoded by the caller.
pub struct StatusMessages {
    pub topic: String,
    pub online: Vec<u8>,
    /// Also the Last Will: what the broker publishes when the connection dies.
    pub offline: Vec<u8>,
}

pub struct MqttSink {
    options: MqttOptions,
    client: Option<Client>,
    generation: u64,
    events_tx: Sender<(u64, Result<Event, ConnectionError>)>,
    events_rx: Receiver<(u64, Result<Event, ConnectionError>)>,
    connected: bool,
    retry_at: Instant,
    backoff: Duration,
    max_inflight: usize,
    inflight: VecDeque<Inflight>,
    /// Messages waiting to go direct (only while connected with an empty spool).
    queue: VecDeque<Message>,
    spool: Spool,
    /// The last spool id handed to the client during this connection.
    spool_cursor: Option<u64>,
    acked_spool: Vec<u64>,
    status: StatusMessages,
    subscriptions: Vec<String>,
    received: Option<Sender<Received>>,
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
}

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl MqttSink {
    /// `url` overrides the configured one (`run --mqtt-url`).
    pub fn new(
        cfg: &MqttConfig,
        url: Option<&str>,
        default_client_id: &str,
        status: StatusMessages,
        subscriptions: Vec<String>,
        received: Option<Sender<Received>>,
    ) -> Result<MqttSink> {
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
            status.topic.clone(),
            status.offline.clone(),
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
        let spool = Spool::open_or_memory(&cfg.spool.dir, cfg.spool.max_bytes);
        if !spool.is_empty() {
            log::info!(
                "spool {} holds {} messages ({} bytes) from before: they go first",
                cfg.spool.dir.display(),
                spool.len(),
                spool.bytes()
            );
        }
        let (events_tx, events_rx) = mpsc::channel();
        let mut sink = MqttSink {
            options,
            client: None,
            generation: 0,
            events_tx,
            events_rx,
            connected: false,
            retry_at: Instant::now(),
            backoff: MIN_BACKOFF,
            max_inflight: cfg.max_inflight,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            spool,
            spool_cursor: None,
            acked_spool: Vec::new(),
            status,
            subscriptions,
            received,
            stats: MqttStats::default(),
            closing: false,
            max_packet: cfg.max_packet_bytes,
            discarded_spool: Vec::new(),
            oversize_log: Throttle::default(),
            spool_failed_log: Throttle::default(),
            clearable: Vec::new(),
            clear_on_connect: false,
            connected_at: Instant::now(),
        };
        sink.stats.spool_messages = sink.spool.len();
        sink.connect();
        Ok(sink)
    }

    /// Start a fresh client and event-loop thread (the old one, if any, is dropped).
    fn connect(&mut self) {
        self.generation += 1;
        let gen = self.generation;
        let cap = self.max_inflight + 64;
        let (client, mut connection) = Client::new(self.options.clone(), cap);
        let tx = self.events_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("mqtt-events".into())
            .spawn(move || {
                for event in connection.iter() {
                    let failed = event.is_err();
                    if tx.send((gen, event)).is_err() || failed {
                        break;
                    }
                }
            });
        match spawned {
            Ok(_) => self.client = Some(client),
            Err(e) => log::error!("cannot start the MQTT event thread: {e}"),
        }
    }

    /// Topics of this device on which a retained message is cleared when seen.
    pub fn clear_retained_on(&mut self, topics: Vec<String>) {
        self.clearable = topics;
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
                self.inflight.push_back(Inflight {
                    origin: Origin::Transient,
                    pkid: None,
                });
            }
        }
    }

    /// Drive the connection: handle events for up to `wait`, hand queued messages to the
    /// client, reconnect when due.
    pub fn poll(&mut self, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            self.feed()?;
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events_rx.recv_timeout(left) {
                Ok((gen, event)) if gen == self.generation => self.handle(event)?,
                Ok(_) => {} // from a connection already given up
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("we hold a sender"),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if self.client.is_none() && !self.closing && Instant::now() >= self.retry_at {
            self.connect();
        }
        self.flush_acks();
        Ok(())
    }

    fn handle(&mut self, event: Result<Event, ConnectionError>) -> Result<()> {
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
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(f) = self.inflight.iter_mut().find(|f| f.pkid.is_none()) {
                    f.pkid = Some(pkid);
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                if let Some(i) = self.inflight.iter().position(|f| f.pkid == Some(ack.pkid)) {
                    let f = self.inflight.remove(i).expect("index from position");
                    match f.origin {
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
                // Commands and chunks are events, never state: a retained one would run
                // again at every reconnect. An empty one is a clear (ours, or the broker's).
                if p.retain {
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
                    return Ok(());
                }
                if let Some(tx) = &self.received {
                    let _ = tx.send(Received {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                    });
                }
            }
            Ok(_) => {}
            Err(e) => self.lost(e)?,
        }
        Ok(())
    }

    /// The connection failed or dropped: give it up, keep every unacknowledged message.
    fn lost(&mut self, e: ConnectionError) -> Result<()> {
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
        Ok(())
    }

    /// Move every undelivered in-memory message (unacknowledged in-flight ones first, then
    /// the queue) to the end of the spool, in order. Spool-sourced in-flight entries are
    /// still in the spool; transient ones are dropped.
    fn spill_memory(&mut self) {
        let mut back: Vec<Message> = Vec::new();
        for f in self.inflight.drain(..) {
            if let Origin::Memory(m) = f.origin {
                back.push(m);
            }
        }
        back.extend(self.queue.drain(..));
        let was = self.connected;
        // Not connected any more: what the disk refuses is lost (and counted).
        self.connected = false;
        self.spool_or_keep(back);
        self.connected = was;
    }

    /// Hand messages to the client, up to `max_inflight` awaiting PUBACK.
    fn feed(&mut self) -> Result<()> {
        if !self.connected {
            return Ok(());
        }
        if self.client.is_none() {
            return Ok(());
        }
        let room = self.max_inflight.saturating_sub(self.inflight.len());
        if room == 0 {
            return Ok(());
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
                self.inflight.push_back(Inflight {
                    origin: Origin::Spool(id),
                    pkid: None,
                });
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
                self.inflight.push_back(Inflight {
                    origin: Origin::Memory(m),
                    pkid: None,
                });
            }
        }
        Ok(())
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

    /// The offline status a clean shutdown publishes (the Last Will keeps its own).
    pub fn set_offline_reason(&mut self, offline: Vec<u8>) {
        self.status.offline = offline;
    }

    /// Stop: give the broker up to `grace` to take what is queued, spool the rest, say
    /// offline (retained) and disconnect.
    pub fn shutdown(mut self, grace: Duration) -> Result<MqttStats> {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !self.is_idle() {
            self.poll(Duration::from_millis(20))?;
        }
        self.flush_acks();
        self.spill_memory();
        if !self.spool.is_empty() {
            log::warn!(
                "{} messages stay in the spool for the next start",
                self.spool.len()
            );
        }
        if self.connected {
            let topic = self.status.topic.clone();
            let offline = self.status.offline.clone();
            self.publish_transient(&topic, offline, true);
            // Wait (briefly) for the offline status to be acknowledged, then disconnect.
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until && !self.inflight.is_empty() && self.connected {
                self.poll(Duration::from_millis(20))?;
            }
            self.closing = true;
            if let Some(c) = &self.client {
                let _ = c.try_disconnect();
            }
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until && self.connected {
                self.poll(Duration::from_millis(20))?;
            }
        }
        Ok(self.stats())
    }
}
