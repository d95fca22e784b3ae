//! Offline evaluation: labelled [`dataset`]s, the [`roc`] metrics (AUROC, PRO), the [`run`]
//! over a dataset, its figures per defect [`groups`] and its report [`table`].

pub mod combos;
pub mod dataset;
pub mod groups;
pub mod operating;
pub mod roc;
pub mod run;
pub mod table;
