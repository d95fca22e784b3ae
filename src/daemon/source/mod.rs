//! Frame sources: where frames come from (a V4L2 camera or a replay of files).
//!
//! A source hands out decoded RGB frames one at a time. A frame that cannot be decoded
//! (truncated MJPEG, short buffer, corrupt file) is reported as [`Next::Corrupt`] so the
//! pipeline counts and skips it; a camera that disappears is reopened by the source itself
//! (with backoff), so the pipeline only ever sees frames, corrupt frames or the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use image::RgbImage;

use crate::config::{PipelineConfig, SourceConfig};

pub mod check;
pub mod convert;
#[cfg(feature = "gstreamer")]
pub mod gst_pipeline;
#[cfg(feature = "gstreamer")]
pub mod gstreamer;
pub mod replay;
#[cfg(all(target_os = "linux", feature = "v4l2"))]
pub mod v4l2;
#[cfg(target_os = "linux")]
pub mod v4l2_abi;

/// What a source yields next.
pub enum Next {
    Frame(RgbImage),
    /// A frame arrived but could not be decoded; the error says why.
    Corrupt(anyhow::Error),
    /// No more frames (a replay that does not loop), or the daemon is stopping.
    End,
}

pub trait FrameSource: Send {
    /// Block until the next frame (or corrupt frame, or the end).
    fn next_frame(&mut self) -> Next;
    /// One line for the log: what was opened and what the driver granted.
    fn describe(&self) -> String;
    /// Replays without a frame rate want every frame scored (the pipeline then waits for
    /// inference instead of dropping); live cameras never wait.
    fn wants_every_frame(&self) -> bool {
        false
    }
    /// When the last frame was captured, where the stream says (a GStreamer live
    /// stream's timestamps); None: when it was handed out.
    fn frame_time(&self) -> Option<std::time::SystemTime> {
        None
    }
}

/// Open the source a camera's config describes. `stop` ends blocking waits early.
pub fn open(
    cfg: &SourceConfig,
    pipeline: &PipelineConfig,
    stop: Arc<AtomicBool>,
) -> Result<Box<dyn FrameSource>> {
    match cfg {
        SourceConfig::Replay { path, fps, looping } if replay::is_video(path) => {
            open_video(path, *fps, *looping, pipeline, stop)
        }
        SourceConfig::Replay { path, fps, looping } => Ok(Box::new(replay::ReplaySource::open(
            path,
            *fps,
            *looping,
            pipeline.decode_limits(),
            stop,
        )?)),
        #[cfg(all(target_os = "linux", feature = "v4l2"))]
        SourceConfig::V4l2 { .. } => Ok(Box::new(v4l2::V4l2Source::new(cfg, pipeline, stop)?)),
        #[cfg(not(all(target_os = "linux", feature = "v4l2")))]
        SourceConfig::V4l2 { device, .. } => {
            let _ = (pipeline, stop);
            anyhow::bail!(
                "camera {}: this build has no V4L2 support (Linux with feature v4l2)",
                device.display()
            )
        }
        #[cfg(feature = "gstreamer")]
        SourceConfig::Gstreamer { .. } => {
            Ok(Box::new(gstreamer::GstSource::live(cfg, pipeline, stop)?))
        }
        #[cfg(not(feature = "gstreamer"))]
        SourceConfig::Gstreamer { .. } => {
            let _ = (pipeline, stop);
            anyhow::bail!("this build has no GStreamer support (build with --features gstreamer)")
        }
    }
}

/// A video-file replay (MP4/MKV/...): GStreamer decodes it (feature `gstreamer`).
fn open_video(
    path: &std::path::Path,
    fps: f64,
    looping: bool,
    pipeline: &PipelineConfig,
    stop: Arc<AtomicBool>,
) -> Result<Box<dyn FrameSource>> {
    #[cfg(feature = "gstreamer")]
    return Ok(Box::new(gstreamer::GstSource::replay(
        path, fps, looping, pipeline, stop,
    )?));
    #[cfg(not(feature = "gstreamer"))]
    {
        let _ = (fps, looping, pipeline, stop);
        anyhow::bail!(
            "replay {}: a video file needs GStreamer (build with --features gstreamer)",
            path.display()
        )
    }
}

/// Sleep until `deadline`, waking early when `stop` is set. Returns false if stopped.
pub fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}
