//! The daemon (`run`): frames from a [`source`] through the detector to the outputs.

pub mod boot;
pub mod installer;
pub mod mqtt;
pub mod outputs;
pub mod payload;
pub mod pipeline;
pub mod source;
pub mod throttle;
pub mod watchdog;
