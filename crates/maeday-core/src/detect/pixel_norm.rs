//! Few-shot MAEDAY without training: MAEDAY's error map normalised per pixel by the good
//! frames' own error at that pixel (issue 20, part 2).
//!
//! A fixed camera sees the same scene every frame, so the parts of the scene the MAE
//! reconstructs badly (a part's edges, a belt's seam, a bright texture) fail the same way on
//! every good frame: that error is the scene's, not an anomaly's. From the K good frames of an
//! enrollment, per pixel of the map (per window position when tiling: the stitched map's pixel
//! is a fixed window position on a fixed camera), [`PixelNorm::fit`] keeps
//!
//! - `mu(p)`: the mean of the good maps;
//! - `sigma(p) = sqrt(smooth(var)(p) + (FLOOR * s)^2)`: `var` the per-pixel variance of the
//!   good maps (population, divided by K), smoothed by a Gaussian (sigma [`SMOOTH_SIGMA`],
//!   reflect padding; K frames give a noisy per-pixel variance, its neighbours share it),
//!   and a floor from `s`, the pooled standard deviation of every good pixel around their
//!   global mean. With one frame `var` is 0 and `sigma` is the floor alone: the frame's
//!   error pattern is subtracted and the rest measured in units of its spread.
//!
//! and [`PixelNorm::apply`] turns a map into `z = (E - mu) / sigma`. A map of another size
//! (frames of another size, a squash vs a tile fit) gets the statistics resampled bilinearly.
//! The image score of a normalised map is its maximum.
//!
//! Per-pixel statistics assume a scene that stays put. A belt or a floor that moves under
//! the camera shows its specks at new places in every frame, and a speck where the good
//! frames had none then looks like an anomaly. So with K >= 2 frames [`scene_check`] asks
//! the good frames themselves: each frame's map is normalised by the statistics of the
//! others twice, per pixel and [`SceneModel::Pooled`] (one global mean and spread for every
//! pixel, which ranks frames as zero-shot MAEDAY does), and the model under which the
//! held-out frames' maxima are lower on average is the one served. [`top_k_mean`] (the mean of the top
//! 1% pixels), the robust alternative the issue proposed, is measured beside it by `eval
//! --compare-fusions` and lost on the dev sets (synthetic FOD, 4 shots: 0.800 against 0.840
//! image AUROC; models/README.md). `models/workstation/pixelnorm.py` is the numpy
//! reference the tests compare with.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::bank::scoring::upsample_bilinear;
use crate::detect::eq1::{gaussian_filter, gaussian_kernel, AnomalyMap};
use crate::detect::fuse::{Normalisation, ProbeWeights};
use crate::detect::good_stats::GoodScores;
use crate::model::manifest::Thresholds;

/// The variance's smoothing (pixels of the map).
pub const SMOOTH_SIGMA: f32 = 4.0;
/// `sigma` never drops below this fraction of the good pixels' pooled standard deviation.
pub const FLOOR: f32 = 0.5;
/// `eval`'s robust image score: the mean of this fraction of a map's highest pixels.
pub const TOP_FRACTION: f64 = 0.01;

/// How the good frames' MAEDAY error is modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SceneModel {
    /// A mean and a spread per pixel: the scene stays put (banks from before the check).
    #[default]
    PerPixel,
    /// The good pixels' global mean and pooled spread for every pixel: the scene moves.
    Pooled,
}

/// What [`scene_check`] measured: the mean over held-out good frames of their map's max
/// after each model (fitted on the other frames), and the model it chose.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneCheck {
    pub model: SceneModel,
    pub per_pixel_held_out_max: f32,
    pub pooled_held_out_max: f32,
}

/// Leave one out over `maps` (at least two): which model keeps held-out good maps lowest.
/// Ties go to the per-pixel model. Also returns each map normalised by the chosen model
/// fitted on the others (what enrollment calibrates on).
pub fn scene_check(maps: &[&AnomalyMap]) -> Result<(SceneCheck, Vec<AnomalyMap>)> {
    ensure!(
        maps.len() >= 2,
        "the scene check needs at least two good maps, not {}",
        maps.len()
    );
    let mut sums = [0f64; 2];
    let mut held_z: [Vec<AnomalyMap>; 2] = Default::default();
    for (i, held) in maps.iter().enumerate() {
        let others: Vec<&AnomalyMap> = maps
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, m)| *m)
            .collect();
        for (m, model) in [SceneModel::PerPixel, SceneModel::Pooled]
            .into_iter()
            .enumerate()
        {
            let mut z = (*held).clone();
            PixelNorm::fit_model(&others, model)?.apply(&mut z);
            sums[m] += z.max() as f64;
            held_z[m].push(z);
        }
    }
    let k = maps.len() as f64;
    let (per_pixel, pooled) = ((sums[0] / k) as f32, (sums[1] / k) as f32);
    let [per_pixel_z, pooled_z] = held_z;
    let (model, z) = if per_pixel <= pooled {
        (SceneModel::PerPixel, per_pixel_z)
    } else {
        (SceneModel::Pooled, pooled_z)
    };
    let check = SceneCheck {
        model,
        per_pixel_held_out_max: per_pixel,
        pooled_held_out_max: pooled,
    };
    Ok((check, z))
}

/// What the normalisation was fitted with (recorded beside the statistics).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PixelNormParams {
    /// Absent in banks from before the scene check: per pixel.
    #[serde(default)]
    pub model: SceneModel,
    pub smooth_sigma: f32,
    pub floor: f32,
    /// The pooled standard deviation `s` of the good maps.
    pub pooled_std: f32,
    pub frames: usize,
}

/// Per-pixel mean and spread of good frames' MAEDAY maps.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelNorm {
    pub width: usize,
    pub height: usize,
    pub mean: Vec<f32>,
    pub sigma: Vec<f32>,
    pub params: PixelNormParams,
}

impl PixelNorm {
    /// Fit per pixel on good frames' maps (resampled to the first one's size where they
    /// differ).
    pub fn fit(maps: &[&AnomalyMap]) -> Result<PixelNorm> {
        PixelNorm::fit_model(maps, SceneModel::PerPixel)
    }

    /// Fit the given model: [`SceneModel::Pooled`] is the per-pixel formula with no
    /// per-pixel variance, the global mean for `mu` and a floor of the whole pooled spread.
    pub fn fit_model(maps: &[&AnomalyMap], model: SceneModel) -> Result<PixelNorm> {
        ensure!(!maps.is_empty(), "per-pixel statistics need a good map");
        let (w, h) = (maps[0].width, maps[0].height);
        ensure!(w > 0 && h > 0, "an empty map");
        let same: Vec<Vec<f32>> = maps
            .iter()
            .map(|m| resampled(&m.data, m.width, m.height, w, h))
            .collect();
        let k = same.len() as f64;
        let n = w * h;
        let mut mean = vec![0f64; n];
        for m in &same {
            for (a, v) in mean.iter_mut().zip(m) {
                *a += *v as f64 / k;
            }
        }
        let mut var = AnomalyMap::zeros(w, h);
        for m in &same {
            for ((a, v), mu) in var.data.iter_mut().zip(m).zip(&mean) {
                *a += ((*v as f64 - mu).powi(2) / k) as f32;
            }
        }
        let size = 2 * (3.0 * SMOOTH_SIGMA).ceil() as usize + 1;
        if size / 2 < w.min(h) {
            gaussian_filter(
                &mut var,
                &gaussian_kernel(size, SMOOTH_SIGMA),
                &mut Vec::new(),
            );
        }
        let total = k * n as f64;
        let global = same.iter().flatten().map(|v| *v as f64).sum::<f64>() / total;
        let pooled = (same
            .iter()
            .flatten()
            .map(|v| (*v as f64 - global).powi(2))
            .sum::<f64>()
            / total)
            .sqrt();
        let (floor, smooth) = match model {
            SceneModel::PerPixel => (FLOOR, SMOOTH_SIGMA),
            SceneModel::Pooled => {
                mean.fill(global);
                var.data.fill(0.0);
                (1.0, 0.0)
            }
        };
        let floor2 = (floor as f64 * pooled).powi(2);
        let sigma = var
            .data
            .iter()
            .map(|v| {
                let s = (v.max(0.0) as f64 + floor2).sqrt();
                if s > 1e-12 {
                    s as f32
                } else {
                    1.0
                }
            })
            .collect();
        Ok(PixelNorm {
            width: w,
            height: h,
            mean: mean.into_iter().map(|v| v as f32).collect(),
            sigma,
            params: PixelNormParams {
                model,
                smooth_sigma: smooth,
                floor,
                pooled_std: pooled as f32,
                frames: maps.len(),
            },
        })
    }

    /// `(E - mu) / sigma`, in place.
    pub fn apply(&self, map: &mut AnomalyMap) {
        let (w, h) = (map.width, map.height);
        if (w, h) == (self.width, self.height) {
            normalise(&mut map.data, &self.mean, &self.sigma);
        } else {
            let mean = resampled(&self.mean, self.width, self.height, w, h);
            let sigma = resampled(&self.sigma, self.width, self.height, w, h);
            normalise(&mut map.data, &mean, &sigma);
        }
    }

    /// From stored parts, checked: the sizes agree and every `sigma` is positive and finite.
    pub fn from_parts(
        width: usize,
        height: usize,
        mean: Vec<f32>,
        sigma: Vec<f32>,
        params: PixelNormParams,
    ) -> Result<PixelNorm> {
        ensure!(
            width > 0 && height > 0 && mean.len() == width * height && sigma.len() == mean.len(),
            "per-pixel statistics: {} means and {} spreads for a {width}x{height} map",
            mean.len(),
            sigma.len()
        );
        ensure!(
            sigma.iter().all(|s| s.is_finite() && *s > 0.0) && mean.iter().all(|m| m.is_finite()),
            "per-pixel statistics hold a non-finite mean or a spread <= 0"
        );
        Ok(PixelNorm {
            width,
            height,
            mean,
            sigma,
            params,
        })
    }
}

/// Few-shot MAEDAY ready to score: the statistics, the standardisation of its `z` maps for
/// fusion (from held-out good maps, as the bank's), and its thresholds (image score: the max).
#[derive(Debug, Clone)]
pub struct PixelScorer {
    pub norm: Arc<PixelNorm>,
    pub z_norm: Normalisation,
    pub thresholds: Thresholds,
    /// The `ensemble-norm` scorer's (one bank; banks from before it have none).
    pub ensemble_thresholds: Option<Thresholds>,
    /// The enrollment's probe of few-shot MAEDAY against the bank (fusion weights).
    pub probe: Option<ProbeWeights>,
    /// Held-out good views' image scores per scorer (fusion from good frames only).
    pub good: Option<GoodScores>,
    /// Why the statistics are per pixel or pooled (K >= 2 frames).
    pub scene: Option<SceneCheck>,
}

impl PixelScorer {
    /// The normalised map `z` of a raw MAEDAY map and its image score.
    pub fn score(&self, raw: &AnomalyMap) -> (AnomalyMap, f32) {
        let mut z = raw.clone();
        self.norm.apply(&mut z);
        let s = z.max();
        (z, s)
    }
}

fn normalise(data: &mut [f32], mean: &[f32], sigma: &[f32]) {
    for ((v, m), s) in data.iter_mut().zip(mean).zip(sigma) {
        *v = (*v - m) / s;
    }
}

fn resampled(src: &[f32], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
    if (sw, sh) == (dw, dh) {
        src.to_vec()
    } else {
        upsample_bilinear(src, sw, sh, dw, dh)
    }
}

/// The mean of the `ceil(fraction * n)` (at least one) largest values; NaN for none.
pub fn top_k_mean(values: &[f32], fraction: f64) -> f32 {
    if values.is_empty() {
        return f32::NAN;
    }
    let k = ((fraction * values.len() as f64).ceil() as usize).clamp(1, values.len());
    let mut v = values.to_vec();
    let at = v.len() - k;
    v.select_nth_unstable_by(at, |a, b| a.total_cmp(b));
    (v[at..].iter().map(|x| *x as f64).sum::<f64>() / k as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(w: usize, h: usize, v: &serde_json::Value) -> AnomalyMap {
        let data: Vec<f32> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        AnomalyMap {
            width: w,
            height: h,
            data,
        }
    }

    fn maps(w: usize, h: usize, v: &serde_json::Value) -> Vec<AnomalyMap> {
        v.as_array().unwrap().iter().map(|g| map(w, h, g)).collect()
    }

    fn close(a: &[f32], b: &serde_json::Value, what: &str) {
        let b = map(a.len(), 1, b).data;
        assert_eq!(a.len(), b.len(), "{what}");
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{what}: off by {worst} from numpy");
    }

    /// `python -m models.workstation pixel-norm-reference` wrote the fixture: the same maths
    /// in float64 numpy (scipy-free, literal loops), for K = 3 and K = 1 good maps.
    #[test]
    fn normalisation_matches_numpy() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/reference/pixel-norm.json"
        );
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (w, h) = (
            r["width"].as_u64().unwrap() as usize,
            r["height"].as_u64().unwrap() as usize,
        );
        for case in r["cases"].as_array().unwrap() {
            let goods = maps(w, h, &case["good"]);
            let n = PixelNorm::fit(&goods.iter().collect::<Vec<_>>()).unwrap();
            let k = goods.len();
            close(&n.mean, &case["mean"], &format!("K={k} mean"));
            close(&n.sigma, &case["sigma"], &format!("K={k} sigma"));
            let mut test = map(w, h, &r["test"]);
            n.apply(&mut test);
            close(&test.data, &case["z"], &format!("K={k} z"));
            let top = top_k_mean(&test.data, TOP_FRACTION);
            close(
                &[top],
                &serde_json::json!([case["top"]]),
                &format!("K={k} top-k"),
            );
            // A map of another size gets the statistics resampled, not an error.
            let mut half = AnomalyMap::zeros(w / 2, h / 2);
            n.apply(&mut half);
            assert!(half.data.iter().all(|v| v.is_finite()));
        }
        // The pooled model, fitted on the K = 3 case's maps.
        let goods = maps(w, h, &r["cases"][0]["good"]);
        let n =
            PixelNorm::fit_model(&goods.iter().collect::<Vec<_>>(), SceneModel::Pooled).unwrap();
        close(&n.mean, &r["pooled"]["mean"], "pooled mean");
        close(&n.sigma, &r["pooled"]["sigma"], "pooled sigma");
        let mut test = map(w, h, &r["test"]);
        n.apply(&mut test);
        close(&test.data, &r["pooled"]["z"], "pooled z");
        // The scene check on a fixed scene (per pixel) and on one that moves (pooled).
        let mut chosen = Vec::new();
        for case in r["scene_checks"].as_array().unwrap() {
            let goods = maps(w, h, &case["good"]);
            let (c, z) = scene_check(&goods.iter().collect::<Vec<_>>()).unwrap();
            assert_eq!(z.len(), goods.len());
            let held = [c.per_pixel_held_out_max, c.pooled_held_out_max];
            close(
                &held,
                &serde_json::json!([case["per_pixel_held_out_max"], case["pooled_held_out_max"]]),
                "scene check",
            );
            let want: SceneModel = serde_json::from_value(case["model"].clone()).unwrap();
            assert_eq!(c.model, want);
            chosen.push(c.model);
        }
        assert_eq!(chosen, [SceneModel::PerPixel, SceneModel::Pooled]);
        assert!(scene_check(&goods[..1].iter().collect::<Vec<_>>()).is_err());
    }

    #[test]
    fn constant_maps_and_bad_parts_do_not_divide_by_zero() {
        let flat = AnomalyMap {
            width: 4,
            height: 4,
            data: vec![2.0; 16],
        };
        let n = PixelNorm::fit(&[&flat]).unwrap();
        assert!(n.sigma.iter().all(|s| *s == 1.0));
        let mut m = flat.clone();
        n.apply(&mut m);
        assert!(m.data.iter().all(|v| *v == 0.0));
        let p = n.params;
        assert!(PixelNorm::from_parts(4, 4, vec![0.0; 16], vec![0.0; 16], p).is_err());
        assert!(PixelNorm::from_parts(4, 4, vec![0.0; 15], vec![1.0; 16], p).is_err());
        assert_eq!(top_k_mean(&[1.0, 5.0, 3.0], 0.01), 5.0);
        assert_eq!(top_k_mean(&[1.0, 5.0, 3.0, 4.0], 0.5), 4.5);
    }
}
