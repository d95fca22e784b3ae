//! The hostile or unlucky user, end to end (issue 16): each attack that once broke the
//! daemon, replayed against the real binary, a real broker and real files. One file per
//! part of the boundary:
//! - `delivery`: result identity across restarts, oversized messages, a full spool disk,
//!   oversized and retained commands.
//! - `control`: who may change what serves (commands, rollback, enrollment slots) and the
//!   incoming chunk area.
//! - `inputs`: bounded decoding of frames, and configs that `--check` accepts never crash.

mod common;

#[path = "hostile/control.rs"]
mod control;
#[path = "hostile/delivery.rs"]
mod delivery;
#[path = "hostile/inputs.rs"]
mod inputs;
