//! Thresholds from normal images only.
//!
//! The rule (documented in the README and written into the manifest):
//! `threshold = Q_q + margin * (Q_q - median)`, where `Q_q` is the `q` quantile of the
//! scores of good images (image threshold: image scores, q = 0.99 by default; pixel
//! threshold: every map pixel of the good images, q = 0.999 by default). The margin
//! widens the threshold by a fraction of the normal spread, so a handful of good images
//! does not produce a threshold that the next good frame crosses.

use anyhow::{ensure, Result};

use crate::eval::roc::quantile;
use crate::model::manifest::Thresholds;

#[derive(Debug, Clone, Copy)]
pub struct CalibrationRule {
    pub image_quantile: f64,
    pub pixel_quantile: f64,
    pub margin: f64,
}

impl Default for CalibrationRule {
    fn default() -> Self {
        CalibrationRule {
            image_quantile: 0.99,
            pixel_quantile: 0.999,
            margin: 0.1,
        }
    }
}

/// Summary of one set of normal values.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub count: usize,
    pub mean: f64,
    pub std: f64,
    pub min: f32,
    pub median: f32,
    pub quantile: f32,
    pub max: f32,
}

impl Stats {
    fn of(values: &mut [f32], q: f64) -> Result<Stats> {
        ensure!(!values.is_empty(), "no values to calibrate on");
        ensure!(
            values.iter().all(|v| v.is_finite()),
            "non-finite scores: the model output is broken"
        );
        let n = values.len() as f64;
        let mean = values.iter().map(|v| *v as f64).sum::<f64>() / n;
        let std = (values
            .iter()
            .map(|v| (*v as f64 - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        let median = quantile(values, 0.5).unwrap();
        let qv = quantile(values, q).unwrap();
        Ok(Stats {
            count: values.len(),
            mean,
            std,
            min: values[0],
            median,
            quantile: qv,
            max: values[values.len() - 1],
        })
    }

    fn to_table(self, q: f64) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("count".into(), (self.count as i64).into());
        t.insert("mean".into(), self.mean.into());
        t.insert("std".into(), self.std.into());
        t.insert("min".into(), (self.min as f64).into());
        t.insert("median".into(), (self.median as f64).into());
        t.insert("quantile".into(), q.into());
        t.insert("quantile_value".into(), (self.quantile as f64).into());
        t.insert("max".into(), (self.max as f64).into());
        t
    }
}

#[derive(Debug, Clone)]
pub struct Calibration {
    pub thresholds: Thresholds,
    pub image: Stats,
    pub pixel: Stats,
}

impl Calibration {
    /// The manifest's `[calibration]` table: the rule and the statistics it used.
    pub fn to_table(&self, rule: &CalibrationRule, images: &[String]) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert(
            "rule".into(),
            "threshold = Q_q + margin * (Q_q - median) over normal images"
                .to_string()
                .into(),
        );
        t.insert("margin".into(), rule.margin.into());
        t.insert(
            "image".into(),
            self.image.to_table(rule.image_quantile).into(),
        );
        t.insert(
            "pixel".into(),
            self.pixel.to_table(rule.pixel_quantile).into(),
        );
        t.insert("good_images".into(), (images.len() as i64).into());
        t
    }
}

/// Apply the rule to the image scores and all map pixels of good images.
pub fn calibrate(
    image_scores: &mut [f32],
    pixels: &mut [f32],
    rule: &CalibrationRule,
) -> Result<Calibration> {
    ensure!(
        (0.0..=1.0).contains(&rule.image_quantile) && (0.0..=1.0).contains(&rule.pixel_quantile),
        "quantiles must lie in [0, 1]"
    );
    ensure!(rule.margin >= 0.0, "margin must not be negative");
    let image = Stats::of(image_scores, rule.image_quantile)?;
    let pixel = Stats::of(pixels, rule.pixel_quantile)?;
    let apply =
        |s: &Stats| (s.quantile as f64 + rule.margin * (s.quantile - s.median) as f64) as f32;
    Ok(Calibration {
        thresholds: Thresholds {
            image: apply(&image),
            pixel: apply(&pixel),
        },
        image,
        pixel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_quantile_plus_margin_of_spread() {
        let mut scores: Vec<f32> = (1..=101).map(|i| i as f32).collect();
        let mut pixels = scores.clone();
        let rule = CalibrationRule {
            image_quantile: 0.99,
            pixel_quantile: 0.5,
            margin: 0.5,
        };
        let c = calibrate(&mut scores, &mut pixels, &rule).unwrap();
        // Q_0.99 = 100, median 51 -> 100 + 0.5 * 49
        assert!((c.thresholds.image - 124.5).abs() < 1e-4);
        assert!((c.thresholds.pixel - 51.0).abs() < 1e-4);
        assert_eq!(c.image.count, 101);
    }

    #[test]
    fn empty_or_broken_input_is_an_error() {
        let rule = CalibrationRule::default();
        assert!(calibrate(&mut [], &mut [1.0], &rule).is_err());
        assert!(calibrate(&mut [f32::NAN], &mut [1.0], &rule).is_err());
    }
}
