//! Operator commands: JSON requests on `<prefix>/<device>/command`, each answered by exactly
//! one reply on `command/reply` carrying the request's id.
//!
//! An operator on the line needs to stop a camera that is being serviced (`pause`,
//! `resume`), tune how sensitive it is (`thresholds`, persisted and applied without a
//! restart), and look at it (`trigger`: score the next frame now; `snapshot`: a JPEG of
//! it). The pieces, one job each:
//! - [`request`]: reads a request field by field, bounding and never echoing what it does
//!   not recognise;
//! - [`state`]: what the operator set ([`state::Operator`], shared by capture, inference
//!   and the sink thread) and its file in the state folder;
//! - [`reply`]: the reply payload and the per-camera state the retained `status` reports;
//! - [`desk`]: the sink thread's side: runs requests, answers frame requests when their
//!   frame is scored (or when they time out);
//! - [`snapshot`]: the snapshot JPEG, made to fit one MQTT packet.
//!
//! Who may send what is decided in `control` (signatures) with [`request::Action::changes_reports`].

pub mod desk;
pub mod reply;
pub mod request;
pub mod snapshot;
pub mod state;
