//! The `score`, `eval` and `calibrate` commands.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use std::sync::Arc;

use crate::bank::store::Shot;
use crate::detect::calibration::{calibrate, CalibrationRule};
use crate::detect::detector::{open_extractor, Detection, Detector, DetectorOptions};
use crate::detect::eq1::AnomalyMap;
use crate::detect::fuse::{self, ScorerKind};
use crate::detect::preprocess::load_image;
use crate::detect::render;
use crate::enroll::{enroll, load_shots, EnrollSettings};
use crate::eval::dataset::{list_images, Dataset, Sample};
use crate::eval::roc::{auroc, label_regions, pro_auc, quantile};
use crate::model::manifest::Model;
use crate::model::schedule::seeded_permutation;

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
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
    // The pixel threshold sits mid-scale; without one, the map's own maximum tops it.
    let vmax = pixel_threshold.map(|t| 2.0 * t).unwrap_or(det.score);
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

/// Options of `eval`.
pub struct EvalOptions {
    pub limit: Option<usize>,
    pub seed: u64,
    pub report: Option<PathBuf>,
    /// At most this many pixels per image enter the pixel AUROC (a regular subgrid).
    pub pixel_budget: usize,
    /// Few-shot: enroll banks from this many normal images that are not evaluated.
    pub shots: usize,
    /// Picks the shots.
    pub shot_seed: u64,
    /// One bank per seed (coreset seeds), all from the same shots.
    pub bank_seeds: Vec<u64>,
    pub enroll: EnrollSettings,
}

/// Pick `count` normal images for enrollment, seeded, from those `limit` left out (all
/// normal images when every one is evaluated), and remove them from the evaluated set.
fn pick_shots(
    all: &[Sample],
    evaluated: &mut Vec<Sample>,
    count: usize,
    seed: u64,
) -> Result<Vec<Shot>> {
    let kept: std::collections::HashSet<&Path> =
        evaluated.iter().map(|s| s.image.as_path()).collect();
    let mut pool: Vec<&Sample> = all
        .iter()
        .filter(|s| !s.anomalous && !kept.contains(s.image.as_path()))
        .collect();
    if pool.len() < count {
        // Every normal image is evaluated: take the shots from them.
        pool = all.iter().filter(|s| !s.anomalous).collect();
    }
    ensure!(
        pool.len() >= count,
        "{count} shots wanted, the dataset has {} normal images",
        pool.len()
    );
    let perm = seeded_permutation(pool.len(), seed);
    let chosen: Vec<&Sample> = perm[..count].iter().map(|&i| pool[i]).collect();
    evaluated.retain(|s| !chosen.iter().any(|c| c.image == s.image));
    chosen
        .iter()
        .map(|s| {
            Ok(Shot {
                name: s.image.display().to_string(),
                image: load_image(&s.image)?,
            })
        })
        .collect()
}

/// Per-scorer results over the evaluated images.
#[derive(Default)]
struct Tally {
    scores: Vec<f32>,
    pixels: Vec<f32>,
}

/// Ground truth at the map's resolution: true where the mask is >= 128.
fn load_truth(mask: Option<&Path>, map: &AnomalyMap) -> Result<Vec<bool>> {
    let Some(path) = mask else {
        return Ok(vec![false; map.data.len()]);
    };
    let gt = load_image(path)?.to_luma8();
    let gt = image::imageops::resize(
        &gt,
        map.width as u32,
        map.height as u32,
        image::imageops::FilterType::Triangle,
    );
    Ok(gt.pixels().map(|p| p.0[0] >= 128).collect())
}

fn stride_for(pixels: usize, budget: usize) -> usize {
    let mut stride = 1;
    while pixels / (stride * stride) > budget {
        stride += 1;
    }
    stride
}

pub fn eval(
    model: Model,
    opts: &DetectorOptions,
    dataset_dir: &Path,
    eo: &EvalOptions,
) -> Result<serde_json::Value> {
    let mut data = Dataset::discover(dataset_dir)?;
    let all = data.samples.clone();
    if let Some(limit) = eo.limit {
        data.limit(limit, eo.seed);
    }
    let shots = if eo.shots > 0 {
        pick_shots(&all, &mut data.samples, eo.shots, eo.shot_seed)?
    } else {
        Vec::new()
    };
    let normal = data.samples.iter().filter(|s| !s.anomalous).count();
    let anomalous = data.samples.len() - normal;
    log::info!(
        "{} layout: {} images ({normal} normal, {anomalous} anomalous) in {}",
        data.layout.name(),
        data.samples.len(),
        dataset_dir.display()
    );
    let mut detector = if shots.is_empty() {
        Detector::new(model, opts)?
    } else {
        // Banks enrolled here, in memory: each scorer's map is kept for the comparisons.
        ensure!(!eo.bank_seeds.is_empty(), "--bank-seeds: at least one seed");
        let mut d = Detector::new(
            model,
            &DetectorOptions {
                scorer: Some(ScorerKind::Maeday),
                banks: Vec::new(),
                keep_parts: true,
                ..opts.clone()
            },
        )?;
        let extractor = Arc::new(open_extractor(opts.extractor.as_ref())?);
        let mut banks = Vec::new();
        for &seed in &eo.bank_seeds {
            let t = Instant::now();
            let settings = EnrollSettings {
                seed,
                ..eo.enroll.clone()
            };
            let b = enroll(&mut d, extractor.clone(), &shots, &settings)?;
            log::info!(
                "enrolled bank{seed}: {} shots, {} of {} rows, {:.1} s",
                shots.len(),
                b.meta.rows,
                b.meta.rows_before_coreset,
                t.elapsed().as_secs_f64()
            );
            banks.push(b);
        }
        d.attach_stored(extractor, &banks)?;
        d.set_scorer(opts.scorer.unwrap_or(ScorerKind::Ensemble))?;
        d
    };
    let weights = detector.banks().map(|b| b.weights).unwrap_or_default();
    let bank_rows: Vec<usize> = detector
        .banks()
        .map(|b| b.scorers.iter().map(|s| s.bank.len()).collect())
        .unwrap_or_default();
    // Every combination of the parts (maeday, bank0, bank1, ...): name -> tally.
    let mut combos: Vec<(String, Vec<usize>, Tally)> = Vec::new();
    let (mut t_feat, mut t_knn) = (0.0, 0.0);
    let pixel_metrics = data.has_masks();
    let (mut scores, mut labels, mut groups) = (Vec::new(), Vec::new(), Vec::new());
    // Per sampled pixel: its score and its ground-truth region (0 = normal pixel).
    let (mut pix_scores, mut pix_regions) = (Vec::new(), Vec::new());
    let mut next_region = 1u32;
    let mut failed = Vec::new();
    let mut scored_paths = Vec::new();
    let mut latencies = Vec::new();
    let (mut t_pre, mut t_inf, mut t_score) = (0.0, 0.0, 0.0);
    let bar = progress(data.samples.len(), "eval");
    let started = Instant::now();
    for sample in &data.samples {
        let start = Instant::now();
        let result = load_image(&sample.image).and_then(|frame| {
            let det = detector.detect(&frame)?;
            let truth = if pixel_metrics {
                Some(load_truth(sample.mask.as_deref(), &det.map)?)
            } else {
                None
            };
            Ok((det, truth))
        });
        bar.inc(1);
        let (det, truth) = match result {
            Ok(r) => r,
            Err(e) => {
                bar.suspend(|| log::error!("{e:#}"));
                failed.push(
                    json!({"image": sample.image.display().to_string(), "error": format!("{e:#}")}),
                );
                continue;
            }
        };
        latencies.push(start.elapsed().as_secs_f64() * 1e3);
        t_pre += det.times.preprocess.as_secs_f64() * 1e3;
        t_inf += det.times.inference.as_secs_f64() * 1e3;
        t_score += det.times.scoring.as_secs_f64() * 1e3;
        t_feat += det.times.features.as_secs_f64() * 1e3;
        t_knn += det.times.knn.as_secs_f64() * 1e3;
        if combos.is_empty() && det.parts.len() > 1 {
            let n = det.parts.len().min(4);
            for mask in 1u32..(1 << n) {
                let idx: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
                let name = idx
                    .iter()
                    .map(|&i| det.parts[i].0.as_str())
                    .collect::<Vec<_>>()
                    .join("+");
                combos.push((name, idx, Tally::default()));
            }
        }
        scores.push(det.score);
        scored_paths.push(sample.image.display().to_string());
        labels.push(sample.anomalous);
        groups.push(sample.group.clone());
        if let Some(truth) = truth {
            let (regions, next) = label_regions(&truth, det.map.width, det.map.height, next_region);
            next_region = next;
            let stride = stride_for(det.map.data.len(), eo.pixel_budget);
            for y in (0..det.map.height).step_by(stride) {
                for x in (0..det.map.width).step_by(stride) {
                    let i = y * det.map.width + x;
                    pix_scores.push(det.map.data[i]);
                    pix_regions.push(regions[i]);
                }
            }
            for (_, idx, tally) in &mut combos {
                let fused = fuse::weighted_sum(
                    idx.iter()
                        .map(|&i| (&det.parts[i].1.data[..], weights.of(&det.parts[i].0))),
                );
                for y in (0..det.map.height).step_by(stride) {
                    for x in (0..det.map.width).step_by(stride) {
                        tally.pixels.push(fused[y * det.map.width + x]);
                    }
                }
            }
        }
        for (_, idx, tally) in &mut combos {
            let fused = fuse::weighted_sum(
                idx.iter()
                    .map(|&i| (&det.parts[i].1.data[..], weights.of(&det.parts[i].0))),
            );
            tally
                .scores
                .push(fused.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        }
    }
    bar.finish_and_clear();
    let total_s = started.elapsed().as_secs_f64();
    if scores.is_empty() {
        bail!(
            "every image failed ({} errors); nothing to evaluate",
            failed.len()
        );
    }
    let image_auroc = auroc(&scores, &labels);
    let (pixel_auroc, pro) = if pixel_metrics {
        let pix_labels: Vec<bool> = pix_regions.iter().map(|r| *r != 0).collect();
        (
            auroc(&pix_scores, &pix_labels),
            pro_auc(&pix_scores, &pix_regions, 0.3),
        )
    } else {
        (None, None)
    };
    // Per group holding anomalous images: its images against all normal images.
    let mut per_group = serde_json::Map::new();
    let mut names: Vec<&String> = groups
        .iter()
        .zip(&labels)
        .filter(|(_, l)| **l)
        .map(|(g, _)| g)
        .collect();
    names.sort();
    names.dedup();
    for g in names {
        let pick: Vec<usize> = (0..scores.len())
            .filter(|&i| !labels[i] || &groups[i] == g)
            .collect();
        let count = groups.iter().filter(|x| *x == g).count();
        let a = auroc(
            &pick.iter().map(|&i| scores[i]).collect::<Vec<_>>(),
            &pick.iter().map(|&i| labels[i]).collect::<Vec<_>>(),
        );
        per_group.insert(g.clone(), json!({"count": count, "image_auroc": a}));
    }
    let pix_labels: Vec<bool> = pix_regions.iter().map(|r| *r != 0).collect();
    let mut scorers = serde_json::Map::new();
    for (name, _, tally) in &combos {
        let (pa, pro) = if pixel_metrics {
            (
                auroc(&tally.pixels, &pix_labels),
                pro_auc(&tally.pixels, &pix_regions, 0.3),
            )
        } else {
            (None, None)
        };
        scorers.insert(
            name.clone(),
            json!({"image_auroc": auroc(&tally.scores, &labels), "pixel_auroc": pa, "pro_0_3": pro}),
        );
    }
    let n = latencies.len() as f64;
    let mut sorted: Vec<f32> = latencies.iter().map(|v| *v as f32).collect();
    let p50 = quantile(&mut sorted, 0.5);
    let p95 = quantile(&mut sorted, 0.95);
    let report = json!({
        "dataset": dataset_dir.display().to_string(),
        "layout": data.layout.name(),
        "model": detector.model.manifest.name,
        "model_sha256": detector.model.manifest.graph_sha256,
        "schedule": detector.schedule.id(),
        "engine": detector.engine_description(),
        "scorer": detector.scorer_description(),
        "shots": shots.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "shot_seed": eo.shot_seed,
        "bank_rows": bank_rows,
        "scorers": scorers,
        "fit": opts.fit.to_string(),
        "limit": eo.limit,
        "seed": eo.seed,
        "counts": {
            "images": data.samples.len(),
            "scored": scores.len(),
            "normal": labels.iter().filter(|l| !**l).count(),
            "anomalous": labels.iter().filter(|l| **l).count(),
            "with_masks": data.samples.iter().filter(|s| s.mask.is_some()).count(),
            "failed": failed.len(),
            "pixels": pix_scores.len(),
        },
        "image_auroc": image_auroc,
        "pixel_auroc": pixel_auroc,
        "pro_0_3": pro,
        "per_group": per_group,
        "timings": {
            "total_s": total_s,
            "per_image_ms": {"mean": latencies.iter().sum::<f64>() / n, "p50": p50, "p95": p95},
            "preprocess_ms_mean": t_pre / n,
            "inference_ms_mean": t_inf / n,
            "scoring_ms_mean": t_score / n,
            "features_ms_mean": t_feat / n,
            "knn_ms_mean": t_knn / n,
        },
        "failed": failed,
        // Every scored image: lets a later step prove which images were evaluated
        // (e.g. that few-shot training images were not) and re-plot the scores.
        "images": scored_paths.iter().zip(&scores).zip(labels.iter().zip(&groups))
            .map(|((path, score), (anomalous, group))| json!({
                "image": path, "score": score, "anomalous": anomalous, "group": group,
            }))
            .collect::<Vec<_>>(),
    });
    if let Some(path) = &eo.report {
        let text = serde_json::to_string_pretty(&report)?;
        fs::write(path, text + "\n")
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    Ok(report)
}

/// The weighted sum of some of a detection's standardised maps.

/// A readable summary of an eval report.
pub fn eval_table(r: &serde_json::Value) -> String {
    let ms = |v: &serde_json::Value| {
        v.as_f64()
            .map(|x| format!("{x:.1}"))
            .unwrap_or_else(|| "n/a".into())
    };
    let f = |v: &serde_json::Value| {
        v.as_f64()
            .map(|x| format!("{x:.4}"))
            .unwrap_or_else(|| "n/a".into())
    };
    let mut s = String::new();
    s += &format!(
        "dataset      {} ({})\n",
        r["dataset"].as_str().unwrap_or(""),
        r["layout"].as_str().unwrap_or("")
    );
    s += &format!(
        "model        {} [{}]\n",
        r["model"].as_str().unwrap_or(""),
        r["engine"].as_str().unwrap_or("")
    );
    s += &format!(
        "schedule     {}  fit {}\n",
        r["schedule"].as_str().unwrap_or(""),
        r["fit"].as_str().unwrap_or("")
    );
    let c = &r["counts"];
    s += &format!(
        "images       {} scored ({} normal, {} anomalous), {} failed\n",
        c["scored"], c["normal"], c["anomalous"], c["failed"]
    );
    s += &format!(
        "scorer       {}\n",
        r["scorer"].as_str().unwrap_or("maeday")
    );
    s += &format!("image AUROC  {}\n", f(&r["image_auroc"]));
    s += &format!("pixel AUROC  {}\n", f(&r["pixel_auroc"]));
    s += &format!("PRO (0.3)    {}\n", f(&r["pro_0_3"]));
    if let Some(groups) = r["per_group"].as_object() {
        s += "per group with anomalies (vs all normal images):\n";
        for (g, v) in groups {
            s += &format!(
                "  {g:<28} {:>5} images  image AUROC {}\n",
                v["count"].as_u64().unwrap_or(0),
                f(&v["image_auroc"])
            );
        }
    }
    if let Some(sc) = r["scorers"].as_object().filter(|m| !m.is_empty()) {
        s += "each scorer and combination (image / pixel AUROC / PRO):\n";
        for (name, v) in sc {
            s += &format!(
                "  {name:<28} {} / {} / {}\n",
                f(&v["image_auroc"]),
                f(&v["pixel_auroc"]),
                f(&v["pro_0_3"])
            );
        }
    }
    let t = &r["timings"];
    s += &format!(
        "time         {:.1} s total, {} ms/image mean (p50 {}, p95 {}); inference {} ms\n",
        t["total_s"].as_f64().unwrap_or(0.0),
        ms(&t["per_image_ms"]["mean"]),
        ms(&t["per_image_ms"]["p50"]),
        ms(&t["per_image_ms"]["p95"]),
        ms(&t["inference_ms_mean"])
    );
    s
}

/// `enroll`: build a memory bank from good images and write it to `out`.
pub fn enroll_bank(
    model: Model,
    opts: &DetectorOptions,
    good: &Path,
    limit: Option<usize>,
    out: &Path,
    settings: &EnrollSettings,
) -> Result<serde_json::Value> {
    let started = Instant::now();
    let shots = load_shots(good, limit)?;
    let extractor = Arc::new(open_extractor(opts.extractor.as_ref())?);
    let mut detector = Detector::new(
        model,
        &DetectorOptions {
            scorer: Some(ScorerKind::Maeday),
            banks: Vec::new(),
            ..opts.clone()
        },
    )?;
    let mut bank = enroll(&mut detector, extractor, &shots, settings)?;
    bank.save(out, &shots)?;
    let m = &bank.meta;
    Ok(json!({
        "bank": out.display().to_string(),
        "good_images": shots.len(),
        "rows": m.rows,
        "rows_before_coreset": m.rows_before_coreset,
        "features_sha256": m.features_sha256,
        "seed": m.seed,
        "extractor_sha256": m.extractor_sha256,
        "thresholds": {"bank": m.thresholds.bank.image, "ensemble": m.thresholds.ensemble.image},
        "seconds": started.elapsed().as_secs_f64(),
    }))
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
    let opts = DetectorOptions {
        scorer: Some(ScorerKind::Maeday),
        ..opts.clone()
    };
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
