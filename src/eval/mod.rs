//! Offline evaluation: labelled [`dataset`]s and the [`roc`] metrics (AUROC, PRO).

pub mod dataset;
pub mod roc;
