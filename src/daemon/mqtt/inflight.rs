//! The messages handed to the client and not yet acknowledged, in publish order.
//!
//! rumqttc reports the packet id of each publish (`Outgoing::Publish(pkid)`) in the order
//! the publishes were handed to it, so the oldest entry without an id gets the next one;
//! a PUBACK then names the entry it settles.

use std::collections::VecDeque;

use crate::daemon::mqtt::spool::Message;

/// Where an in-flight message came from.
#[derive(Debug)]
pub enum Origin {
    /// Straight from memory; spooled again if the connection drops before its PUBACK.
    Memory(Message),
    /// From the spool; removed from it at PUBACK.
    Spool(u64),
    /// Status and metrics: current-state messages that are not worth keeping.
    Transient,
}

#[derive(Debug)]
struct Entry {
    origin: Origin,
    pkid: Option<u16>,
}

#[derive(Debug, Default)]
pub struct Inflight(VecDeque<Entry>);

impl Inflight {
    /// A publish was handed to the client.
    pub fn push(&mut self, origin: Origin) {
        self.0.push_back(Entry { origin, pkid: None });
    }

    /// The client sent the oldest publish without an id as `pkid`.
    pub fn sent(&mut self, pkid: u16) {
        if let Some(e) = self.0.iter_mut().find(|e| e.pkid.is_none()) {
            e.pkid = Some(pkid);
        }
    }

    /// The broker acknowledged `pkid`: where that message came from, if it was ours.
    pub fn acked(&mut self, pkid: u16) -> Option<Origin> {
        let i = self.0.iter().position(|e| e.pkid == Some(pkid))?;
        self.0.remove(i).map(|e| e.origin)
    }

    /// The connection is gone: the unacknowledged in-memory messages, oldest first
    /// (spool-sourced ones are still in the spool, transient ones are dropped).
    pub fn take_memory(&mut self) -> Vec<Message> {
        self.0
            .drain(..)
            .filter_map(|e| match e.origin {
                Origin::Memory(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
