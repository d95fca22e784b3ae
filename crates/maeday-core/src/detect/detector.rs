//! The scoring pipeline for one frame: place it (fit), run every window through the
//! engine with all N masks, turn the output into an Eq. 1 map, stitch the windows.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use image::DynamicImage;

use crate::bank::features::FeatureExtractor;
use crate::bank::memory::{Features, MemoryBank};
use crate::bank::store::StoredBank;
use crate::bank::view::ExtractorView;
use crate::detect::combine::combine;
pub use crate::detect::combine::Banks;
use crate::detect::engine::{self, Engine, EngineOptions};
use crate::detect::eq1::{self, AnomalyMap};
use crate::detect::fuse::ScorerKind;
use crate::detect::preprocess::{Fit, Preprocessor};
use crate::detect::stitch::Stitch;

use crate::model::manifest::{Manifest, Model, OutputKind, Thresholds};
use crate::model::schedule::{MaskSchedule, ScheduleKind};

#[derive(Debug, Clone)]
pub struct DetectorOptions {
    pub fit: Fit,
    pub engine: EngineOptions,
    /// Override the manifest's mask count, schedule kind or seed (for experiments;
    /// devices should run what the manifest pins).
    pub masks: Option<usize>,
    pub schedule: Option<ScheduleKind>,
    pub seed: Option<u64>,
    /// `None`: the ensemble when the model has a memory bank, else MAEDAY alone.
    pub scorer: Option<ScorerKind>,
    /// Memory bank folders (from `enroll`); empty: the model's own `bank/`, if any.
    pub banks: Vec<PathBuf>,
    /// The feature extractor for banks; default: the shipped EfficientNet-Lite0.
    pub extractor: Option<PathBuf>,
    /// Also return each scorer's standardised map (`Detection::parts`; for `eval`).
    pub keep_parts: bool,
}

impl DetectorOptions {
    /// The mask schedule a detector with these options runs for a manifest: the
    /// manifest's, with the overrides applied.
    pub fn schedule_for(&self, m: &Manifest) -> Result<MaskSchedule> {
        MaskSchedule::generate(
            self.schedule.unwrap_or(m.masks.kind),
            self.masks.unwrap_or(m.masks.n),
            m.masks.keep,
            m.input.patches(),
            self.seed.unwrap_or(m.masks.seed),
        )
    }
}

impl DetectorOptions {
    /// The same options scoring with MAEDAY alone and no bank: what enrollment (whose
    /// bank does not exist yet), calibration (MAEDAY's thresholds) and golden checks use.
    pub fn maeday_only(&self) -> DetectorOptions {
        DetectorOptions {
            scorer: Some(ScorerKind::Maeday),
            banks: Vec::new(),
            ..self.clone()
        }
    }
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            fit: Fit::Squash,
            engine: EngineOptions::default(),
            masks: None,
            schedule: None,
            seed: None,
            scorer: None,
            banks: Vec::new(),
            extractor: None,
            keep_parts: false,
        }
    }
}

/// Time spent in each stage for one frame (summed over windows).
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    pub preprocess: Duration,
    pub inference: Duration,
    pub scoring: Duration,
    /// The memory bank's feature extractor.
    pub features: Duration,
    /// The memory bank's nearest-neighbour search.
    pub knn: Duration,
}

impl StageTimes {
    pub fn total(&self) -> Duration {
        self.preprocess + self.inference + self.scoring + self.features + self.knn
    }
}

/// The result for one frame.
#[derive(Debug, Clone)]
pub struct Detection {
    /// The scorer's map over the frame, at the working resolution of the fit: Eq. 1 for
    /// MAEDAY, standardised distances (summed) for banks and the ensemble.
    pub map: AnomalyMap,
    /// The image score: `max(map)`.
    pub score: f32,
    pub windows: usize,
    pub times: StageTimes,
    /// With `keep_parts`: each scorer's standardised map, named (`maeday`, then banks).
    pub parts: Vec<(String, AnomalyMap)>,
}

pub struct Detector {
    pub model: Model,
    pub schedule: MaskSchedule,
    engine: Box<dyn Engine>,
    pre: Preprocessor,
    kernel: Vec<f32>,
    kind: ScorerKind,
    extractor: Option<Arc<FeatureExtractor>>,
    view: ExtractorView,
    banks: Option<Banks>,
    bank_kernel: Vec<f32>,
    keep_parts: bool,
    // Buffers reused across frames.
    input: Vec<f32>,
    output: Vec<f32>,
    scratch: Vec<f32>,
}

impl Detector {
    pub fn new(model: Model, opts: &DetectorOptions) -> Result<Detector> {
        let m = &model.manifest;
        let schedule = opts.schedule_for(m)?;
        let pre = Preprocessor::new(&m.input, opts.fit)?;
        let kernel = eq1::gaussian_kernel(m.scoring.gaussian_size, m.scoring.gaussian_sigma);
        let engine = engine::build(&model, &schedule, &opts.engine)
            .with_context(|| format!("cannot load model {}", model.dir.display()))?;
        log::info!(
            "model {} ({}), schedule {}, {}, fit {}",
            m.name,
            if m.training.is_empty() {
                "training unknown"
            } else {
                &m.training
            },
            schedule.id(),
            engine.describe(),
            opts.fit
        );
        let calibrated = m.calibration.as_ref().and_then(|c| c.get("schedule"));
        if let Some(cal) = calibrated.and_then(|v| v.as_str()) {
            if m.thresholds.is_some() && cal != schedule.id() {
                log::warn!(
                    "model {}'s thresholds were calibrated with schedule {cal}, this detector \
                     runs {}: calibrate again with the same masks and schedule",
                    m.name,
                    schedule.id()
                );
            }
        }
        if m.training.starts_with("random-init") {
            log::warn!(
                "model {} has random weights: its scores mean nothing",
                m.name
            );
        }
        let mut detector = Detector {
            model,
            schedule,
            engine,
            pre,
            kernel,
            kind: ScorerKind::Maeday,
            extractor: None,
            view: ExtractorView::default(),
            banks: None,
            bank_kernel: crate::bank::scoring::bank_kernel(),
            keep_parts: opts.keep_parts,
            input: Vec::new(),
            output: Vec::new(),
            scratch: Vec::new(),
        };
        let mut dirs = opts.banks.clone();
        let own = detector.model.dir.join("bank");
        if dirs.is_empty() && own.join("bank.toml").is_file() {
            dirs.push(own);
        }
        if !dirs.is_empty() && opts.scorer != Some(ScorerKind::Maeday) {
            let stored = dirs
                .iter()
                .map(|d| StoredBank::load(d))
                .collect::<Result<Vec<_>>>()?;
            let name = Some(stored[0].meta.extractor.as_str());
            let ex = crate::bank::features::open_extractor_for(opts.extractor.as_ref(), name)?;
            let extractor = Arc::new(ex);
            detector.attach_stored(extractor, &stored)?;
        }
        detector.set_scorer(opts.scorer.unwrap_or(if detector.banks.is_some() {
            ScorerKind::Ensemble
        } else {
            ScorerKind::Maeday
        }))?;
        Ok(detector)
    }

    /// Attach enrolled banks (all made with `extractor`). The MAEDAY statistics, weights
    /// and thresholds come from the first; thresholds only hold for a single bank.
    pub fn attach_stored(
        &mut self,
        extractor: Arc<FeatureExtractor>,
        stored: &[StoredBank],
    ) -> Result<()> {
        ensure!(!stored.is_empty(), "no memory bank to attach");
        for b in stored {
            b.check_extractor(&extractor)?;
            let m = &b.meta;
            if m.maeday.model_sha256 != self.model.manifest.graph_sha256 {
                log::warn!(
                    "bank {} was enrolled with model {}, this is {}: its MAEDAY statistics \
                     are stale, enroll again for a calibrated ensemble",
                    b.dir.display(),
                    m.maeday.model_sha256,
                    self.model.manifest.graph_sha256
                );
            } else if m.maeday.schedule != self.schedule.id() {
                log::warn!(
                    "bank {} was enrolled with schedule {}, this detector runs {}",
                    b.dir.display(),
                    m.maeday.schedule,
                    self.schedule.id()
                );
            }
        }
        let first = &stored[0].meta;
        self.set_extractor(extractor)?;
        let banks = Banks {
            scorers: stored.iter().map(StoredBank::scorer).collect(),
            maeday_norm: first.maeday.norm,
            weights: first.weights,
            thresholds: (stored.len() == 1).then_some(first.thresholds),
            pixel: stored[0].pixel_scorer(),
            pixel_part: false,
        };
        self.attach(banks)
    }

    /// Attach memory banks (replacing any; made with the extractor set); the scorer stays
    /// as it is.
    pub fn attach(&mut self, banks: Banks) -> Result<()> {
        ensure!(
            self.extractor.is_some(),
            "set the feature extractor before attaching banks"
        );
        ensure!(!banks.scorers.is_empty(), "no memory bank to attach");
        self.banks = Some(banks);
        Ok(())
    }

    /// The feature extractor for bank maps and enrollment (it resizes each window to its
    /// own input size).
    pub fn set_extractor(&mut self, extractor: Arc<FeatureExtractor>) -> Result<()> {
        let (input, size) = (&self.model.manifest.input, extractor.manifest.view_size());
        self.view = ExtractorView::new(input, self.pre.fit, size)?;
        self.extractor = Some(extractor);
        Ok(())
    }

    pub fn extractor(&self) -> Option<&Arc<FeatureExtractor>> {
        self.extractor.as_ref()
    }

    pub fn banks(&self) -> Option<&Banks> {
        self.banks.as_ref()
    }

    /// For `eval`: keep few-shot MAEDAY's map among the parts (when the bank has it).
    pub fn keep_pixel_part(&mut self) {
        if let Some(b) = &mut self.banks {
            b.pixel_part = b.pixel.is_some();
        }
    }

    pub fn scorer(&self) -> ScorerKind {
        self.kind
    }

    pub fn set_scorer(&mut self, kind: ScorerKind) -> Result<()> {
        if let Some(b) = &self.banks {
            b.check_scorer(kind)?;
        }
        if kind != ScorerKind::Maeday && self.banks.is_none() {
            bail!(
                "scorer {kind} needs a memory bank: enroll one first (`maeday-edge enroll \
                 --good DIR`) or pass --bank"
            );
        }
        self.kind = kind;
        Ok(())
    }

    /// A short description for logs and reports: `ensemble (bank 3136 rows)`.
    pub fn scorer_description(&self) -> String {
        match (&self.banks, self.kind) {
            (Some(b), ScorerKind::Bank | ScorerKind::Ensemble | ScorerKind::EnsembleNorm) => {
                format!(
                    "{} ({})",
                    self.kind,
                    b.scorers
                        .iter()
                        .map(|s| format!("{} {} rows", s.name, s.bank.len()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            _ => self.kind.to_string(),
        }
    }

    /// Change how frames are placed (cameras can differ); cheap when unchanged.
    pub fn set_fit(&mut self, fit: Fit) -> Result<()> {
        if self.pre.fit != fit {
            self.pre = Preprocessor::new(&self.model.manifest.input, fit)?;
            if let Some(e) = self.extractor.clone() {
                self.set_extractor(e)?;
            }
        }
        Ok(())
    }

    /// The thresholds of the scorer in use (`None`: not calibrated for it).
    pub fn thresholds(&self) -> Option<Thresholds> {
        match self.kind {
            ScorerKind::Maeday => self.model.manifest.thresholds,
            ScorerKind::Bank => self.banks.as_ref()?.thresholds.map(|t| t.bank),
            ScorerKind::Ensemble => self.banks.as_ref()?.thresholds.map(|t| t.ensemble),
            ScorerKind::MaedayNorm => self.banks.as_ref()?.pixel.as_ref().map(|p| p.thresholds),
            ScorerKind::EnsembleNorm => self.banks.as_ref()?.ensemble_norm_thresholds(),
        }
    }

    pub fn fit(&self) -> Fit {
        self.pre.fit
    }

    pub fn engine_description(&self) -> String {
        self.engine.describe()
    }

    /// Score one frame.
    pub fn detect(&mut self, frame: &DynamicImage) -> Result<Detection> {
        let kind = self.kind;
        let banks: Vec<Arc<MemoryBank>> = match (&self.banks, kind) {
            (Some(b), ScorerKind::Bank | ScorerKind::Ensemble | ScorerKind::EnsembleNorm) => {
                b.scorers.iter().map(|s| s.bank.clone()).collect()
            }
            _ => Vec::new(),
        };
        let with_maeday = kind != ScorerKind::Bank;
        let (raw, windows, mut times) = self.raw_maps(frame, with_maeday, &banks)?;
        let t = Instant::now();
        let mut scored = combine(kind, self.banks.as_ref(), raw, self.keep_parts);
        if kind == ScorerKind::Bank {
            // The bank alone is scored by its extractor's rule (e.g. DINOv2: top-1% mean).
            let top = self
                .extractor
                .as_ref()
                .and_then(|e| e.manifest.image_score_top);
            if top.is_some() {
                scored.score = crate::bank::scoring::image_score(&scored.map.data, top);
            }
        }
        times.scoring += t.elapsed();
        Ok(Detection {
            map: scored.map,
            score: scored.score,
            windows,
            times,
            parts: scored.parts,
        })
    }

    /// Raw maps of one frame at the fit's working resolution, each stitched over the
    /// windows: MAEDAY's Eq. 1 first (when `maeday`), then the smoothed nearest-neighbour
    /// distance map against each of `banks`. Returns the maps, the window count and times.
    pub fn raw_maps(
        &mut self,
        frame: &DynamicImage,
        maeday: bool,
        banks: &[Arc<MemoryBank>],
    ) -> Result<(Vec<AnomalyMap>, usize, StageTimes)> {
        ensure!(
            banks.is_empty() || self.extractor.is_some(),
            "bank maps need a feature extractor"
        );
        let mut times = StageTimes::default();
        let t = Instant::now();
        let placed = self.pre.place(frame)?;
        times.preprocess += t.elapsed();
        let s = self.pre.size as usize;
        let mut stitch = Stitch::new(
            maeday as usize + banks.len(),
            placed.canvas.width() as usize,
            placed.canvas.height() as usize,
        );
        let mut window = AnomalyMap::zeros(s, s);
        let mut image01 = Vec::new();
        let own = self.view.place(frame, !banks.is_empty())?;
        for &corner in &placed.windows {
            let t = Instant::now();
            self.pre
                .window_tensor(&placed.canvas, corner, &mut self.input);
            if !banks.is_empty() {
                let own = own.as_ref();
                self.view
                    .window(&self.pre, &placed.canvas, own, corner, &mut image01);
            }
            times.preprocess += t.elapsed();
            let mut slot = 0;
            if maeday {
                self.maeday_window(&mut window, &mut times)?;
                stitch.add(slot, corner, &window);
                slot += 1;
            }
            if !banks.is_empty() {
                // One extractor run per window, whatever the number of banks.
                let extractor = self.extractor.as_ref().expect("checked above");
                let t = Instant::now();
                let feats = extractor.features(&image01)?;
                times.features += t.elapsed();
                let grid = extractor.manifest.view_grid();
                for bank in banks {
                    let t = Instant::now();
                    let knn = crate::bank::scoring::bank_map_with(
                        &feats,
                        grid,
                        s,
                        bank,
                        |d| extractor.to_distance(d),
                        &self.bank_kernel,
                        &mut window,
                        &mut self.scratch,
                    )?;
                    stitch.add(slot, corner, &window);
                    slot += 1;
                    times.knn += knn;
                    times.scoring += t.elapsed().saturating_sub(knn);
                }
            }
            stitch.covered(corner, s);
        }
        let t = Instant::now();
        let out = stitch.finish(placed.content);
        times.scoring += t.elapsed();
        Ok((out, placed.windows.len(), times))
    }

    /// MAEDAY's map of the window in `self.input` (Eq. 1 on the engine's reconstructions,
    /// or the engine's own map for graphs that end in one).
    fn maeday_window(&mut self, window: &mut AnomalyMap, times: &mut StageTimes) -> Result<()> {
        let t = Instant::now();
        self.engine.run(&self.input, &mut self.output)?;
        times.inference += t.elapsed();
        let t = Instant::now();
        match self.engine.output_kind() {
            OutputKind::Reconstruction => eq1::anomaly_map_into(
                &self.input,
                &self.output,
                &self.kernel,
                window,
                &mut self.scratch,
            )?,
            OutputKind::AnomalyMap => window.data.copy_from_slice(&self.output),
        }
        times.scoring += t.elapsed();
        Ok(())
    }

    /// The bank features of every window of a frame (what enrollment stores).
    pub fn window_features(&mut self, frame: &DynamicImage) -> Result<Vec<Features>> {
        let Some(extractor) = self.extractor.clone() else {
            bail!("window features need a feature extractor");
        };
        self.view.features(&self.pre, &extractor, frame)
    }
}
