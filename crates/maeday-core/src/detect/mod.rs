//! One frame in, one [`detector::Detection`] out.
//!
//! [`decode`] (bounded image decode) -> [`preprocess`] (frame -> normalised windows) ->
//! [`engine`] (the ONNX graph, all masks in one batch) -> [`eq1`] (the paper's Eq. 1:
//! reconstructions -> anomaly map) -> [`fuse`] (MAEDAY, the memory bank, or their
//! standardised sum) -> [`calibration`] / [`render`] (thresholds, masks, heatmaps).
//! [`detector`] wires them together.

pub mod calibration;
pub mod combine;
pub mod decode;
pub mod detector;
pub mod engine;
pub mod eq1;
pub mod fuse;
pub mod good_stats;
pub mod pixel_norm;
pub mod preprocess;
pub mod render;
pub mod stitch;
