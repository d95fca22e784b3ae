//! Moving a bundle over MQTT: the [`Chunk`] format a sender cuts a bundle into
//! ([`chunk`], pure), and the on-disk [`Assembler`] that puts a transfer back together
//! within [`Limits`] ([`assembler`]).
//!
//! A sender publishes chunks (CBOR) to `maeday/<device_id>/bundle/chunk` or
//! `maeday/fleet/<group>/bundle/chunk`; the device's installer feeds each one to the
//! assembler and installs the bundle it completes.

pub mod assembler;
pub mod chunk;

pub use assembler::{Assembler, Limits, Progress};
pub use chunk::{split, Chunk};
