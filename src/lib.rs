//! maeday-edge: MAEDAY anomaly detection (an MAE reconstructing each frame under N random
//! masks) on edge devices, through tract.
//!
//! The data flows through one module per stage:
//! [`preprocess`] (frame -> normalised windows) -> [`schedule`] (which patches each mask
//! keeps) -> [`engine`] (the ONNX graph, all masks in one batch) -> [`scoring`] (Eq. 1:
//! reconstructions -> anomaly map -> score) -> [`calibration`] / [`render`] (thresholds,
//! masks, overlays). [`detector`] wires them together for one frame; [`manifest`] pins
//! everything a model needs; [`dataset`] and [`metrics`] serve `eval`.
//! Few-shot: [`enroll`] (good frames -> [`features`] -> [`bank`], on disk) and [`scorer`]
//! (MAEDAY, the memory bank, or their standardised sum).
//!
//! The daemon (`run`): [`config`] -> [`source`] (V4L2 via [`convert`], or replay; every
//! frame decoded within [`decode`]'s limits) ->
//! [`pipeline`] (capture / inference / sink threads, newest-frame slots, latency stats) ->
//! [`message`] (result payloads, masks) -> [`sink`] (console, files) and [`mqtt`] (QoS 1
//! with the on-disk [`spool`] for store-and-forward); `broker` is the embedded broker.

pub mod bank;
pub mod boot;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod bundle;
pub mod calibration;
pub mod commands;
pub mod config;
pub mod convert;
pub mod dataset;
pub mod decode;
pub mod detector;
pub mod engine;
pub mod enroll;
pub mod features;
pub mod manifest;
pub mod message;
pub mod metrics;
pub mod mqtt;
pub mod packet;
pub mod pipeline;
pub mod preprocess;
pub mod render;
pub mod schedule;
pub mod scorer;
pub mod scoring;
pub mod sink;
pub mod source;
pub mod spool;
pub mod throttle;
pub mod watchdog;
