//! Which maps make a frame's anomaly map: MAEDAY's Eq. 1, a PatchCore-style memory bank,
//! or their ensemble (zero-shot or few-shot MAEDAY's map plus the bank's).
//!
//! The two scorers speak different units (summed squared RGB error vs. feature-space
//! distance), so before they are added each map is standardised by statistics taken on
//! good images (`(v - mean) / scale`, `scale` the spread from the mean to the 0.999
//! quantile of their pixels: [`Normalisation`]; taken by [`crate::enroll`]); the fused
//! map is a weighted sum of standardised maps ([`weighted_sum`]), and its thresholds are
//! calibrated on the same good images. MAEDAY alone keeps its raw Eq. 1 units (the manifest's thresholds).

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScorerKind {
    /// The MAE's reconstruction error alone (zero-shot; Eq. 1 units).
    Maeday,
    /// The memory bank(s) alone (standardised distance).
    Bank,
    /// MAEDAY plus the bank(s), standardised and summed with the bank's weights.
    Ensemble,
    /// Few-shot MAEDAY (`maeday-norm`) plus the bank, standardised and summed with the
    /// bank's weights (needs a bank enrolled with per-pixel MAEDAY statistics).
    #[serde(rename = "ensemble-norm")]
    EnsembleNorm,
    /// MAEDAY's map normalised per pixel by the enrollment's good frames
    /// ([`crate::detect::pixel_norm`]; needs a bank enrolled with the statistics).
    #[serde(rename = "maeday-norm")]
    MaedayNorm,
}

impl FromStr for ScorerKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "maeday" => ScorerKind::Maeday,
            "bank" => ScorerKind::Bank,
            "ensemble" => ScorerKind::Ensemble,
            "maeday-norm" => ScorerKind::MaedayNorm,
            "ensemble-norm" => ScorerKind::EnsembleNorm,
            _ => {
                bail!("unknown scorer {s:?} (maeday, maeday-norm, bank, ensemble or ensemble-norm)")
            }
        })
    }
}

impl fmt::Display for ScorerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScorerKind::Maeday => "maeday",
            ScorerKind::Bank => "bank",
            ScorerKind::Ensemble => "ensemble",
            ScorerKind::MaedayNorm => "maeday-norm",
            ScorerKind::EnsembleNorm => "ensemble-norm",
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

impl Weights {
    /// The weight of a named part: `maeday` or `maeday-norm` (MAEDAY's weight), or any
    /// bank's name.
    pub fn of(&self, part: &str) -> f32 {
        if part == MAEDAY_PART || part == MAEDAY_NORM_PART {
            self.maeday
        } else {
            self.bank
        }
    }
}

/// The name MAEDAY's map has among the fused parts (banks go by their folder names).
pub const MAEDAY_PART: &str = "maeday";
/// The name of MAEDAY's per-pixel normalised map among the parts.
pub const MAEDAY_NORM_PART: &str = "maeday-norm";

/// Put a raw map in standardised units, in place.
pub fn standardise(map: &mut [f32], n: Normalisation) {
    for v in map {
        *v = n.apply(*v);
    }
}

/// The fused map: the weighted sum of standardised maps of one frame, in the order given
/// (MAEDAY first, then the banks). Every fusion (serving, `eval`'s scorer combinations,
/// enrollment's calibration) goes through here, so they cannot drift apart.
pub fn weighted_sum<'a>(parts: impl IntoIterator<Item = (&'a [f32], f32)>) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::new();
    for (map, weight) in parts {
        if out.is_empty() {
            out = vec![0.0; map.len()];
        }
        debug_assert_eq!(map.len(), out.len(), "fused maps differ in size");
        for (o, v) in out.iter_mut().zip(map) {
            *o += weight * v;
        }
    }
    out
}

/// How well few-shot MAEDAY and the bank found a synthetic defect pasted into held-out
/// good views at enrollment (pixel AUROC; [`crate::enroll::probe`]), and the fusion weights
/// they give.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeWeights {
    pub auroc_maeday_norm: f32,
    pub auroc_bank: f32,
}

impl ProbeWeights {
    /// `(few-shot MAEDAY, bank)` weights: each AUROC's margin over chance, squared (so the
    /// clearly better scorer dominates), summing to 1; equal when neither beats chance.
    pub fn weights(&self) -> (f32, f32) {
        let w = |a: f32| (a - 0.5).max(0.0).powi(2);
        let (m, b) = (w(self.auroc_maeday_norm), w(self.auroc_bank));
        if m + b <= 0.0 {
            (0.5, 0.5)
        } else {
            (m / (m + b), b / (m + b))
        }
    }
}

/// The fused map by the pixel-wise maximum of standardised maps: a pixel is as anomalous
/// as the scorer that finds it most anomalous relative to its own good frames.
pub fn pixel_max<'a>(parts: impl IntoIterator<Item = &'a [f32]>) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::new();
    for map in parts {
        if out.is_empty() {
            out = map.to_vec();
            continue;
        }
        debug_assert_eq!(map.len(), out.len(), "fused maps differ in size");
        for (o, v) in out.iter_mut().zip(map) {
            *o = o.max(*v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weighted_sum_adds_weighted_parts_in_order() {
        let w = Weights {
            maeday: 2.0,
            bank: 0.5,
        };
        let (m, b) = ([1.0, -1.0], [4.0, 2.0]);
        let fused = weighted_sum([(&m[..], w.of(MAEDAY_PART)), (&b[..], w.of("bank0"))]);
        assert_eq!(fused, [4.0, -1.0]);
        assert_eq!(weighted_sum([(&b[..], w.bank)]), [2.0, 1.0]);
        assert!(weighted_sum(std::iter::empty()).is_empty());
        assert_eq!(pixel_max([&m[..], &b[..]]), [4.0, 2.0]);
        assert_eq!(
            "maeday-norm".parse::<ScorerKind>().unwrap().to_string(),
            "maeday-norm"
        );
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
