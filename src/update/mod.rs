//! Model updates as data: the signed [`bundle`] format, its chunked [`transfer`], and the
//! signed operator [`command`]s. Pure parsing and verification (fuzzed): no MQTT, no disk
//! state; the daemon's installer applies them.

pub mod bundle;
pub mod command;
pub mod transfer;
