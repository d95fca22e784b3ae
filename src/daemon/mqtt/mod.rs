//! The MQTT side of the daemon: the client [`link`] (QoS 1, store-and-forward, reconnects)
//! with its [`connection`] threads, [`options`], [`inflight`] tracking and [`stats`]; the
//! on-disk [`spool`]; [`packet`] sizing; and the embedded [`broker`].

#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod connection;
pub mod inflight;
pub mod link;
pub mod options;
pub mod packet;
pub mod spool;
pub mod stats;
