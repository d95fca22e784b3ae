//! `eval`: score every image of a labelled dataset and report image AUROC, pixel AUROC and
//! PRO, per defect group, per scorer combination (few-shot), with timings.
//!
//! [`evaluate`] picks the images (and the few-shot good frames, never evaluated), builds the
//! detector (enrolling banks in memory for few-shot), then feeds each detection to a
//! [`Tallies`], which keeps only what the metrics need (image scores, a regular subgrid of
//! pixels with their ground-truth regions) and finally writes the report.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::bank::features::open_extractor;
use crate::bank::store::Shot;
use crate::detect::detector::{Detection, Detector, DetectorOptions};
use crate::detect::eq1::AnomalyMap;
use crate::detect::fuse::{ProbeWeights, ScorerKind, Weights};
use crate::detect::good_stats::GoodScores;
use crate::detect::preprocess::load_image;
use crate::enroll::{enroll, EnrollSettings};
use crate::eval::combos::{combinations, Combination};
use crate::eval::dataset::{Dataset, Sample};
use crate::eval::groups::{per_group, Images, Pixels};
use crate::eval::operating::operating_points;
use crate::eval::roc::{auroc, label_regions, pro_auc, quantile};
use crate::model::manifest::Model;
use crate::model::schedule::seeded_permutation;
use crate::progress::progress;

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
    /// Also few-shot MAEDAY (`maeday-norm`) among the parts, and pixel-wise max fusions.
    pub compare_fusions: bool,
}

/// Evaluate `model` on the dataset in `dataset_dir`: the JSON report (also written to
/// `eo.report`).
pub fn evaluate(
    model: Model,
    opts: &DetectorOptions,
    dataset_dir: &Path,
    eo: &EvalOptions,
) -> Result<Value> {
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
    log::info!(
        "{} layout: {} images ({normal} normal, {} anomalous) in {}",
        data.layout.name(),
        data.samples.len(),
        data.samples.len() - normal,
        dataset_dir.display()
    );
    let mut detector = if shots.is_empty() {
        Detector::new(model, opts)?
    } else {
        few_shot_detector(model, opts, &shots, eo)?
    };
    let mut tallies = Tallies::new(&detector, data.has_masks(), eo.pixel_budget);
    tallies.max_fusions = eo.compare_fusions;
    let bar = progress(data.samples.len(), "eval");
    let started = Instant::now();
    for sample in &data.samples {
        let start = Instant::now();
        let result = load_image(&sample.image).and_then(|frame| {
            let det = detector.detect(&frame)?;
            let truth = if tallies.pixel_metrics {
                Some(load_truth(sample.mask.as_deref(), &det.map)?)
            } else {
                None
            };
            Ok((det, truth))
        });
        bar.inc(1);
        match result {
            Ok((det, truth)) => tallies.add(sample, &det, truth.as_deref(), start.elapsed()),
            Err(e) => {
                bar.suspend(|| log::error!("{e:#}"));
                tallies.failed.push(
                    json!({"image": sample.image.display().to_string(), "error": format!("{e:#}")}),
                );
            }
        }
    }
    bar.finish_and_clear();
    let run = RunInfo {
        dataset_dir,
        data: &data,
        detector: &detector,
        opts,
        eo,
        shots: &shots,
        total: started.elapsed(),
    };
    let report = tallies.report(&run)?;
    if let Some(path) = &eo.report {
        let text = serde_json::to_string_pretty(&report)?;
        // Atomic: a full disk or a kill leaves the old report or none, never half of one
        // (the evaluation scripts skip reports that exist).
        crate::durable::write_atomic(path, (text + "\n").as_bytes())
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    Ok(report)
}

/// A detector that scores with MAEDAY and banks enrolled here, in memory, from `shots`
/// (one bank per coreset seed); each scorer's map is kept for the combinations.
fn few_shot_detector(
    model: Model,
    opts: &DetectorOptions,
    shots: &[Shot],
    eo: &EvalOptions,
) -> Result<Detector> {
    ensure!(!eo.bank_seeds.is_empty(), "--bank-seeds: at least one seed");
    let mut d = Detector::new(
        model,
        &DetectorOptions {
            keep_parts: true,
            ..opts.maeday_only()
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
        let b = enroll(&mut d, extractor.clone(), shots, &settings)?;
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
    if eo.compare_fusions {
        d.keep_pixel_part();
    }
    d.set_scorer(opts.scorer.unwrap_or(ScorerKind::Ensemble))?;
    Ok(d)
}

/// Pick `count` normal images for enrollment, seeded, from those `limit` left out (all
/// normal images when every one is evaluated), and remove them from the evaluated set.
fn pick_shots(
    all: &[Sample],
    evaluated: &mut Vec<Sample>,
    count: usize,
    seed: u64,
) -> Result<Vec<Shot>> {
    let kept: HashSet<&Path> = evaluated.iter().map(|s| s.image.as_path()).collect();
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

/// The subgrid step that keeps at most `budget` of a map's `pixels`.
fn stride_for(pixels: usize, budget: usize) -> usize {
    let mut stride = 1;
    while pixels / (stride * stride) > budget {
        stride += 1;
    }
    stride
}

/// Time spent per stage, summed over the scored images (milliseconds).
#[derive(Default)]
struct StageSums {
    preprocess: f64,
    inference: f64,
    scoring: f64,
    features: f64,
    knn: f64,
}

/// What the metrics need from every scored image, gathered as the images go by.
struct Tallies {
    pixel_metrics: bool,
    pixel_budget: usize,
    /// Also measure pixel-wise max fusions.
    max_fusions: bool,
    /// The enrollment probe's weights (few-shot MAEDAY vs the first bank).
    probe: Option<ProbeWeights>,
    /// The enrollment's held-out good scores per scorer (fusions from good frames).
    good: Option<GoodScores>,
    weights: Weights,
    bank_rows: Vec<usize>,
    /// The bank scorer's image score rule (the extractor's `image_score_top`).
    bank_top: Option<f64>,
    /// Every combination of the parts (maeday, bank0, bank1, ...), set up at the first
    /// detection that has parts.
    combos: Vec<Combination>,
    scores: Vec<f32>,
    labels: Vec<bool>,
    groups: Vec<String>,
    scored_paths: Vec<String>,
    /// Per sampled pixel: its score and its ground-truth region (0 = normal pixel).
    pix_scores: Vec<f32>,
    pix_regions: Vec<u32>,
    /// Per sampled pixel: the index of its image in `scores`.
    pix_images: Vec<u32>,
    next_region: u32,
    latencies_ms: Vec<f64>,
    stages: StageSums,
    failed: Vec<Value>,
}

/// What the report says about the run besides the metrics.
struct RunInfo<'a> {
    dataset_dir: &'a Path,
    data: &'a Dataset,
    detector: &'a Detector,
    opts: &'a DetectorOptions,
    eo: &'a EvalOptions,
    shots: &'a [Shot],
    total: Duration,
}

impl Tallies {
    fn new(detector: &Detector, pixel_metrics: bool, pixel_budget: usize) -> Tallies {
        Tallies {
            pixel_metrics,
            pixel_budget,
            max_fusions: false,
            probe: detector
                .banks()
                .and_then(|b| b.pixel.as_ref())
                .and_then(|p| p.probe),
            good: detector
                .banks()
                .and_then(|b| b.pixel.as_ref())
                .and_then(|p| p.good.clone()),
            weights: detector.banks().map(|b| b.weights).unwrap_or_default(),
            bank_rows: detector
                .banks()
                .map(|b| b.scorers.iter().map(|s| s.bank.len()).collect())
                .unwrap_or_default(),
            bank_top: detector
                .extractor()
                .and_then(|e| e.manifest.image_score_top),
            combos: Vec::new(),
            scores: Vec::new(),
            labels: Vec::new(),
            groups: Vec::new(),
            scored_paths: Vec::new(),
            pix_scores: Vec::new(),
            pix_regions: Vec::new(),
            pix_images: Vec::new(),
            next_region: 1,
            latencies_ms: Vec::new(),
            stages: StageSums::default(),
            failed: Vec::new(),
        }
    }

    fn add(&mut self, sample: &Sample, det: &Detection, truth: Option<&[bool]>, took: Duration) {
        self.latencies_ms.push(took.as_secs_f64() * 1e3);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        self.stages.preprocess += ms(det.times.preprocess);
        self.stages.inference += ms(det.times.inference);
        self.stages.scoring += ms(det.times.scoring);
        self.stages.features += ms(det.times.features);
        self.stages.knn += ms(det.times.knn);
        if self.combos.is_empty() && det.parts.len() > 1 {
            self.combos = combinations(det, self.max_fusions, self.probe, self.good.as_ref());
        }
        self.scores.push(det.score);
        self.scored_paths.push(sample.image.display().to_string());
        self.labels.push(sample.anomalous);
        self.groups.push(sample.group.clone());
        let fused: Vec<Vec<f32>> = self
            .combos
            .iter()
            .map(|c| c.fuse(det, &self.weights))
            .collect();
        if let Some(truth) = truth {
            self.add_pixels(&det.map, truth, &fused);
        }
        for (c, f) in self.combos.iter_mut().zip(&fused) {
            c.push_scores(det, f, self.bank_top);
        }
    }

    /// A regular subgrid of the map (and of each combination's map) with its regions.
    fn add_pixels(&mut self, map: &AnomalyMap, truth: &[bool], fused: &[Vec<f32>]) {
        let (regions, next) = label_regions(truth, map.width, map.height, self.next_region);
        self.next_region = next;
        let stride = stride_for(map.data.len(), self.pixel_budget);
        // `add` has pushed this image's score already.
        let image = (self.scores.len() - 1) as u32;
        for y in (0..map.height).step_by(stride) {
            for x in (0..map.width).step_by(stride) {
                let i = y * map.width + x;
                self.pix_scores.push(map.data[i]);
                self.pix_regions.push(regions[i]);
                self.pix_images.push(image);
                for (c, f) in self.combos.iter_mut().zip(fused) {
                    c.pixels.push(f[i]);
                }
            }
        }
    }

    /// [`per_group`] figures of some image and sampled pixel scores.
    fn per_group(&self, scores: &[f32], pixel_scores: &[f32]) -> serde_json::Map<String, Value> {
        let images = Images {
            groups: &self.groups,
            anomalous: &self.labels,
        };
        let pixels = Pixels {
            regions: &self.pix_regions,
            images: &self.pix_images,
        };
        let pixels = self.pixel_metrics.then_some(&pixels);
        per_group(&images, scores, pixels, pixel_scores)
    }

    /// Pixel AUROC and PRO (up to 30% false positives) of some sampled pixel scores.
    fn pixel_metrics_of(&self, pixels: &[f32]) -> (Option<f64>, Option<f64>) {
        if !self.pixel_metrics {
            return (None, None);
        }
        let labels: Vec<bool> = self.pix_regions.iter().map(|r| *r != 0).collect();
        (
            auroc(pixels, &labels),
            pro_auc(pixels, &self.pix_regions, 0.3),
        )
    }

    fn scorers(&self) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        for c in &self.combos {
            let (pa, pro) = self.pixel_metrics_of(&c.pixels);
            out.insert(
                c.name.clone(),
                json!({
                    "image_auroc": auroc(&c.scores, &self.labels),
                    "image_auroc_top": auroc(&c.scores_top, &self.labels),
                    "pixel_auroc": pa, "pro_0_3": pro,
                    "per_group": self.per_group(&c.scores, &c.pixels),
                    // Per image, in the order of `images` (bootstrap intervals offline).
                    "scores": c.scores, "scores_top": c.scores_top,
                }),
            );
        }
        out
    }

    fn timings(&self, total: Duration) -> Value {
        let n = self.latencies_ms.len() as f64;
        let mut sorted: Vec<f32> = self.latencies_ms.iter().map(|v| *v as f32).collect();
        let p50 = quantile(&mut sorted, 0.5);
        let p95 = quantile(&mut sorted, 0.95);
        let s = &self.stages;
        json!({
            "total_s": total.as_secs_f64(),
            "per_image_ms": {"mean": self.latencies_ms.iter().sum::<f64>() / n, "p50": p50, "p95": p95},
            "preprocess_ms_mean": s.preprocess / n,
            "inference_ms_mean": s.inference / n,
            "scoring_ms_mean": s.scoring / n,
            "features_ms_mean": s.features / n,
            "knn_ms_mean": s.knn / n,
        })
    }

    fn report(&self, run: &RunInfo) -> Result<Value> {
        if self.scores.is_empty() {
            bail!(
                "every image failed ({} errors); nothing to evaluate",
                self.failed.len()
            );
        }
        let (pixel_auroc, pro) = self.pixel_metrics_of(&self.pix_scores);
        let (data, detector) = (run.data, run.detector);
        Ok(json!({
            "dataset": run.dataset_dir.display().to_string(),
            "layout": data.layout.name(),
            "model": detector.model.manifest.name,
            "model_sha256": detector.model.manifest.graph_sha256,
            "schedule": detector.schedule.id(),
            "engine": detector.engine_description(),
            "scorer": detector.scorer_description(),
            "shots": run.shots.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            "shot_seed": run.eo.shot_seed,
            "bank_rows": self.bank_rows,
            "probe": self.probe,
            "good": self.good,
            "scene": run.detector.banks().and_then(|b| b.pixel.as_ref()).and_then(|p| p.scene),
            "scorers": self.scorers(),
            // Each calibrated scorer at its enrollment's image threshold.
            "operating_points": operating_points(detector.banks(), &self.combos, &self.labels),
            "fit": run.opts.fit.to_string(),
            "limit": run.eo.limit,
            "seed": run.eo.seed,
            "counts": {
                "images": data.samples.len(),
                "scored": self.scores.len(),
                "normal": self.labels.iter().filter(|l| !**l).count(),
                "anomalous": self.labels.iter().filter(|l| **l).count(),
                "with_masks": data.samples.iter().filter(|s| s.mask.is_some()).count(),
                "failed": self.failed.len(),
                "pixels": self.pix_scores.len(),
            },
            "image_auroc": auroc(&self.scores, &self.labels),
            "pixel_auroc": pixel_auroc,
            "pro_0_3": pro,
            "per_group": self.per_group(&self.scores, &self.pix_scores),
            "timings": self.timings(run.total),
            "failed": self.failed,
            // Every scored image: lets a later step prove which images were evaluated
            // (e.g. that few-shot training images were not) and re-plot the scores.
            "images": self.scored_paths.iter().zip(&self.scores).zip(self.labels.iter().zip(&self.groups))
                .map(|((path, score), (anomalous, group))| json!({
                    "image": path, "score": score, "anomalous": anomalous, "group": group,
                }))
                .collect::<Vec<_>>(),
        }))
    }
}
