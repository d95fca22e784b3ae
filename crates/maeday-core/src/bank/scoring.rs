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

/// A `grid x grid` patch grid's map: each patch's distance to its nearest bank row,
/// upsampled to `size x size`, smoothed with `kernel` (sigma 4). Returns the time spent
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
    anyhow::ensure!(
        feats.rows() == grid * grid,
        "{} patch rows for a {grid}x{grid} grid",
        feats.rows()
    );
    let t = Instant::now();
    let dist = bank.nearest(feats)?;
    let knn = t.elapsed();
    out.width = size;
    out.height = size;
    out.data = upsample_bilinear(&dist, grid, grid, size, size);
    eq1::gaussian_filter(out, kernel, scratch);
    Ok(knn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_keeps_constants_and_interpolates_between_centres() {
        let up = upsample_bilinear(&[2.0; 4], 2, 2, 8, 8);
        assert!(up.iter().all(|v| (v - 2.0).abs() < 1e-6));
        // 1-D ramp 0, 1 over 2 cells -> 4 pixels: 0, 0.25, 0.75, 1 (torch, align_corners=False).
        let up = upsample_bilinear(&[0.0, 1.0], 2, 1, 4, 1);
        assert_eq!(up, [0.0, 0.25, 0.75, 1.0]);
    }
}
