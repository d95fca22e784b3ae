//! What a model is: its [`manifest`] (everything the runtime needs to serve a graph) and its
//! [`schedule`] (which patches each of the N masks keeps).

pub mod bundled;
pub mod manifest;
pub mod schedule;
