//! maeday-edge: MAEDAY anomaly detection (an MAE reconstructing each frame under N random
//! masks) on edge devices, through tract.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod faults;
pub mod update;

// The detection core, under the names the rest of this crate (and its users) use.
pub use maeday_core::{bank, detect, durable, enroll, eval, model, progress};
