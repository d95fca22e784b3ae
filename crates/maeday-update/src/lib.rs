//! maeday-update: model updates as data. The signed [`bundle`] format, its chunked [`transfer`], the [`golden`]
//! frame recipe both the workstation and the device follow, the signed operator
//! [`command`]s, and the A/B model [`slots`] a bundle or an enrollment is installed into.
//!
//! Parsing and verification are pure (and fuzzed); the incoming chunk area and the slots are
//! the only disk state, each behind one type. No MQTT and no threads: the daemon's
//! installer (`maeday-edge`'s `daemon::installer`) drives them. The fuzz targets depend on
//! this crate.

// The detection core, under the paths this crate's modules name.
use maeday_core::{bank, detect, durable, faults, model};

pub mod bundle;
pub mod command;
pub mod golden;
pub mod slots;
pub mod transfer;
