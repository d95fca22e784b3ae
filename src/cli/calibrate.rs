//! `calibrate`: image and pixel thresholds from good images, written into the manifest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{ensure, Result};
use clap::Args;
use serde_json::json;

use crate::cli::model_args::ModelArgs;
use crate::detect::calibration::{calibrate, CalibrationRule};
use crate::detect::detector::{Detector, DetectorOptions};
use crate::detect::preprocess::load_image;
use crate::eval::dataset::list_images;
use crate::model::manifest::Model;
use crate::progress::progress;

#[derive(Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Folder of good (normal) images.
    #[arg(long)]
    good: PathBuf,
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 0.99)]
    image_quantile: f64,
    #[arg(long, default_value_t = 0.999)]
    pixel_quantile: f64,
    /// Threshold = Q + margin * (Q - median).
    #[arg(long, default_value_t = 0.1)]
    margin: f64,
}

pub fn run(a: CalibrateArgs) -> Result<ExitCode> {
    let (model, opts) = a.model.load()?;
    let rule = CalibrationRule {
        image_quantile: a.image_quantile,
        pixel_quantile: a.pixel_quantile,
        margin: a.margin,
    };
    let r = calibrate_model(model, &opts, &a.good, a.limit, &rule)?;
    println!("{r}");
    Ok(ExitCode::SUCCESS)
}

/// Calibrate thresholds on good images and write them into the manifest.
pub fn calibrate_model(
    model: Model,
    opts: &DetectorOptions,
    good: &Path,
    limit: Option<usize>,
    rule: &CalibrationRule,
) -> Result<serde_json::Value> {
    let mut images = list_images(good)?;
    ensure!(!images.is_empty(), "no images in {}", good.display());
    if let Some(limit) = limit {
        images.truncate(limit);
    }
    if opts.masks.is_some() || opts.schedule.is_some() || opts.seed.is_some() {
        log::warn!("calibrating with a schedule other than the manifest's: the thresholds fit that schedule only");
    }
    // The manifest's thresholds are MAEDAY's; a bank's are calibrated when it is enrolled.
    let opts = opts.maeday_only();
    let mut detector = Detector::new(model, &opts)?;
    let (mut scores, mut pixels, mut used) = (Vec::new(), Vec::new(), Vec::new());
    let bar = progress(images.len(), "calibrate");
    for path in &images {
        bar.inc(1);
        match load_image(path).and_then(|f| detector.detect(&f)) {
            Ok(det) => {
                scores.push(det.score);
                pixels.extend_from_slice(&det.map.data);
                used.push(path.display().to_string());
            }
            Err(e) => bar.suspend(|| log::error!("skipping: {e:#}")),
        }
    }
    bar.finish_and_clear();
    ensure!(!scores.is_empty(), "no good image could be scored");
    let cal = calibrate(&mut scores, &mut pixels, rule)?;
    let mut model = detector.model.clone();
    model.manifest.thresholds = Some(cal.thresholds);
    let mut table = cal.to_table(rule, &used);
    table.insert("schedule".into(), detector.schedule.id().into());
    table.insert("fit".into(), opts.fit.to_string().into());
    model.manifest.calibration = Some(table);
    model.save_manifest()?;
    Ok(json!({
        "manifest": model.manifest_path().display().to_string(),
        "good_images": used.len(),
        "image_threshold": cal.thresholds.image,
        "pixel_threshold": cal.thresholds.pixel,
        "image_scores": {"median": cal.image.median, "max": cal.image.max},
        "pixel_values": {"median": cal.pixel.median, "max": cal.pixel.max},
    }))
}
