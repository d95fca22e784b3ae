//! Replay: frames from an image folder, a glob, a single image or an animated GIF.
//!
//! This is the built-in default source and what tests and demos drive. Files are decoded
//! lazily (a folder of 1080p frames is not held in memory); a GIF's frames are decoded
//! once at open (GIF decoding is sequential by nature and clips are small).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use image::codecs::gif::GifDecoder;
use image::{AnimationDecoder, DynamicImage, RgbImage};

use super::{sleep_until, FrameSource, Next};
use crate::dataset::list_images;
use crate::preprocess::load_image;

enum Frames {
    Files(Vec<PathBuf>),
    Decoded(Vec<RgbImage>),
}

pub struct ReplaySource {
    what: String,
    frames: Frames,
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

fn is_gif(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gif"))
}

fn decode_gif(path: &Path) -> Result<Vec<RgbImage>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let decoder = GifDecoder::new(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not a readable GIF", path.display()))?;
    let mut out = Vec::new();
    for frame in decoder.into_frames() {
        let frame = frame.with_context(|| {
            format!("corrupt GIF {} after {} frames", path.display(), out.len())
        })?;
        out.push(DynamicImage::ImageRgba8(frame.into_buffer()).to_rgb8());
    }
    ensure!(!out.is_empty(), "GIF {} has no frames", path.display());
    Ok(out)
}

impl ReplaySource {
    /// `fps` 0 = as fast as the pipeline takes them.
    pub fn open(path: &Path, fps: f64, looping: bool, stop: Arc<AtomicBool>) -> Result<Self> {
        let files = expand(path)?;
        let frames = if files.len() == 1 && is_gif(&files[0]) {
            Frames::Decoded(decode_gif(&files[0])?)
        } else {
            Frames::Files(files)
        };
        let count = match &frames {
            Frames::Files(f) => f.len(),
            Frames::Decoded(f) => f.len(),
        };
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
            next: 0,
            period: (fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps)),
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
        let len = match &self.frames {
            Frames::Files(f) => f.len(),
            Frames::Decoded(f) => f.len(),
        };
        if self.next >= len {
            if !self.looping {
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
            Frames::Decoded(f) => Next::Frame(f[i].clone()),
            Frames::Files(f) => match load_image(&f[i]) {
                Ok(img) => Next::Frame(img.to_rgb8()),
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
        let mut src = ReplaySource::open(&gif, 0.0, false, stop).unwrap();
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
        let mut src = ReplaySource::open(dir.path(), 0.0, false, stop).unwrap();
        let kinds: Vec<&str> = std::iter::from_fn(|| match src.next_frame() {
            Next::Frame(_) => Some("frame"),
            Next::Corrupt(_) => Some("corrupt"),
            Next::End => None,
        })
        .collect();
        assert_eq!(kinds, ["frame", "corrupt", "frame"]);
    }

    #[test]
    fn glob_and_looping() {
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples/co*.png");
        let stop = Arc::new(AtomicBool::new(false));
        let mut src = ReplaySource::open(&samples, 0.0, true, stop.clone()).unwrap();
        // coffee-224, coffee, coins: 3 files, then it starts again.
        for _ in 0..7 {
            assert!(matches!(src.next_frame(), Next::Frame(_)));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(matches!(src.next_frame(), Next::End));
        assert!(ReplaySource::open(Path::new("/nonexistent/x*.png"), 0.0, false, stop).is_err());
    }
}
