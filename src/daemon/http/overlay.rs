//! The live page's picture of one frame: the heatmap overlay (turbo colours over the
//! scored region) inside the whole frame, the ROI outlined, the tiles' windows outlined,
//! scaled down to `http.frame_max_px`, as JPEG. Rendered on the HTTP thread only.

use anyhow::{Context, Result};
use image::codecs::jpeg::JpegEncoder;
use image::{imageops, Rgb, RgbImage};

use crate::daemon::payload::ResultPayload;
use crate::detect::eq1::AnomalyMap;
use crate::detect::preprocess::{tile_windows, Fit};
use crate::detect::render;

/// What a frame's picture is drawn from.
pub struct LiveFrame {
    pub payload: ResultPayload,
    pub map: AnomalyMap,
    /// The scored region's pixels.
    pub roi_image: RgbImage,
    /// The whole frame, when the ROI is a part of it.
    pub full_frame: Option<RgbImage>,
}

/// How a camera's frames are drawn.
#[derive(Debug, Clone, Copy)]
pub struct Drawing {
    pub fit: Fit,
    /// The model's window size (for the tiles).
    pub window: u32,
    pub max_px: u32,
    pub quality: u8,
}

const ROI_COLOUR: Rgb<u8> = Rgb([255, 221, 0]);
const TILE_COLOUR: Rgb<u8> = Rgb([0, 229, 255]);

/// The frame's overlay JPEG.
pub fn jpeg(f: &LiveFrame, d: &Drawing) -> Result<Vec<u8>> {
    let picture = picture(f, d);
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, d.quality)
        .encode_image(&picture)
        .context("JPEG encoding failed")?;
    Ok(out)
}

/// The frame drawn at most `max_px` on its longest side.
pub fn picture(f: &LiveFrame, d: &Drawing) -> RgbImage {
    let p = &f.payload;
    let vmax = render::heatmap_scale(p.pixel_threshold, p.score);
    let heat = render::heatmap_overlay(&f.roi_image, &f.map, vmax);
    let [rx, ry, rw, rh] = p.roi;
    let (mut canvas, origin) = match &f.full_frame {
        Some(full) => {
            let mut c = full.clone();
            imageops::replace(&mut c, &heat, rx as i64, ry as i64);
            (c, (rx, ry))
        }
        None => (heat, (0, 0)),
    };
    let (w, h) = canvas.dimensions();
    let scale = (d.max_px as f64 / w.max(h) as f64).min(1.0);
    if scale < 1.0 {
        let (sw, sh) = (
            ((w as f64 * scale).round() as u32).max(1),
            ((h as f64 * scale).round() as u32).max(1),
        );
        canvas = imageops::resize(&canvas, sw, sh, imageops::FilterType::Triangle);
    }
    let s = |v: u32| (v as f64 * scale).round() as u32;
    if let Fit::Tile { overlap } = d.fit {
        for t in tile_windows(rw, rh, d.window, overlap) {
            let (x, y) = (origin.0 + t.x, origin.1 + t.y);
            rectangle(
                &mut canvas,
                [s(x), s(y), s(t.width), s(t.height)],
                TILE_COLOUR,
            );
        }
    }
    if f.full_frame.is_some() {
        rectangle(&mut canvas, [s(rx), s(ry), s(rw), s(rh)], ROI_COLOUR);
    }
    canvas
}

/// A 2-pixel outline inside `[x, y, w, h]`, clipped to the image.
fn rectangle(img: &mut RgbImage, [x, y, w, h]: [u32; 4], colour: Rgb<u8>) {
    let (iw, ih) = img.dimensions();
    if w == 0 || h == 0 || x >= iw || y >= ih {
        return;
    }
    let (x1, y1) = ((x + w).min(iw) - 1, (y + h).min(ih) - 1);
    for t in 0..2u32 {
        for px in x..=x1 {
            img.put_pixel(px, (y + t).min(y1), colour);
            img.put_pixel(px, y1.saturating_sub(t).max(y), colour);
        }
        for py in y..=y1 {
            img.put_pixel((x + t).min(x1), py, colour);
            img.put_pixel(x1.saturating_sub(t).max(x), py, colour);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::daemon::payload::{FrameFacts, LatencyMs};

    /// A grey 2000x1000 frame whose ROI `[1000, 200, 800, 600]` was scored.
    fn frame() -> LiveFrame {
        let map = AnomalyMap::zeros(8, 8);
        let roi = [1000, 200, 800, 600];
        let payload = ResultPayload::new(FrameFacts {
            device_id: "d",
            camera: "c",
            boot: 1,
            seq: 1,
            captured: SystemTime::now(),
            frame_size: [2000, 1000],
            roi,
            score: 0.0,
            map: &map,
            windows: 1,
            thresholds: None,
            latency: LatencyMs::default(),
            model_sha256: "ab",
            schedule: "s",
            scorer: "maeday".into(),
        });
        LiveFrame {
            payload,
            map,
            roi_image: RgbImage::from_pixel(800, 600, Rgb([128, 128, 128])),
            full_frame: Some(RgbImage::from_pixel(2000, 1000, Rgb([128, 128, 128]))),
        }
    }

    #[test]
    fn roi_and_tiles_are_outlined_and_the_size_is_bounded() {
        let d = Drawing {
            fit: Fit::Tile { overlap: 0.25 },
            window: 224,
            max_px: 500,
            quality: 80,
        };
        let f = frame();
        let p = picture(&f, &d);
        assert_eq!(p.dimensions(), (500, 250), "scaled to max_px, aspect kept");
        // The ROI's top-left corner (1000, 200) lands at (250, 50).
        assert_eq!(*p.get_pixel(251, 51), ROI_COLOUR);
        assert!(p.pixels().any(|c| *c == TILE_COLOUR), "tiles are drawn");
        // Left of the ROI the frame is untouched.
        assert_eq!(*p.get_pixel(100, 100), Rgb([128, 128, 128]));
        let bytes = jpeg(&f, &d).unwrap();
        let back = image::load_from_memory(&bytes).unwrap();
        assert_eq!((back.width(), back.height()), (500, 250));
        // Squash, no ROI: no outline at all, and a small frame is not enlarged.
        let mut f = frame();
        f.full_frame = None;
        f.roi_image = RgbImage::from_pixel(40, 30, Rgb([128, 128, 128]));
        let d = Drawing {
            fit: Fit::Squash,
            ..d
        };
        let p = picture(&f, &d);
        assert_eq!(p.dimensions(), (40, 30));
        assert!(!p.pixels().any(|c| *c == ROI_COLOUR || *c == TILE_COLOUR));
    }
}
