//! From a frame's raw maps (MAEDAY's Eq. 1 first, then one per bank) to what the scorer in
//! use reports: its map, its image score and, for `eval`, every scorer's standardised map
//! (the parts: `maeday`, `maeday-norm` when the bank has per-pixel statistics, the banks).
//! `ensemble` sums `maeday` and the banks, `ensemble-norm` `maeday-norm` and the banks.
//! How the parts are fused is [`crate::detect::fuse`]'s; this file only routes them.

use crate::bank::scoring::{BankScorer, BankThresholds};
use crate::detect::eq1::AnomalyMap;
use crate::detect::fuse::{
    self, Normalisation, ScorerKind, Weights, MAEDAY_NORM_PART, MAEDAY_PART,
};
use crate::detect::pixel_norm::PixelScorer;
use crate::model::manifest::Thresholds;

/// Memory banks attached to a detector, with what it needs to score with them.
pub struct Banks {
    pub scorers: Vec<BankScorer>,
    /// Standardises MAEDAY's map in the ensemble (from the enrollment's good frames).
    pub maeday_norm: Normalisation,
    pub weights: Weights,
    /// Calibrated on the enrollment's good frames (one bank only).
    pub thresholds: Option<BankThresholds>,
    /// Few-shot MAEDAY (per-pixel statistics of the first bank), when enrolled with them.
    pub pixel: Option<PixelScorer>,
    /// `eval --compare-fusions`: also keep few-shot MAEDAY's map among the parts.
    pub pixel_part: bool,
}

impl Banks {
    /// Refuse a scorer these banks were not enrolled for.
    pub fn check_scorer(&self, kind: ScorerKind) -> anyhow::Result<()> {
        let pixel = self.pixel.as_ref();
        let ok = match kind {
            ScorerKind::MaedayNorm => pixel.is_some(),
            ScorerKind::EnsembleNorm => pixel.is_some_and(|p| p.ensemble_thresholds.is_some()),
            _ => true,
        };
        anyhow::ensure!(
            ok,
            "scorer {kind} needs a memory bank enrolled with per-pixel MAEDAY statistics (by \
             this version): enroll again"
        );
        Ok(())
    }

    /// `ensemble-norm`'s thresholds: calibrated for the first bank alone.
    pub fn ensemble_norm_thresholds(&self) -> Option<Thresholds> {
        match &self.scorers[..] {
            [_] => self.pixel.as_ref()?.ensemble_thresholds,
            _ => None,
        }
    }
}

/// The scorer's map and image score, and the parts (only with `keep_parts`).
pub struct Scored {
    pub map: AnomalyMap,
    pub score: f32,
    pub parts: Vec<(String, AnomalyMap)>,
}

/// `raw` holds MAEDAY's map unless `kind` is `Bank`, then the banks' maps (none for the
/// MAEDAY scorers). `banks` must be there for every scorer but `Maeday`.
pub fn combine(
    kind: ScorerKind,
    banks: Option<&Banks>,
    raw: Vec<AnomalyMap>,
    keep_parts: bool,
) -> Scored {
    let mut raw = raw.into_iter();
    let b = match (kind, banks) {
        (ScorerKind::Maeday, _) | (_, None) => {
            let map = raw.next().expect("the MAEDAY map");
            let score = map.max();
            return Scored {
                map,
                score,
                parts: Vec::new(),
            };
        }
        (_, Some(b)) => b,
    };
    let mut parts: Vec<(String, AnomalyMap)> = Vec::new();
    if kind != ScorerKind::Bank {
        let mut m = raw.next().expect("the MAEDAY map");
        let pixel = b.pixel.as_ref().filter(|_| {
            matches!(kind, ScorerKind::MaedayNorm | ScorerKind::EnsembleNorm) || b.pixel_part
        });
        let z = pixel.map(|p| (p, p.score(&m)));
        if kind == ScorerKind::MaedayNorm {
            if let Some((_, (map, score))) = z {
                return Scored {
                    map,
                    score,
                    parts: Vec::new(),
                };
            }
        }
        fuse::standardise(&mut m.data, b.maeday_norm);
        parts.push((MAEDAY_PART.into(), m));
        if let Some((p, (mut z, _))) = z {
            fuse::standardise(&mut z.data, p.z_norm);
            parts.push((MAEDAY_NORM_PART.into(), z));
        }
    }
    for (s, mut m) in b.scorers.iter().zip(raw) {
        fuse::standardise(&mut m.data, s.norm);
        parts.push((s.name.clone(), m));
    }
    let (width, height) = (parts[0].1.width, parts[0].1.height);
    // `ensemble` sums zero-shot MAEDAY and the banks, `ensemble-norm` few-shot MAEDAY and
    // the banks.
    let unused = if kind == ScorerKind::EnsembleNorm {
        MAEDAY_PART
    } else {
        MAEDAY_NORM_PART
    };
    let data = fuse::weighted_sum(
        parts
            .iter()
            .filter(|(name, _)| name != unused)
            .map(|(name, m)| (&m.data[..], b.weights.of(name))),
    );
    let map = AnomalyMap {
        width,
        height,
        data,
    };
    let score = map.max();
    if !keep_parts {
        parts.clear();
    }
    Scored { map, score, parts }
}
