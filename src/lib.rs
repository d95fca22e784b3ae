//! maeday-edge: MAEDAY anomaly detection (an MAE reconstructing each frame under N random
//! masks) on edge devices, through tract.
//!
//! Three crates, layered one way:
//!
//! - `maeday-core` (`crates/maeday-core`, re-exported here as [`model`], [`detect`],
//!   [`bank`], [`enroll`], [`eval`], [`durable`], [`progress`], [`faults`]): one frame in,
//!   one detection out; few-shot memory banks; offline evaluation. No daemon crate in its
//!   dependency tree.
//! - `maeday-update` (`crates/maeday-update`, re-exported as [`update`]): bundles, their
//!   chunked transfer, golden frames, signed commands, A/B slots; no MQTT, no threads.
//! - this crate: the daemon and the command line, on top of both.
//!
//! The daemon's data path (`maeday-edge run`), one module per step:
//!
//! ```text
//! config ──> daemon::startup (serving model, boot number, broker, cameras)
//! daemon::source (replay | v4l2, bounded decode) ──> daemon::capture (newest-frame slot per camera)
//!   ──> daemon::infer (ROI crop, core Detector: all N masks in one batch) ──> daemon::payload
//!   ──> daemon::events (one channel) ──> daemon::sink ──> daemon::outputs (console | files | mqtt)
//!                                                           └─> daemon::mqtt (link, spool, packet limit)
//! MQTT in ──> daemon::control (one Command parser, signatures) ──> daemon::installer
//!   (update::bundle / transfer / command: verify) ──> A/B slots ──> a swap between two frames
//!                                             daemon::enrollment (live good frames -> enroll)
//! ```
//!
//! [`daemon`] wires the threads and owns shutdown; [`config`] has one file per TOML
//! section, each owning its keys, defaults and checks; [`update`] is pure parsing and
//! verification of bundles and signed commands (fuzzed); [`cli`] has one file per
//! subcommand.

pub mod cli;
pub mod config;
pub mod daemon;

// The lower crates, under the names the rest of this crate (and its users) use.
pub use maeday_core::{bank, detect, durable, enroll, eval, faults, model, progress};
pub use maeday_update as update;
