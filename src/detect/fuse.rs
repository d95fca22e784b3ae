//! Which maps make a frame's anomaly map: MAEDAY's Eq. 1, a PatchCore-style memory bank,
//! or their ensemble.
//!
//! The two scorers speak different units (summed squared RGB error vs. feature-space
//! distance), so before they are added each map is standardised by statistics taken on
//! good images (`(v - mean) / std` over their pixels, see [`crate::enroll`]); the fused map
//! is a weighted sum of standardised maps, and its thresholds are calibrated on the same
//! good images. MAEDAY alone keeps its raw Eq. 1 units (the manifest's thresholds).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::bank::memory::{Features, MemoryBank};
use crate::detect::eq1::{self, AnomalyMap};
use crate::model::manifest::Thresholds;

/// PatchCore smooths its upsampled distance map with a Gaussian of sigma 4 pixels.
pub const BANK_SIGMA: f32 = 4.0;

/// The kernel size for [`BANK_SIGMA`]: three sigmas each side.
pub fn bank_kernel() -> Vec<f32> {
    eq1::gaussian_kernel(2 * (3.0 * BANK_SIGMA).ceil() as usize + 1, BANK_SIGMA)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScorerKind {
    /// The MAE's reconstruction error alone (zero-shot; Eq. 1 units).
    Maeday,
    /// The memory bank(s) alone (standardised distance).
    Bank,
    /// MAEDAY plus the bank(s), standardised and summed with the bank's weights.
    Ensemble,
}

impl FromStr for ScorerKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "maeday" => ScorerKind::Maeday,
            "bank" => ScorerKind::Bank,
            "ensemble" => ScorerKind::Ensemble,
            _ => bail!("unknown scorer {s:?} (maeday, bank or ensemble)"),
        })
    }
}

impl fmt::Display for ScorerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScorerKind::Maeday => "maeday",
            ScorerKind::Bank => "bank",
            ScorerKind::Ensemble => "ensemble",
        })
    }
}

/// `(v - mean) / scale`, from the pixels of good-image maps: `scale` is the spread
/// from the mean to the 0.999 quantile, so the top of each scorer's good pixels lands
/// near 1 whatever its tail looks like (MAEDAY's error maps have a far heavier tail than
/// the bank's distances: a plain standard deviation lets MAEDAY's peaks drown the bank).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    pub mean: f32,
    pub scale: f32,
}

impl Normalisation {
    /// From map pixels; a constant map gets scale 1 so nothing divides by zero.
    pub fn of(values: &[f32]) -> Normalisation {
        let n = values.len().max(1) as f64;
        let mean = values.iter().map(|v| *v as f64).sum::<f64>() / n;
        let mut sorted = values.to_vec();
        let scale = crate::eval::roc::quantile(&mut sorted, 0.999).map_or(0.0, |q| q as f64 - mean);
        Normalisation {
            mean: mean as f32,
            scale: if scale > 1e-12 { scale as f32 } else { 1.0 },
        }
    }

    pub fn apply(&self, v: f32) -> f32 {
        (v - self.mean) / self.scale
    }
}

/// How much each scorer's standardised map counts in the ensemble.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    pub maeday: f32,
    pub bank: f32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            maeday: 1.0,
            bank: 1.0,
        }
    }
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

    #[test]
    fn normalisation_standardises_and_survives_constant_maps() {
        // 1000 values 0..999: mean 499.5, 0.999 quantile 998.001 (linear interpolation).
        let v: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let n = Normalisation::of(&v);
        assert_eq!(n.mean, 499.5);
        assert!((n.scale - 498.501).abs() < 1e-3, "{}", n.scale);
        assert!((n.apply(998.001) - 1.0).abs() < 1e-5);
        let c = Normalisation::of(&[5.0; 10]);
        assert_eq!(c.scale, 1.0);
        assert!("bank".parse::<ScorerKind>().is_ok());
        assert!("patchcore".parse::<ScorerKind>().is_err());
    }
}
