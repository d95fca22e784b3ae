//! [`Output`]: what every destination of results does (console, folder, MQTT), and the
//! [`Rendered`] frame they all take, with its pictures encoded once.

use anyhow::Result;

use crate::daemon::payload::{Picture, ResultPayload};
use crate::daemon::stats::MetricsPayload;

/// One scored frame ready for the outputs.
pub struct Rendered {
    /// `mask` says whether a mask was made for this frame.
    pub payload: ResultPayload,
    /// The binary mask, when the mask policy wants one for this frame.
    pub mask: Option<Picture>,
    pub mask_png: Option<Vec<u8>>,
    /// The heatmap overlay, with `output.heatmap`.
    pub heatmap: Option<Picture>,
    /// Encoded only when the folder keeps it (beside a mask); MQTT encodes its own else.
    pub heatmap_png: Option<Vec<u8>>,
}

/// A destination of results and metrics. Called on the sink thread, in frame order.
pub trait Output {
    /// One frame's result.
    fn result(&mut self, frame: &Rendered) -> Result<()>;
    /// The metrics (periodic, or asked for by a `metrics` command).
    fn metrics(&mut self, m: &MetricsPayload) -> Result<()>;
}
