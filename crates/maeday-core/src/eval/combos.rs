//! `eval`'s scorer combinations (few-shot runs): every non-empty subset of a detection's
//! first four parts (`maeday`, `maeday-norm`, `bank0`, ...) fused by the weighted sum of
//! their standardised maps (named `a+b`, what the ensemble serves), and every subset of two
//! or more also by the pixel-wise maximum (`max(a,b)`). Each is scored two ways: the map's
//! maximum (`image_auroc`) and the mean of its top 1% (`image_auroc_top`), so the fusion
//! rule and the image score are measured side by side on the same maps. With the
//! enrollment's held-out good scores ([`crate::detect::good_stats`]) few-shot MAEDAY and the
//! first bank (and all three scorers) are also fused from good frames only: `zsum(..)` /
//! `zmax(..)` (image score: the sum / max of each member's image score as a z-score against
//! its held-out good scores; map: the same per pixel) and `rel(..)` (the map summed with
//! reliability weights, image score its max).

use crate::detect::detector::Detection;
use crate::detect::fuse::{self, ProbeWeights, Weights, MAEDAY_NORM_PART, MAEDAY_PART};
use crate::detect::good_stats::{reliability_weights, GoodScores, GoodStat};
use crate::detect::pixel_norm::{top_k_mean, TOP_FRACTION};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    Sum,
    Max,
    /// Weighted sum with these weights, in part order.
    Weighted([f32; 4]),
    /// Z-scores against held-out good scores (`Combination::good`), summed.
    ZSum,
    /// Z-scores against held-out good scores, their maximum.
    ZMax,
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
    /// Per part, its held-out good image scores' mean and spread (`ZSum`, `ZMax` only).
    pub good: Vec<GoodStat>,
}

impl Combination {
    fn new(name: String, parts: Vec<usize>, fusion: Fusion, good: Vec<GoodStat>) -> Self {
        Combination {
            name,
            parts,
            fusion,
            scores: Vec::new(),
            scores_top: Vec::new(),
            pixels: Vec::new(),
            good,
        }
    }

    /// This combination's map of one detection.
    pub fn fuse(&self, det: &Detection, w: &Weights) -> Vec<f32> {
        let maps = self.parts.iter().map(|&i| &det.parts[i]);
        let z = |v: f32, g: &GoodStat| g.z(v);
        match self.fusion {
            Fusion::Sum => fuse::weighted_sum(maps.map(|(name, m)| (&m.data[..], w.of(name)))),
            Fusion::Max => fuse::pixel_max(maps.map(|(_, m)| &m.data[..])),
            Fusion::Weighted(ws) => {
                fuse::weighted_sum(maps.zip(ws).map(|((_, m), w)| (&m.data[..], w)))
            }
            Fusion::ZSum | Fusion::ZMax => {
                let zs: Vec<Vec<f32>> = maps
                    .zip(&self.good)
                    .map(|((_, m), g)| m.data.iter().map(|v| z(*v, g)).collect())
                    .collect();
                if self.fusion == Fusion::ZSum {
                    fuse::weighted_sum(zs.iter().map(|m| (&m[..], 1.0)))
                } else {
                    fuse::pixel_max(zs.iter().map(|m| &m[..]))
                }
            }
        }
    }

    /// Record the image scores of one fused map; `bank_top`: the image-score rule of the
    /// bank's extractor, used when every part is a bank (as the bank scorer serves).
    pub fn push_scores(&mut self, det: &Detection, fused: &[f32], bank_top: Option<f64>) {
        let max = |m: &[f32]| m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let banks_only = self.parts.iter().all(|&i| {
            let name = det.parts[i].0.as_str();
            name != fuse::MAEDAY_PART && name != MAEDAY_NORM_PART
        });
        let zs = self
            .parts
            .iter()
            .zip(&self.good)
            .map(|(&i, g)| g.z(max(&det.parts[i].1.data)));
        let score = match self.fusion {
            Fusion::ZSum => zs.sum(),
            Fusion::ZMax => zs.fold(f32::NEG_INFINITY, f32::max),
            _ => crate::bank::scoring::image_score(fused, if banks_only { bank_top } else { None }),
        };
        self.scores.push(score);
        self.scores_top.push(top_k_mean(fused, TOP_FRACTION));
    }
}

/// Every combination of a detection's first (up to) four parts: sums, and with
/// `with_max` (`eval --compare-fusions`) pixel-wise maxima too; with `probe` weights, few-shot
/// MAEDAY and the first bank weighted by them (`probe(...)`) and the one they favour alone
/// (`pick(...)`); with `good` scores, the fusions decided from good frames ([`good_fusions`]).
pub fn combinations(
    det: &Detection,
    with_max: bool,
    probe: Option<ProbeWeights>,
    good: Option<&GoodScores>,
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
                _ => format!("max({})", names.join(",")),
            };
            out.push(Combination::new(name, parts, fusion, Vec::new()));
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
            out.push(Combination::new(
                format!("{kind}({},{})", det.parts[z].0, det.parts[b].0),
                vec![z, b],
                Fusion::Weighted([a, c, 0.0, 0.0]),
                Vec::new(),
            ));
        }
    }
    if let (Some(g), Some(b)) = (good, bank) {
        let sets = [
            vec![find(MAEDAY_NORM_PART), Some(b)],
            vec![find(MAEDAY_PART), find(MAEDAY_NORM_PART), Some(b)],
        ];
        for parts in sets {
            if let Some(parts) = parts.into_iter().collect::<Option<Vec<usize>>>() {
                out.extend(good_fusions(det, g, parts));
            }
        }
    }
    out
}

/// `zsum`, `zmax` and `rel` of these parts, when each has a spread of held-out good scores.
fn good_fusions(det: &Detection, g: &GoodScores, parts: Vec<usize>) -> Vec<Combination> {
    let stats: Option<Vec<GoodStat>> = parts
        .iter()
        .map(|&i| GoodStat::of(g.of_part(&det.parts[i].0)))
        .collect();
    let Some(stats) = stats else {
        return Vec::new();
    };
    let names: Vec<&str> = parts.iter().map(|&i| det.parts[i].0.as_str()).collect();
    let names = names.join(",");
    let mut ws = [0.0; 4];
    for (w, r) in ws.iter_mut().zip(reliability_weights(&stats)) {
        *w = r;
    }
    vec![
        Combination::new(
            format!("zsum({names})"),
            parts.clone(),
            Fusion::ZSum,
            stats.clone(),
        ),
        Combination::new(format!("zmax({names})"), parts.clone(), Fusion::ZMax, stats),
        Combination::new(
            format!("rel({names})"),
            parts,
            Fusion::Weighted(ws),
            Vec::new(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::detector::StageTimes;
    use crate::detect::eq1::AnomalyMap;

    fn part(name: &str, data: Vec<f32>) -> (String, AnomalyMap) {
        let map = AnomalyMap {
            width: data.len(),
            height: 1,
            data,
        };
        (name.into(), map)
    }

    #[test]
    fn good_frame_fusions_match_a_hand_computed_case() {
        let det = Detection {
            map: AnomalyMap::zeros(2, 1),
            score: 0.0,
            windows: 1,
            times: StageTimes::default(),
            parts: vec![
                part(MAEDAY_PART, vec![0.0, 9.0]),
                part(MAEDAY_NORM_PART, vec![4.0, 1.0]),
                part("bank0", vec![2.0, 3.0]),
            ],
        };
        // Held-out good maxima: maeday-norm 1, 2, 3 (mean 2, sd 1); bank 1, 1.5, 2 (mean
        // 1.5, sd 0.5).
        let good = GoodScores {
            how: "leave-one-out".into(),
            maeday: vec![0.0, 1.0, 2.0],
            maeday_norm: vec![1.0, 2.0, 3.0],
            bank: vec![1.0, 1.5, 2.0],
        };
        let mut combos = combinations(&det, true, None, Some(&good));
        let get = |name: &str| combos.iter().position(|c| c.name == name).unwrap();
        let (zs, zm, rel) = (
            get("zsum(maeday-norm,bank0)"),
            get("zmax(maeday-norm,bank0)"),
            get("rel(maeday-norm,bank0)"),
        );
        assert!(combos
            .iter()
            .any(|c| c.name == "zsum(maeday,maeday-norm,bank0)"));
        let w = Weights::default();
        let fused: Vec<Vec<f32>> = combos.iter().map(|c| c.fuse(&det, &w)).collect();
        for (c, f) in combos.iter_mut().zip(&fused) {
            c.push_scores(&det, f, None);
        }
        // Per pixel: maeday-norm z = (4-2)/1, (1-2)/1 = 2, -1; bank z = (2-1.5)/0.5,
        // (3-1.5)/0.5 = 1, 3.
        assert_eq!(fused[zs], vec![3.0, 2.0]);
        assert_eq!(fused[zm], vec![2.0, 3.0]);
        // Image: maeday-norm's max 4 -> z 2; the bank's max 3 -> z 3.
        assert_eq!(combos[zs].scores, vec![5.0]);
        assert_eq!(combos[zm].scores, vec![3.0]);
        // Reliability: 1/1 and 1/0.5 normalised -> 1/3, 2/3; map 4/3 + 4/3, 1/3 + 2.
        let r = &fused[rel];
        assert!(
            (r[0] - 8.0 / 3.0).abs() < 1e-6 && (r[1] - 7.0 / 3.0).abs() < 1e-6,
            "{r:?}"
        );
        assert!((combos[rel].scores[0] - 8.0 / 3.0).abs() < 1e-6);
        // Without held-out scores, none of them.
        let plain = combinations(&det, true, None, None);
        assert!(!plain.iter().any(|c| c.name.starts_with("zsum")));
    }
}
