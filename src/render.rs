//! Pictures for people: heatmap overlays and binary masks, at the frame's resolution.

use image::imageops::{self, FilterType};
use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};

use crate::scoring::AnomalyMap;

/// Resize a map with the bilinear filter.
pub fn resize_map(map: &AnomalyMap, width: u32, height: u32) -> AnomalyMap {
    if map.width as u32 == width && map.height as u32 == height {
        return map.clone();
    }
    let img: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(map.width as u32, map.height as u32, map.data.clone())
            .expect("map buffer matches its size");
    let out = imageops::resize(&img, width, height, FilterType::Triangle);
    AnomalyMap {
        width: width as usize,
        height: height as usize,
        data: out.into_raw(),
    }
}

/// The map in a perceptual colour scale (turbo) blended half-and-half over the frame.
/// Values are scaled by `vmax` (the pixel threshold maps to the middle when
/// `vmax = 2 x threshold`), clamped at both ends.
pub fn heatmap_overlay(frame: &RgbImage, map: &AnomalyMap, vmax: f32) -> RgbImage {
    let map = resize_map(map, frame.width(), frame.height());
    let vmax = if vmax > 0.0 && vmax.is_finite() {
        vmax
    } else {
        1.0
    };
    let mut out = frame.clone();
    for (i, px) in out.pixels_mut().enumerate() {
        let t = (map.data[i] / vmax).clamp(0.0, 1.0) as f64;
        let c = colorous::TURBO.eval_continuous(t);
        let blend = |a: u8, b: u8| ((a as u16 + b as u16) / 2) as u8;
        *px = Rgb([blend(px[0], c.r), blend(px[1], c.g), blend(px[2], c.b)]);
    }
    out
}

/// 255 where the map exceeds `threshold`, 0 elsewhere, at `width x height`.
pub fn binary_mask(map: &AnomalyMap, threshold: f32, width: u32, height: u32) -> GrayImage {
    let map = resize_map(map, width, height);
    GrayImage::from_fn(width, height, |x, y| {
        Luma([if map.at(x as usize, y as usize) > threshold {
            255
        } else {
            0
        }])
    })
}
