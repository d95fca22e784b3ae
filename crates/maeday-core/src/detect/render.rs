//! Pictures for people: heatmap overlays and binary masks, at the frame's resolution.

use image::imageops::{self, FilterType};
use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};

use crate::detect::eq1::AnomalyMap;

/// Resize a map with the bilinear filter.
///
/// `image` clamps f32 pixels to [0, 1] when it resizes, which would flatten every map
/// whose values leave that range (the bank's and the ensemble's standardised maps, Eq. 1
/// errors above 1): the map is moved into [0, 1] first and back after. The triangle
/// filter's weights are non-negative and sum to one, so nothing falls outside.
pub fn resize_map(map: &AnomalyMap, width: u32, height: u32) -> AnomalyMap {
    if map.width as u32 == width && map.height as u32 == height {
        return map.clone();
    }
    let (lo, hi) = map
        .data
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, span) = if lo < hi { (lo, hi - lo) } else { (0.0, 1.0) };
    let unit: Vec<f32> = map.data.iter().map(|v| (v - lo) / span).collect();
    let img: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(map.width as u32, map.height as u32, unit)
            .expect("map buffer matches its size");
    let out = imageops::resize(&img, width, height, FilterType::Triangle);
    AnomalyMap {
        width: width as usize,
        height: height as usize,
        data: out.into_raw().into_iter().map(|v| lo + v * span).collect(),
    }
}

/// The top of the heatmap colour scale: twice the pixel threshold, so the threshold sits
/// mid-scale; without a threshold, the frame's own score (its map's maximum) tops it.
/// Every heatmap (`score --out`, the daemon's files and MQTT) uses this scale.
pub fn heatmap_scale(pixel_threshold: Option<f32>, score: f32) -> f32 {
    pixel_threshold.map(|t| 2.0 * t).unwrap_or(score)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_keeps_values_outside_zero_to_one() {
        // A standardised map: negative background, a peak far above 1.
        let mut data = vec![-0.5f32; 16 * 16];
        for y in 6..10 {
            for x in 6..10 {
                data[y * 16 + x] = 50.0;
            }
        }
        let map = AnomalyMap {
            width: 16,
            height: 16,
            data,
        };
        let big = resize_map(&map, 32, 32);
        let max = big.data.iter().cloned().fold(f32::MIN, f32::max);
        let min = big.data.iter().cloned().fold(f32::MAX, f32::min);
        assert!((max - 50.0).abs() < 1e-3, "peak flattened to {max}");
        assert!((min + 0.5).abs() < 1e-4, "background moved to {min}");
        // A mask at a threshold above 1 finds the peak (it found nothing when clamped).
        let mask = binary_mask(&map, 1.4, 32, 32);
        let on = mask.pixels().filter(|p| p[0] == 255).count();
        assert!((48..=100).contains(&on), "{on} mask pixels");
    }
}
