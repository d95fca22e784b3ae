//! maeday-edge: MAEDAY anomaly detection (an MAE reconstructing each frame under N random
//! masks) on edge devices, through tract.
//!
//! The data flows through one module per stage:
//! [`preprocess`] (frame -> normalised windows) -> [`schedule`] (which patches each mask
//! keeps) -> [`engine`] (the ONNX graph, all masks in one batch) -> [`scoring`] (Eq. 1:
//! reconstructions -> anomaly map -> score) -> [`calibration`] / [`render`] (thresholds,
//! masks, overlays). [`detector`] wires them together for one frame; [`manifest`] pins
//! everything a model needs; [`dataset`] and [`metrics`] serve `eval`.

pub mod calibration;
pub mod commands;
pub mod convert;
pub mod dataset;
pub mod detector;
pub mod engine;
pub mod manifest;
pub mod metrics;
pub mod preprocess;
pub mod render;
pub mod schedule;
pub mod scoring;
