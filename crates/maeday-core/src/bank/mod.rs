//! The few-shot memory bank: patch features of good frames ([`features`]), kept as a
//! coreset ([`memory`]) and scored by nearest-neighbour distance.

pub mod features;
pub mod memory;
pub mod pixel_file;
pub mod scoring;
pub mod store;
pub mod view;
