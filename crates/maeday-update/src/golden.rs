//! Golden frames: the one recipe both sides of a bundle follow to score a frame and to
//! compare the score with the expected one.
//!
//! The workstation (`bundle pack`) scores each golden frame with this very runtime and
//! signs the scores into the manifest; the device scores the same frames with the staged
//! model before it switches, and refuses the bundle when a score strays. Both must build the
//! detector the same way (squash fit, MAEDAY alone, the manifest's own schedule: banks are
//! enrolled per device and do not travel in bundles), so the recipe lives here once.

use std::path::Path;

use anyhow::Result;
use image::DynamicImage;

use crate::bundle::{reject, Bundle, GoldenFrame, Rejection};
use crate::detect::detector::{Detector, DetectorOptions};
use crate::detect::engine::EngineOptions;
use crate::detect::fuse::ScorerKind;
use crate::detect::preprocess::Fit;
use crate::model::manifest::Model;

/// Absolute slack added to every golden tolerance (scores near zero).
const SLACK: f32 = 1e-6;

/// A detector built the golden way for one model.
pub struct GoldenScorer {
    detector: Detector,
}

impl GoldenScorer {
    /// How golden frames are scored: squash fit, MAEDAY alone, the manifest's mask count,
    /// schedule and seed; only the engine (backend, precision, threads) is the caller's.
    pub fn options(engine: EngineOptions) -> DetectorOptions {
        DetectorOptions {
            fit: Fit::Squash,
            engine,
            scorer: Some(ScorerKind::Maeday),
            ..Default::default()
        }
    }

    pub fn new(model: Model, engine: EngineOptions) -> Result<GoldenScorer> {
        Ok(GoldenScorer {
            detector: Detector::new(model, &Self::options(engine))?,
        })
    }

    /// The image score of one frame.
    pub fn score(&mut self, frame: &DynamicImage) -> Result<f32> {
        Ok(self.detector.detect(frame)?.score)
    }

    /// Score every golden frame of a (verified) bundle and compare it with the signed
    /// score: `corrupt` for a frame that does not decode, `invalid-model` for one the model
    /// cannot score, `golden-mismatch` for a score out of tolerance.
    pub fn check(&mut self, bundle: &Bundle) -> Result<(), Rejection> {
        let m = &bundle.manifest;
        for g in &m.golden {
            let data = &bundle.files[&g.file];
            let frame = image::load_from_memory(data)
                .map_err(|e| reject("corrupt", format!("golden frame {}: {e}", g.file)))?;
            let got = self
                .score(&frame)
                .map_err(|e| reject("invalid-model", format!("golden frame {}: {e:#}", g.file)))?;
            compare(g, got, m.golden_tolerance)?;
        }
        Ok(())
    }

    /// The detector to serve `model` with under the `serving` options: this one when those
    /// options build the same detector (no overrides of the manifest, and MAEDAY alone or
    /// no memory bank to add), else a fresh one.
    pub fn into_serving(self, model: Model, serving: &DetectorOptions) -> Result<Detector> {
        let bank = model.dir.join("bank").join("bank.toml").is_file();
        let same = serving.masks.is_none()
            && serving.schedule.is_none()
            && serving.seed.is_none()
            && (serving.scorer == Some(ScorerKind::Maeday) || !bank);
        if same {
            Ok(self.detector)
        } else {
            drop(self.detector);
            Detector::new(model, serving)
        }
    }
}

/// Whether a device's score matches the signed one: |got - expected| <= tolerance *
/// |expected| + 1e-6, and finite.
pub fn compare(expected: &GoldenFrame, got: f32, tolerance: f32) -> Result<(), Rejection> {
    let tol = tolerance.abs() * expected.score.abs() + SLACK;
    if !got.is_finite() || (got - expected.score).abs() > tol {
        return Err(reject(
            "golden-mismatch",
            format!(
                "{}: score {got}, expected {} ± {tol}",
                expected.file, expected.score
            ),
        ));
    }
    Ok(())
}

/// Where the `index`th golden frame, read from `source`, goes in a bundle: `golden/<index>-
/// <file name>` with anything but ASCII letters, digits and dots replaced by `-`.
pub fn bundle_path(index: usize, source: &Path) -> String {
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("golden/{index}-{clean}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(score: f32) -> GoldenFrame {
        GoldenFrame {
            file: "golden/0-a.png".into(),
            score,
        }
    }

    #[test]
    fn scores_within_the_relative_tolerance_pass() {
        assert!(compare(&frame(1.0), 1.04, 0.05).is_ok());
        assert!(compare(&frame(1.0), 0.96, -0.05).is_ok());
        assert!(compare(&frame(0.0), 5e-7, 0.0).is_ok());
        let r = compare(&frame(1.0), 1.2, 0.05).unwrap_err();
        assert_eq!(r.reason, "golden-mismatch");
        assert!(r.detail.starts_with("golden/0-a.png: score 1.2"), "{r}");
        assert!(compare(&frame(1.0), f32::NAN, 1e9).is_err());
        assert!(compare(&frame(1.0), f32::INFINITY, 1e9).is_err());
    }

    #[test]
    fn golden_paths_are_plain_bundle_names() {
        assert_eq!(
            bundle_path(3, Path::new("/x/good frame#1.PNG")),
            "golden/3-good-frame-1.PNG"
        );
        assert_eq!(bundle_path(0, Path::new("/")), "golden/0-");
    }
}
