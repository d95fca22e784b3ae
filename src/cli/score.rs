//! `score`: one JSON line per image on stdout, heatmaps and masks on request.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Args;
use serde_json::json;

use crate::cli::model_args::ModelArgs;
use crate::detect::detector::{Detection, Detector, DetectorOptions};
use crate::detect::preprocess::load_image;
use crate::detect::render;
use crate::model::manifest::Model;

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Write `<stem>.heatmap.png` (and `<stem>.mask.png` once calibrated) here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(a: ScoreArgs) -> Result<ExitCode> {
    let (model, opts) = a.model.load()?;
    let failed = score(model, &opts, &a.images, a.out.as_deref())?;
    if failed > 0 {
        eprintln!(
            "error: {failed} of {} images could not be scored",
            a.images.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Score each image, print one JSON line per image; returns how many failed.
pub fn score(
    model: Model,
    opts: &DetectorOptions,
    images: &[PathBuf],
    out: Option<&Path>,
) -> Result<usize> {
    ensure!(!images.is_empty(), "no images given");
    if let Some(dir) = out {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    }
    let mut detector = Detector::new(model, opts)?;
    let thresholds = detector.thresholds();
    if thresholds.is_none() {
        log::warn!(
            "the model has no thresholds yet (run `maeday-edge calibrate`): no verdicts, no masks"
        );
    }
    let sha = detector.model.manifest.graph_sha256.clone();
    let schedule = detector.schedule.id();
    let scorer = detector.scorer().to_string();
    let engine = detector.engine_description();
    let mut failed = 0;
    for path in images {
        let start = Instant::now();
        let result = load_image(path).and_then(|frame| {
            let det = detector.detect(&frame)?;
            let latency = start.elapsed();
            if let Some(dir) = out {
                write_pictures(
                    dir,
                    path,
                    &frame.to_rgb8(),
                    &det,
                    thresholds.map(|t| t.pixel),
                )?;
            }
            Ok((det, latency))
        });
        match result {
            Ok((det, latency)) => {
                let line = json!({
                    "image": path.display().to_string(),
                    "score": det.score,
                    "threshold": thresholds.map(|t| t.image),
                    "anomalous": thresholds.map(|t| det.score > t.image),
                    "latency_ms": latency.as_secs_f64() * 1e3,
                    "inference_ms": det.times.inference.as_secs_f64() * 1e3,
                    "windows": det.windows,
                    "model_sha256": sha,
                    "schedule": schedule,
                    "scorer": scorer,
                    "engine": engine,
                    "knn_ms": det.times.knn.as_secs_f64() * 1e3,
                });
                println!("{line}");
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(failed)
}

fn write_pictures(
    dir: &Path,
    image: &Path,
    frame: &image::RgbImage,
    det: &Detection,
    pixel_threshold: Option<f32>,
) -> Result<()> {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "frame".into());
    let vmax = render::heatmap_scale(pixel_threshold, det.score);
    let heat = dir.join(format!("{stem}.heatmap.png"));
    render::heatmap_overlay(frame, &det.map, vmax)
        .save(&heat)
        .with_context(|| format!("cannot write {}", heat.display()))?;
    if let Some(t) = pixel_threshold {
        let mask = dir.join(format!("{stem}.mask.png"));
        render::binary_mask(&det.map, t, frame.width(), frame.height())
            .save(&mask)
            .with_context(|| format!("cannot write {}", mask.display()))?;
    }
    Ok(())
}
