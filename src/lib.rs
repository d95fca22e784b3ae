//! maeday-edge: MAEDAY anomaly detection (an MAE reconstructing each frame under N random
//! masks) on edge devices, through tract.

pub mod bank;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod durable;
pub mod enroll;
pub mod eval;
pub mod faults;
pub mod model;
pub mod progress;
pub mod update;
