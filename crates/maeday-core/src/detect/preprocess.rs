//! From a decoded frame to the graph's input tensors.
//!
//! A frame is first placed on a *canvas* at a working resolution, then cut into one or
//! more `size x size` windows; each window becomes one normalised `[1, 3, size, size]`
//! tensor. How the frame is placed is the [`Fit`]:
//! - `squash`: resize to `size x size` regardless of aspect (what the paper does);
//! - `letterbox`: scale the longer side to `size` and pad with the normalisation mean
//!   (zero after normalising), so shapes are not distorted; the map covers the frame only;
//! - `tile`: scale the *shorter* side to `size` and cover the frame with overlapping
//!   windows, so a 1900x220 tile or a 1080p floor keeps its small defects.
//!
//! Resizing uses the `image` crate's triangle (bilinear) filter, whose support widens
//! with the scale factor when shrinking, i.e. it is antialiased.
//!
//! A manifest with `[input] standardise` also standardises each window's contrast
//! (statistics over the whole window, letterbox padding included) before normalising, so
//! the scores do not follow the camera's exposure; see [`Standardise`].

use std::path::Path;

use anyhow::{bail, ensure, Result};
use image::imageops::{self, FilterType};
use image::{DynamicImage, Rgb, RgbImage};

use crate::detect::decode::DecodeLimits;
use crate::model::manifest::{InputSpec, Standardise, STANDARDISE_EPS};

pub const RESIZE_FILTER: FilterType = FilterType::Triangle;

/// The most elongated frame `tile` accepts: its canvas is then at most 64 windows long.
pub const MAX_TILE_ASPECT: u32 = 64;

/// How a frame of any shape is mapped onto `size x size` windows.
/// Read from text (config `fit`, CLI `--fit`) as `squash`, `letterbox` or `tile` (with the
/// default overlap; a camera's `tile_overlap` replaces it).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Fit {
    #[default]
    Squash,
    Letterbox,
    /// Overlapping windows; `overlap` is the fraction (0..0.9) shared by neighbours.
    Tile {
        overlap: f32,
    },
}

impl TryFrom<String> for Fit {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Fit> {
        s.parse()
    }
}

impl std::str::FromStr for Fit {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Fit> {
        Ok(match s {
            "squash" => Fit::Squash,
            "letterbox" => Fit::Letterbox,
            "tile" => Fit::Tile { overlap: 0.25 },
            other => bail!("unknown fit {other:?} (expected squash, letterbox or tile)"),
        })
    }
}

impl std::fmt::Display for Fit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fit::Squash => f.write_str("squash"),
            Fit::Letterbox => f.write_str("letterbox"),
            Fit::Tile { overlap } => write!(f, "tile(overlap {overlap})"),
        }
    }
}

/// Decode an image file within the default [`DecodeLimits`] (what `score`, `eval`,
/// `enroll` and `calibrate` read), with the path in every error.
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    crate::detect::decode::load(path, &DecodeLimits::default())
}

/// A rectangle in canvas pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A frame placed on its canvas: the windows to run and where the frame lies.
#[derive(Debug, Clone)]
pub struct Placement {
    pub canvas: RgbImage,
    /// The part of the canvas that shows the frame; anomaly maps are reported over it.
    pub content: Rect,
    /// Top-left corners of the `size x size` windows, in canvas pixels.
    pub windows: Vec<(u32, u32)>,
}

/// Turns frames into normalised input tensors according to a model's [`InputSpec`].
#[derive(Debug, Clone)]
pub struct Preprocessor {
    pub size: u32,
    mean: [f32; 3],
    std: [f32; 3],
    standardise: Option<Standardise>,
    pub fit: Fit,
}

impl Preprocessor {
    pub fn new(input: &InputSpec, fit: Fit) -> Result<Self> {
        if let Fit::Tile { overlap } = fit {
            ensure!(
                (0.0..0.9).contains(&overlap),
                "tile overlap must be in [0, 0.9), not {overlap}"
            );
        }
        Ok(Preprocessor {
            size: input.size as u32,
            mean: input.mean,
            std: input.std,
            standardise: input.standardise,
            fit,
        })
    }

    /// Place a frame on its canvas according to the fit.
    pub fn place(&self, frame: &DynamicImage) -> Result<Placement> {
        let (w, h) = (frame.width(), frame.height());
        ensure!(w > 0 && h > 0, "the image is empty ({w}x{h})");
        let rgb = frame.to_rgb8(); // grayscale is replicated to 3 channels, alpha dropped
        let s = self.size;
        Ok(match self.fit {
            Fit::Squash => Placement {
                canvas: resize(&rgb, s, s),
                content: Rect {
                    x: 0,
                    y: 0,
                    width: s,
                    height: s,
                },
                windows: vec![(0, 0)],
            },
            Fit::Letterbox => {
                let scale = s as f64 / w.max(h) as f64;
                let (cw, ch) = (scaled(w, scale).min(s), scaled(h, scale).min(s));
                let fill = Rgb(self
                    .mean
                    .map(|m| (m * 255.0).round().clamp(0.0, 255.0) as u8));
                let mut canvas = RgbImage::from_pixel(s, s, fill);
                let (x, y) = ((s - cw) / 2, (s - ch) / 2);
                imageops::replace(&mut canvas, &resize(&rgb, cw, ch), x as i64, y as i64);
                Placement {
                    canvas,
                    content: Rect {
                        x,
                        y,
                        width: cw,
                        height: ch,
                    },
                    windows: vec![(0, 0)],
                }
            }
            Fit::Tile { overlap } => {
                // The canvas is the frame scaled so its shorter side is one window: its
                // size grows with the aspect ratio, so bound that (a 16000x1 frame would
                // otherwise make a 3.5 Gpx canvas).
                ensure!(
                    w.max(h) / w.min(h) <= MAX_TILE_ASPECT,
                    "a {w}x{h} frame is too elongated to tile (aspect ratio over {MAX_TILE_ASPECT}:1)"
                );
                let scale = s as f64 / w.min(h) as f64;
                let (cw, ch) = (scaled(w, scale).max(s), scaled(h, scale).max(s));
                let canvas = resize(&rgb, cw, ch);
                let xs = window_starts(cw, s, overlap);
                let ys = window_starts(ch, s, overlap);
                let windows = ys
                    .iter()
                    .flat_map(|&y| xs.iter().map(move |&x| (x, y)))
                    .collect();
                Placement {
                    canvas,
                    content: Rect {
                        x: 0,
                        y: 0,
                        width: cw,
                        height: ch,
                    },
                    windows,
                }
            }
        })
    }

    /// Write the window at `(x, y)` of `canvas` as a normalised CHW tensor into `out`
    /// (resized to `3 * size * size`; the buffer is reused across frames): standardised
    /// when the manifest asks for it, then `(pixel / 255 - mean) / std` per channel.
    pub fn window_tensor(&self, canvas: &RgbImage, (x, y): (u32, u32), out: &mut Vec<f32>) {
        self.window_rgb01(canvas, (x, y), out);
        let plane = out.len() / 3;
        // One affine map per channel: standardisation (the same for all channels),
        // `(v - m) * gain + target`, composed with the mean/std normalisation. `m` is
        // subtracted first so a flat window (huge gain) does not lose its precision.
        let (m, gain, target) = match self.standardise {
            Some(st) => {
                let (m, sd) = gray_stats(out);
                (m, st.std / (sd + STANDARDISE_EPS), st.mean)
            }
            None => (0.0, 1.0, 0.0),
        };
        for (c, chan) in out.chunks_mut(plane).enumerate() {
            let (scale, offset) = (gain / self.std[c], (target - self.mean[c]) / self.std[c]);
            for v in chan {
                *v = (*v - m) * scale + offset;
            }
        }
    }

    /// The window at `(x, y)` as CHW RGB in `[0, 1]`, before any normalisation (what the
    /// memory bank's feature extractor takes).
    pub fn window_rgb01(&self, canvas: &RgbImage, (x, y): (u32, u32), out: &mut Vec<f32>) {
        let s = self.size as usize;
        out.resize(3 * s * s, 0.0);
        for row in 0..s {
            for col in 0..s {
                let p = canvas.get_pixel(x + col as u32, y + row as u32).0;
                for c in 0..3 {
                    out[c * s * s + row * s + col] = p[c] as f32 / 255.0;
                }
            }
        }
    }
}

/// Mean and (population) standard deviation of the gray level, the mean of the three
/// channels, of a CHW window; accumulated in f64 so large windows stay exact.
fn gray_stats(chw: &[f32]) -> (f32, f32) {
    let plane = chw.len() / 3;
    let (mut sum, mut sq) = (0.0f64, 0.0f64);
    for i in 0..plane {
        let g = (chw[i] as f64 + chw[plane + i] as f64 + chw[2 * plane + i] as f64) / 3.0;
        sum += g;
        sq += g * g;
    }
    let n = plane.max(1) as f64;
    let mean = sum / n;
    let var = (sq / n - mean * mean).max(0.0);
    (mean as f32, var.sqrt() as f32)
}

fn scaled(v: u32, scale: f64) -> u32 {
    ((v as f64 * scale).round() as u32).max(1)
}

fn resize(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.width() == w && img.height() == h {
        img.clone()
    } else {
        imageops::resize(img, w, h, RESIZE_FILTER)
    }
}

/// The windows `Fit::Tile` scores on a `w x h` frame, as rectangles in frame pixels (what
/// [`Preprocessor::place`] runs, mapped back from its canvas): for drawing them.
pub fn tile_windows(w: u32, h: u32, size: u32, overlap: f32) -> Vec<Rect> {
    if w == 0 || h == 0 || size == 0 {
        return Vec::new();
    }
    let scale = size as f64 / w.min(h) as f64;
    let (cw, ch) = (scaled(w, scale).max(size), scaled(h, scale).max(size));
    let back = |v: u32| (v as f64 / scale).round() as u32;
    let (xs, ys) = (
        window_starts(cw, size, overlap),
        window_starts(ch, size, overlap),
    );
    ys.iter()
        .flat_map(|&y| {
            xs.iter().map(move |&x| Rect {
                x: back(x).min(w - 1),
                y: back(y).min(h - 1),
                width: back(size).clamp(1, w - back(x).min(w - 1)),
                height: back(size).clamp(1, h - back(y).min(h - 1)),
            })
        })
        .collect()
}

/// Window starts covering `0..len` with windows of `win`, neighbours sharing about
/// `overlap` of a window; the last window is flush with the end.
fn window_starts(len: u32, win: u32, overlap: f32) -> Vec<u32> {
    if len <= win {
        return vec![0];
    }
    let stride = ((win as f32 * (1.0 - overlap)).floor() as u32).max(1);
    let count = (len - win).div_ceil(stride) + 1;
    // Spread the windows evenly so the last one ends exactly at `len`.
    (0..count)
        .map(|i| ((i as u64 * (len - win) as u64) / (count - 1) as u64) as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InputSpec {
        InputSpec {
            size: 224,
            patch_size: 16,
            channels: 3,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            standardise: None,
        }
    }

    #[test]
    fn windows_cover_the_canvas_flush_at_both_ends() {
        assert_eq!(window_starts(224, 224, 0.25), vec![0]);
        for len in [225u32, 400, 448, 1934] {
            let w = window_starts(len, 224, 0.25);
            assert_eq!(w[0], 0);
            assert_eq!(*w.last().unwrap() + 224, len);
            assert!(
                w.windows(2).all(|p| p[1] > p[0] && p[1] - p[0] <= 168),
                "{len}: {w:?}"
            );
        }
    }

    #[test]
    fn fits_place_frames_as_documented() {
        let frame =
            DynamicImage::ImageLuma8(image::GrayImage::from_pixel(1900, 220, image::Luma([90])));
        let squash = Preprocessor::new(&spec(), Fit::Squash)
            .unwrap()
            .place(&frame)
            .unwrap();
        assert_eq!(
            (
                squash.canvas.width(),
                squash.canvas.height(),
                squash.windows.len()
            ),
            (224, 224, 1)
        );
        let lb = Preprocessor::new(&spec(), Fit::Letterbox)
            .unwrap()
            .place(&frame)
            .unwrap();
        assert_eq!((lb.content.width, lb.content.height), (224, 26));
        assert_eq!(lb.content.y, (224 - 26) / 2);
        let tile = Preprocessor::new(&spec(), "tile".parse().unwrap())
            .unwrap()
            .place(&frame)
            .unwrap();
        assert_eq!((tile.canvas.width(), tile.canvas.height()), (1935, 224));
        assert_eq!(tile.windows.len(), 12);
        assert!(tile.windows.iter().all(|&(x, y)| y == 0 && x + 224 <= 1935));
    }

    #[test]
    fn gray_frames_become_three_equal_normalised_channels() {
        let frame =
            DynamicImage::ImageLuma8(image::GrayImage::from_pixel(224, 224, image::Luma([128])));
        let pre = Preprocessor::new(&spec(), Fit::Squash).unwrap();
        let placed = pre.place(&frame).unwrap();
        let mut t = Vec::new();
        pre.window_tensor(&placed.canvas, (0, 0), &mut t);
        for c in 0..3 {
            let want = (128.0 / 255.0 - spec().mean[c]) / spec().std[c];
            assert!((t[c * 224 * 224 + 1000] - want).abs() < 1e-6);
        }
    }

    #[test]
    fn standardised_windows_ignore_exposure_and_flat_windows_stay_finite() {
        let spec = InputSpec {
            standardise: Some(Standardise {
                mean: 0.45,
                std: 0.225,
            }),
            ..spec()
        };
        let pre = Preprocessor::new(&spec, Fit::Squash).unwrap();
        // A textured frame and the same frame at half the contrast, brighter.
        let bright = image::GrayImage::from_fn(224, 224, |x, y| {
            image::Luma([(40 + (x * 7 + y * 3) % 180) as u8])
        });
        let dim = image::GrayImage::from_fn(224, 224, |x, y| {
            image::Luma([60 + bright.get_pixel(x, y).0[0] / 2])
        });
        let tensor = |img: image::GrayImage| {
            let placed = pre.place(&DynamicImage::ImageLuma8(img)).unwrap();
            let mut t = Vec::new();
            pre.window_tensor(&placed.canvas, (0, 0), &mut t);
            t
        };
        let (a, b) = (tensor(bright.clone()), tensor(dim));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        // Only the halved frame's rounding to whole gray levels differs.
        assert!(
            worst < 0.05,
            "exposure changed the standardised tensor by {worst}"
        );
        // The window's gray level now has the target mean and std (a hair less: the eps).
        let plane = 224 * 224;
        let gray: Vec<f32> = (0..plane)
            .map(|i| {
                (0..3)
                    .map(|c| a[c * plane + i] * spec.std[c] + spec.mean[c])
                    .sum::<f32>()
                    / 3.0
            })
            .collect();
        let mean = gray.iter().sum::<f32>() / plane as f32;
        let sd = (gray.iter().map(|g| (g - mean).powi(2)).sum::<f32>() / plane as f32).sqrt();
        assert!(
            (mean - 0.45).abs() < 1e-4 && (sd - 0.225).abs() < 2e-3,
            "{mean} {sd}"
        );
        // A flat window maps to the target mean, not to amplified noise.
        let flat = tensor(image::GrayImage::from_pixel(224, 224, image::Luma([200])));
        for c in 0..3 {
            let want = (0.45 - spec.mean[c]) / spec.std[c];
            assert!((flat[c * plane + 7] - want).abs() < 1e-5);
        }
        // The extractor's view stays the raw frame.
        let placed = pre.place(&DynamicImage::ImageLuma8(bright)).unwrap();
        let mut raw = Vec::new();
        pre.window_rgb01(&placed.canvas, (0, 0), &mut raw);
        assert!((raw[5] - placed.canvas.get_pixel(5, 0).0[0] as f32 / 255.0).abs() < 1e-7);
    }

    #[test]
    fn manifests_refuse_a_degenerate_standardisation() {
        let text = std::fs::read_to_string(
            crate::model::bundled::source_tree().join("tests/fixtures/fixture-recon/manifest.toml"),
        )
        .unwrap();
        // An inline table inside [input], as the workstation writes it.
        let text_ok = text.replace(
            "std = [0.229, 0.224, 0.225]",
            "std = [0.229, 0.224, 0.225]\nstandardise = { mean = 0.45, std = 0.225 }",
        );
        let m: crate::model::manifest::Manifest = toml::from_str(&text_ok).unwrap();
        assert_eq!(
            m.input.standardise,
            Some(Standardise {
                mean: 0.45,
                std: 0.225
            })
        );
        m.validate().unwrap();
        for bad in [
            "mean = 0.45, std = 0.0",
            "mean = 0.45, std = -1.0",
            "mean = nan, std = 0.2",
        ] {
            let t = text.replace(
                "std = [0.229, 0.224, 0.225]",
                &format!("std = [0.229, 0.224, 0.225]\nstandardise = {{ {bad} }}"),
            );
            let m: crate::model::manifest::Manifest = toml::from_str(&t).unwrap();
            let err = m.validate().unwrap_err().to_string();
            assert!(err.contains("input.standardise"), "{bad}: {err}");
        }
    }
}
