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

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageReader, Rgb, RgbImage};

use crate::manifest::InputSpec;

pub const RESIZE_FILTER: FilterType = FilterType::Triangle;

/// How a frame of any shape is mapped onto `size x size` windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fit {
    Squash,
    Letterbox,
    /// Overlapping windows; `overlap` is the fraction (0..0.9) shared by neighbours.
    Tile {
        overlap: f32,
    },
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

/// Decode an image file, with the path in every error.
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let reader = ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    ensure!(
        reader.format().is_some(),
        "{} is not an image in a supported format (PNG, JPEG, GIF, BMP, TIFF, PNM)",
        path.display()
    );
    reader.decode().with_context(|| {
        format!(
            "cannot decode image {} (corrupt or truncated?)",
            path.display()
        )
    })
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
    /// (resized to `3 * size * size`; the buffer is reused across frames).
    pub fn window_tensor(&self, canvas: &RgbImage, (x, y): (u32, u32), out: &mut Vec<f32>) {
        let s = self.size as usize;
        out.resize(3 * s * s, 0.0);
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * self.std[c]));
        let offset: [f32; 3] = std::array::from_fn(|c| self.mean[c] / self.std[c]);
        for row in 0..s {
            for col in 0..s {
                let p = canvas.get_pixel(x + col as u32, y + row as u32).0;
                for c in 0..3 {
                    out[c * s * s + row * s + col] = p[c] as f32 * scale[c] - offset[c];
                }
            }
        }
    }
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
}
