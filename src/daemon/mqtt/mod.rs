//! The MQTT side of the daemon: the client [`link`] (QoS 1, reconnects), the on-disk
//! [`spool`] for store-and-forward, [`packet`] sizing, and the embedded [`broker`].

#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod link;
pub mod packet;
pub mod spool;
