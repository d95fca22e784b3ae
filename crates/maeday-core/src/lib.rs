//! maeday-core: MAEDAY anomaly detection on one frame, and what few-shot enrollment and
//! offline evaluation need around it. It knows nothing of cameras, MQTT, bundles or the
//! daemon (it does not even depend on their crates), so it builds, tests and fuzzes alone.
//!
//! The data path, one module per stage:
//!
//! ```text
//! model::manifest ──> Model (graph + manifest, sha256 checked)   model::schedule ──> MaskSchedule
//!        │                                                                 │
//! frame ─┴─> detect::decode (bounded) ─> detect::preprocess (Placement: canvas, windows)
//!            ─> detect::engine (all N masks of a window in one batch: tract, or ONNX Runtime)
//!            ─> detect::eq1 (Eq. 1: reconstructions -> AnomalyMap)
//!            ─> detect::stitch (windows -> one map of the frame)
//!            ─> detect::fuse (MAEDAY, bank::scoring's maps, or their standardised sum)
//!            ─> Detection (map, score)  ─> detect::calibration / detect::render (thresholds, masks, heatmaps)
//! ```
//!
//! [`detect::detector`] wires the stages for one frame. Few-shot: [`enroll`] turns good
//! frames into a memory bank ([`bank::features`] extracts patch features, [`bank::memory`]
//! keeps a coreset, [`bank::store`] puts it on disk). [`eval`] scores labelled datasets
//! (AUROC, PRO). [`durable`] writes files so a power cut leaves old or new, never half.
//! [`faults`] holds the test suite's fault hooks (feature `test-hooks`, never shipped).

pub mod bank;
pub mod detect;
pub mod durable;
pub mod enroll;
pub mod eval;
pub mod faults;
pub mod model;
pub mod progress;
