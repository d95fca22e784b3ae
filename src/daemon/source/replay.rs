//! Replay: frames from an image folder, a glob, a single image or an animated GIF.
//!
//! This is the built-in default source and what tests and demos drive. Files are decoded
//! lazily (a folder of 1080p frames is not held in memory); a GIF's frames are decoded
//! once at open (GIF decoding is sequential by nature and clips are small: at most
//! [`crate::detect::decode::GIF_CLIP_MAX_BYTES`]). Every decode is bounded by the
//! [`DecodeLimits`] (`pipeline.max_frame_pixels`); a file or GIF beyond them is a corrupt
//! frame, counted and skipped, never an allocation the device cannot make.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use image::RgbImage;

use super::{sleep_until, FrameSource, Next};
use crate::config::rate_period;
use crate::detect::decode::{gif_frames, load, read_bounded, DecodeLimits};
use crate::eval::dataset::list_images;

enum Frames {
    Files(Vec<PathBuf>),
    /// A GIF's frames; `damage` (why the rest could not be decoded) follows them as one
    /// corrupt frame.
    Decoded {
        frames: Vec<RgbImage>,
        damage: Option<String>,
    },
}

impl Frames {
    /// Positions per pass (a damaged GIF's damage counts as one).
    fn len(&self) -> usize {
        match self {
            Frames::Files(f) => f.len(),
            Frames::Decoded { frames, damage } => frames.len() + usize::from(damage.is_some()),
        }
    }
}

pub struct ReplaySource {
    what: String,
    frames: Frames,
    limits: DecodeLimits,
    next: usize,
    period: Option<Duration>,
    looping: bool,
    deadline: Instant,
    stop: Arc<AtomicBool>,
}

/// The files a replay path names, in order.
pub fn expand(path: &Path) -> Result<Vec<PathBuf>> {
    let text = path.to_string_lossy();
    let files = if text.contains(['*', '?', '[']) {
        let mut files = Vec::new();
        for entry in glob::glob(&text).with_context(|| format!("bad glob pattern {text}"))? {
            let p = entry.with_context(|| format!("cannot read a match of {text}"))?;
            if p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        files
    } else if path.is_dir() {
        list_images(path)?
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        bail!("replay path {} does not exist", path.display());
    };
    ensure!(
        !files.is_empty(),
        "replay path {} has no images",
        path.display()
    );
    Ok(files)
}

/// Whether a replay path is one video file (MP4, MKV, ...: played through GStreamer).
pub fn is_video(path: &Path) -> bool {
    const VIDEO: &[&str] = &["mp4", "mkv", "mov", "webm", "avi", "h264", "h265", "ts"];
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO.iter().any(|v| e.eq_ignore_ascii_case(v)))
}

fn is_gif(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gif"))
}

impl ReplaySource {
    /// `fps` 0 = as fast as the pipeline takes them. Every frame is decoded within
    /// `limits`; one that is not is a corrupt frame, not an error.
    pub fn open(
        path: &Path,
        fps: f64,
        looping: bool,
        limits: DecodeLimits,
        stop: Arc<AtomicBool>,
    ) -> Result<Self> {
        let files = expand(path)?;
        let frames = if files.len() == 1 && is_gif(&files[0]) {
            let gif = &files[0];
            // A GIF that cannot be (fully) decoded within the limits keeps the frames
            // before the damage and replays the damage as one corrupt frame per pass.
            let (frames, damage) = match read_bounded(gif, &limits) {
                Ok(bytes) => gif_frames(&bytes, &limits),
                Err(e) => (Vec::new(), Some(e)),
            };
            let damage =
                damage.map(|e| format!("{:#}", e.context(format!("GIF {}", gif.display()))));
            Frames::Decoded { frames, damage }
        } else {
            Frames::Files(files)
        };
        let count = frames.len();
        let what = format!(
            "replay {} ({count} frames, {}, {})",
            path.display(),
            if fps > 0.0 {
                format!("{fps} fps")
            } else {
                "as fast as scored".into()
            },
            if looping { "looping" } else { "once" }
        );
        Ok(ReplaySource {
            what,
            frames,
            limits,
            next: 0,
            period: rate_period(fps),
            looping,
            deadline: Instant::now(),
            stop,
        })
    }
}

impl FrameSource for ReplaySource {
    fn next_frame(&mut self) -> Next {
        if self.stop.load(Ordering::Relaxed) {
            return Next::End;
        }
        let len = self.frames.len();
        if self.next >= len {
            // A replay with nothing decodable does not spin through corrupt frames.
            let any_good = match &self.frames {
                Frames::Files(_) => true,
                Frames::Decoded { frames, .. } => !frames.is_empty(),
            };
            if !self.looping || !any_good {
                return Next::End;
            }
            self.next = 0;
        }
        if let Some(period) = self.period {
            if !sleep_until(self.deadline, &self.stop) {
                return Next::End;
            }
            // Keep the cadence, but never try to catch up after a stall.
            self.deadline = (self.deadline + period).max(Instant::now());
        }
        let i = self.next;
        self.next += 1;
        match &self.frames {
            Frames::Decoded { frames, damage } => match frames.get(i) {
                Some(f) => Next::Frame(f.clone()),
                None => Next::Corrupt(anyhow::anyhow!(
                    "{}",
                    damage.as_deref().unwrap_or("no frame")
                )),
            },
            Frames::Files(f) => match load(&f[i], &self.limits) {
                Ok(img) => Next::Frame(img.into_rgb8()),
                Err(e) => Next::Corrupt(e),
            },
        }
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn wants_every_frame(&self) -> bool {
        self.period.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conveyor() -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/conveyor/bolt-multi-size-detection.gif");
        p.is_file().then_some(p)
    }

    #[test]
    fn gif_replays_every_frame_once() {
        let Some(gif) = conveyor() else {
            panic!("../shared/data/conveyor is missing: the tests need ../shared beside the repo");
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut src = ReplaySource::open(&gif, 0.0, false, DecodeLimits::default(), stop).unwrap();
        let mut n = 0;
        loop {
            match src.next_frame() {
                Next::Frame(f) => {
                    assert_eq!(f.dimensions(), (480, 270));
                    n += 1;
                }
                Next::Corrupt(e) => panic!("{e:#}"),
                Next::End => break,
            }
        }
        assert_eq!(n, 37);
    }

    #[test]
    fn folder_with_a_truncated_file_yields_corrupt_and_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples");
        std::fs::copy(samples.join("coins.png"), dir.path().join("a.png")).unwrap();
        let bytes = std::fs::read(samples.join("camera.png")).unwrap();
        std::fs::write(dir.path().join("b.png"), &bytes[..bytes.len() / 3]).unwrap();
        std::fs::copy(samples.join("coffee.png"), dir.path().join("c.png")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut src =
            ReplaySource::open(dir.path(), 0.0, false, DecodeLimits::default(), stop).unwrap();
        let kinds: Vec<&str> = std::iter::from_fn(|| match src.next_frame() {
            Next::Frame(_) => Some("frame"),
            Next::Corrupt(_) => Some("corrupt"),
            Next::End => None,
        })
        .collect();
        assert_eq!(kinds, ["frame", "corrupt", "frame"]);
    }

    #[test]
    fn a_gif_beyond_the_limits_is_one_corrupt_frame_per_pass() {
        let dir = tempfile::tempdir().unwrap();
        let gif = dir.path().join("bomb.gif");
        std::fs::write(&gif, crate::detect::decode::screen_bomb_gif()).unwrap();
        for looping in [false, true] {
            let stop = Arc::new(AtomicBool::new(false));
            let mut src =
                ReplaySource::open(&gif, 0.0, looping, DecodeLimits::default(), stop).unwrap();
            match src.next_frame() {
                Next::Corrupt(e) => assert!(format!("{e:#}").contains("65535x65535"), "{e:#}"),
                _ => panic!("not corrupt"),
            }
            // Nothing decodable: it ends, even when looping (no corrupt-frame spin).
            assert!(matches!(src.next_frame(), Next::End));
        }
        // The real clip with a per-frame limit below its 480x270 frames.
        let Some(clip) = conveyor() else {
            panic!("../shared/data/conveyor is missing");
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut src =
            ReplaySource::open(&clip, 0.0, false, DecodeLimits::new(100_000), stop).unwrap();
        assert!(matches!(src.next_frame(), Next::Corrupt(_)));
        assert!(matches!(src.next_frame(), Next::End));
    }

    #[test]
    fn glob_and_looping() {
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples/co*.png");
        let stop = Arc::new(AtomicBool::new(false));
        let mut src =
            ReplaySource::open(&samples, 0.0, true, DecodeLimits::default(), stop.clone()).unwrap();
        // coffee-224, coffee, coins: 3 files, then it starts again.
        for _ in 0..7 {
            assert!(matches!(src.next_frame(), Next::Frame(_)));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(matches!(src.next_frame(), Next::End));
        assert!(ReplaySource::open(
            Path::new("/nonexistent/x*.png"),
            0.0,
            false,
            DecodeLimits::default(),
            stop
        )
        .is_err());
    }
}
