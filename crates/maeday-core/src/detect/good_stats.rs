//! Fusion decided from good frames only (issue 20, part 3): what each scorer says about
//! good frames it has not memorised. The enrollment scores held-out good views (each frame
//! against statistics of the others with K >= 2 frames, or, with one frame, its zoomed,
//! brightened and slightly rotated views) and keeps every scorer's image score of them, in
//! the units the fusion sees (the max of its standardised map). From those:
//!
//! - the z-score of an image score, `(s - mean) / sd`: how unusual this frame is for this
//!   scorer, in units of its own spread over good frames, so scorers with very different
//!   image-score ranges can be summed (`zsum`) or maxed (`zmax`) per image;
//! - reliability weights for the pixel-map sum (`rel`): `1 / sd`, normalised to sum to 1
//!   (a scorer whose good frames' peaks wander a lot is trusted less).
//!
//! A synthetic defect would also say which scorer finds defects (the probe); this only says
//! which scorer is quiet on good frames, which needs no guess at what a defect looks like.

use serde::{Deserialize, Serialize};

use crate::detect::fuse::{MAEDAY_NORM_PART, MAEDAY_PART};

/// At most this many held-out scores per scorer are kept (and accepted from `bank.toml`).
pub const MAX_GOOD_SCORES: usize = 1024;
/// A spread below this (standardised units: the 0.999 quantile of good pixels is ~1) is
/// raised to it, so two nearly equal held-out scores cannot give one scorer all the weight.
pub const SD_FLOOR: f32 = 0.05;

/// Held-out good views' image scores per scorer (`[maeday_pixel.good]` of `bank.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoodScores {
    /// `leave-one-out` (K >= 2 frames) or `views` (one frame: its augmented views).
    pub how: String,
    pub maeday: Vec<f32>,
    pub maeday_norm: Vec<f32>,
    pub bank: Vec<f32>,
}

impl GoodScores {
    /// The held-out scores of a named part (`maeday`, `maeday-norm`, or a bank).
    pub fn of_part(&self, part: &str) -> &[f32] {
        match part {
            MAEDAY_PART => &self.maeday,
            MAEDAY_NORM_PART => &self.maeday_norm,
            _ => &self.bank,
        }
    }

    /// Refuse what a fusion cannot use: too many scores, unequal counts, non-finite ones.
    pub fn check(&self) -> Result<(), String> {
        let n = self.maeday.len();
        for (name, v) in [
            ("maeday", &self.maeday),
            ("maeday_norm", &self.maeday_norm),
            ("bank", &self.bank),
        ] {
            if v.len() != n || v.len() > MAX_GOOD_SCORES {
                return Err(format!(
                    "good.{name}: {} scores (must be as many as maeday's, at most {MAX_GOOD_SCORES})",
                    v.len()
                ));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("good.{name}: a score is not finite"));
            }
        }
        Ok(())
    }
}

/// One scorer's held-out good image scores: their mean and spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GoodStat {
    pub mean: f32,
    /// The sample standard deviation, at least [`SD_FLOOR`].
    pub sd: f32,
}

impl GoodStat {
    /// `None` for fewer than two scores (no spread to measure).
    pub fn of(scores: &[f32]) -> Option<GoodStat> {
        if scores.len() < 2 {
            return None;
        }
        let n = scores.len() as f64;
        let mean = scores.iter().map(|v| *v as f64).sum::<f64>() / n;
        let var = scores
            .iter()
            .map(|v| (*v as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        Some(GoodStat {
            mean: mean as f32,
            sd: (var.sqrt() as f32).max(SD_FLOOR),
        })
    }

    pub fn z(&self, score: f32) -> f32 {
        (score - self.mean) / self.sd
    }
}

/// Reliability weights: `1 / sd` of each scorer, normalised to sum to 1.
pub fn reliability_weights(stats: &[GoodStat]) -> Vec<f32> {
    let inv: Vec<f32> = stats.iter().map(|s| 1.0 / s.sd).collect();
    let total: f32 = inv.iter().sum();
    inv.iter().map(|w| w / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_z_and_weights_match_a_hand_computed_case() {
        // mean 2, deviations -1, 0, +1: sample variance 2 / 2 = 1.
        let a = GoodStat::of(&[1.0, 2.0, 3.0]).unwrap();
        assert!(
            (a.mean - 2.0).abs() < 1e-6 && (a.sd - 1.0).abs() < 1e-6,
            "{a:?}"
        );
        assert!((a.z(4.5) - 2.5).abs() < 1e-6);
        // mean 10, deviations -2, +2: sample variance 8 / 1 = 8, sd 2.828427.
        let b = GoodStat::of(&[8.0, 12.0]).unwrap();
        assert!((b.sd - 8f32.sqrt()).abs() < 1e-5, "{b:?}");
        // 1/1 and 1/2.828427 normalised: 0.738796, 0.261204.
        let w = reliability_weights(&[a, b]);
        assert!(
            (w[0] - 0.738796).abs() < 1e-5 && (w[1] - 0.261204).abs() < 1e-5,
            "{w:?}"
        );
        // Equal scores: the floor, not a division by zero.
        assert_eq!(GoodStat::of(&[3.0, 3.0]).unwrap().sd, SD_FLOOR);
        assert!(GoodStat::of(&[3.0]).is_none());
    }

    #[test]
    fn unusable_good_scores_are_refused_with_the_key() {
        let g = GoodScores {
            how: "leave-one-out".into(),
            maeday: vec![1.0, 2.0],
            maeday_norm: vec![1.0, 2.0],
            bank: vec![1.0],
        };
        assert!(g.check().unwrap_err().contains("good.bank"));
        let g = GoodScores {
            bank: vec![1.0, f32::NAN],
            ..g
        };
        assert!(g.check().unwrap_err().contains("not finite"));
        let g = GoodScores {
            bank: vec![0.5, 0.7],
            ..g
        };
        assert!(g.check().is_ok());
        assert_eq!(g.of_part("bank0"), &[0.5, 0.7]);
        assert_eq!(g.of_part(MAEDAY_NORM_PART), &[1.0, 2.0]);
    }
}
