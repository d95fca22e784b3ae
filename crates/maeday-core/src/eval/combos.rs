//! `eval`'s scorer combinations (few-shot runs): every non-empty subset of a detection's
//! first four parts (`maeday`, `maeday-norm`, `bank0`, ...) fused by the weighted sum of
//! their standardised maps (named `a+b`, what the ensemble serves), and every subset of two
//! or more also by the pixel-wise maximum (`max(a,b)`). Each is scored two ways: the map's
//! maximum (`image_auroc`) and the mean of its top 1% (`image_auroc_top`), so the fusion
//! rule and the image score are measured side by side on the same maps.

use crate::detect::detector::Detection;
use crate::detect::fuse::{self, ProbeWeights, Weights, MAEDAY_NORM_PART};
use crate::detect::pixel_norm::{top_k_mean, TOP_FRACTION};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    Sum,
    Max,
    /// Weighted sum with these weights, in part order.
    Weighted(f32, f32),
}

/// One scorer combination: which parts, how fused, and its results so far.
pub struct Combination {
    pub name: String,
    pub parts: Vec<usize>,
    pub fusion: Fusion,
    /// Image scores: the fused map's max, and its top-1% mean.
    pub scores: Vec<f32>,
    pub scores_top: Vec<f32>,
    /// Sampled pixels of the fused map.
    pub pixels: Vec<f32>,
}

impl Combination {
    /// This combination's map of one detection.
    pub fn fuse(&self, det: &Detection, w: &Weights) -> Vec<f32> {
        let maps = self.parts.iter().map(|&i| &det.parts[i]);
        match self.fusion {
            Fusion::Sum => fuse::weighted_sum(maps.map(|(name, m)| (&m.data[..], w.of(name)))),
            Fusion::Max => fuse::pixel_max(maps.map(|(_, m)| &m.data[..])),
            Fusion::Weighted(a, b) => {
                fuse::weighted_sum(maps.zip([a, b]).map(|((_, m), w)| (&m.data[..], w)))
            }
        }
    }

    /// Record the image scores of one fused map; `bank_top`: the image-score rule of the
    /// bank's extractor, used when every part is a bank (as the bank scorer serves).
    pub fn push_scores(&mut self, det: &Detection, fused: &[f32], bank_top: Option<f64>) {
        let banks_only = self.parts.iter().all(|&i| {
            let name = det.parts[i].0.as_str();
            name != fuse::MAEDAY_PART && name != MAEDAY_NORM_PART
        });
        let top = if banks_only { bank_top } else { None };
        self.scores
            .push(crate::bank::scoring::image_score(fused, top));
        self.scores_top.push(top_k_mean(fused, TOP_FRACTION));
    }
}

/// Every combination of a detection's first (up to) four parts: sums, and with
/// `with_max` (`eval --compare-fusions`) pixel-wise maxima too; with `probe` weights, few-shot
/// MAEDAY and the first bank weighted by them (`probe(...)`) and the one they favour alone
/// (`pick(...)`).
pub fn combinations(
    det: &Detection,
    with_max: bool,
    probe: Option<ProbeWeights>,
) -> Vec<Combination> {
    let n = det.parts.len().min(4);
    let mut out = Vec::new();
    let fusions: &[Fusion] = if with_max {
        &[Fusion::Sum, Fusion::Max]
    } else {
        &[Fusion::Sum]
    };
    for &fusion in fusions {
        for mask in 1u32..(1 << n) {
            let parts: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
            if fusion == Fusion::Max && parts.len() < 2 {
                continue;
            }
            let names: Vec<&str> = parts.iter().map(|&i| det.parts[i].0.as_str()).collect();
            let name = match fusion {
                Fusion::Sum => names.join("+"),
                Fusion::Max | Fusion::Weighted(..) => format!("max({})", names.join(",")),
            };
            out.push(Combination {
                name,
                parts,
                fusion,
                scores: Vec::new(),
                scores_top: Vec::new(),
                pixels: Vec::new(),
            });
        }
    }
    let find = |name: &str| det.parts.iter().position(|(n, _)| n == name);
    let bank = det.parts.iter().position(|(n, _)| n.starts_with("bank"));
    if let (Some(p), Some(z), Some(b)) = (probe, find(MAEDAY_NORM_PART), bank) {
        let (wz, wb) = p.weights();
        let pick = if p.auroc_maeday_norm >= p.auroc_bank {
            (1.0, 0.0)
        } else {
            (0.0, 1.0)
        };
        for (kind, (a, c)) in [("probe", (wz, wb)), ("pick", pick)] {
            out.push(Combination {
                name: format!("{kind}({},{})", det.parts[z].0, det.parts[b].0),
                parts: vec![z, b],
                fusion: Fusion::Weighted(a, c),
                scores: Vec::new(),
                scores_top: Vec::new(),
                pixels: Vec::new(),
            });
        }
    }
    out
}
