//! Scoring a frame against a memory bank (PatchCore): each patch's distance to its nearest
//! bank row, upsampled to the window and smoothed, in units the bank's [`Normalisation`]
//! standardises before fusion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bank::memory::{Features, MemoryBank};
use crate::detect::eq1::{self, AnomalyMap};
use crate::detect::fuse::Normalisation;
use crate::model::manifest::Thresholds;

/// PatchCore smooths its upsampled distance map with a Gaussian of sigma 4 pixels.
pub const BANK_SIGMA: f32 = 4.0;

/// The kernel size for [`BANK_SIGMA`]: three sigmas each side.
pub fn bank_kernel() -> Vec<f32> {
    eq1::gaussian_kernel(2 * (3.0 * BANK_SIGMA).ceil() as usize + 1, BANK_SIGMA)
}

/// Thresholds in the units of each scorer that uses a bank.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BankThresholds {
    pub bank: Thresholds,
    pub ensemble: Thresholds,
}

/// One memory bank ready to score: the bank and the statistics that standardise its maps.
#[derive(Debug, Clone)]
pub struct BankScorer {
    /// Names the bank in reports (its folder, or `bank<seed>`).
    pub name: String,
    pub bank: Arc<MemoryBank>,
    pub norm: Normalisation,
}

/// Bilinear resize of a `sw x sh` grid to `dw x dh` with half-pixel centres (torch's
/// `interpolate(mode="bilinear", align_corners=False)`; edges clamp).
pub fn upsample_bilinear(src: &[f32], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
    let axis = |d: usize, s: usize| -> Vec<(usize, usize, f32)> {
        (0..d)
            .map(|i| {
                let x = ((i as f32 + 0.5) * s as f32 / d as f32 - 0.5).max(0.0);
                let x0 = (x.floor() as usize).min(s - 1);
                let x1 = (x0 + 1).min(s - 1);
                (x0, x1, x - x0 as f32)
            })
            .collect()
    };
    let (xs, ys) = (axis(dw, sw), axis(dh, sh));
    let mut out = Vec::with_capacity(dw * dh);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let top = src[y0 * sw + x0] * (1.0 - fx) + src[y0 * sw + x1] * fx;
            let bottom = src[y1 * sw + x0] * (1.0 - fx) + src[y1 * sw + x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// A `grid x grid` patch grid's map: each patch's (Euclidean) distance to its nearest bank
/// row, upsampled to `size x size`, smoothed with `kernel` (sigma 4). Returns the time spent
/// in the nearest-neighbour search.
pub fn bank_map(
    feats: &Features,
    grid: usize,
    size: usize,
    bank: &MemoryBank,
    kernel: &[f32],
    out: &mut AnomalyMap,
    scratch: &mut Vec<f32>,
) -> Result<Duration> {
    bank_map_with(feats, grid, size, bank, |_| {}, kernel, out, scratch)
}

/// [`bank_map`] with the patch distances passed through `distance` (e.g. the extractor's
/// [`crate::bank::features::FeatureExtractor::to_distance`]) before upsampling.
#[allow(clippy::too_many_arguments)]
pub fn bank_map_with(
    feats: &Features,
    grid: usize,
    size: usize,
    bank: &MemoryBank,
    distance: impl Fn(&mut [f32]),
    kernel: &[f32],
    out: &mut AnomalyMap,
    scratch: &mut Vec<f32>,
) -> Result<Duration> {
    anyhow::ensure!(
        feats.rows() == grid * grid,
        "{} patch rows for a {grid}x{grid} grid",
        feats.rows()
    );
    let t = Instant::now();
    let mut dist = bank.nearest(feats)?;
    let knn = t.elapsed();
    distance(&mut dist);
    out.width = size;
    out.height = size;
    out.data = upsample_bilinear(&dist, grid, grid, size, size);
    eq1::gaussian_filter(out, kernel, scratch);
    Ok(knn)
}

/// An image score from a map: its maximum (`top` = None), or the mean of its `top`
/// fraction of highest pixels (at least one; AnomalyDINO takes the top 1%), which one hot
/// pixel of noise moves less than the maximum.
pub fn image_score(map: &[f32], top: Option<f64>) -> f32 {
    let max = || map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let Some(top) = top else { return max() };
    let k = ((top * map.len() as f64).ceil() as usize).clamp(1, map.len().max(1));
    if map.is_empty() || k == 1 {
        return max();
    }
    let mut v = map.to_vec();
    let (_, _, high) = v.select_nth_unstable_by(map.len() - k, |a, b| a.total_cmp(b));
    let rest: f64 = high.iter().map(|&x| x as f64).sum();
    ((rest + v[map.len() - k] as f64) / k as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_score_is_the_max_or_the_mean_of_the_top_fraction() {
        let map: Vec<f32> = (0..200).map(|i| ((i * 37) % 200) as f32).collect();
        assert_eq!(image_score(&map, None), 199.0);
        // top 1% of 200 pixels = 2 pixels: 199 and 198.
        assert_eq!(image_score(&map, Some(0.01)), 198.5);
        // top 5% = 10 pixels: 190..=199.
        assert_eq!(image_score(&map, Some(0.05)), 194.5);
        assert_eq!(image_score(&map, Some(1.0)), 99.5);
        assert_eq!(image_score(&[3.0], Some(0.01)), 3.0);
    }

    #[test]
    fn upsampling_keeps_constants_and_interpolates_between_centres() {
        let up = upsample_bilinear(&[2.0; 4], 2, 2, 8, 8);
        assert!(up.iter().all(|v| (v - 2.0).abs() < 1e-6));
        // 1-D ramp 0, 1 over 2 cells -> 4 pixels: 0, 0.25, 0.75, 1 (torch, align_corners=False).
        let up = upsample_bilinear(&[0.0, 1.0], 2, 1, 4, 1);
        assert_eq!(up, [0.0, 0.25, 0.75, 1.0]);
    }
}
