//! The scoring pipeline for one frame: place it (fit), run every window through the
//! engine with all N masks, turn the output into an Eq. 1 map, stitch the windows.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use image::DynamicImage;

use crate::engine::{self, Engine, EngineOptions};
use crate::manifest::{Model, OutputKind, Thresholds};
use crate::preprocess::{Fit, Preprocessor};
use crate::schedule::{MaskSchedule, ScheduleKind};
use crate::scoring::{self, AnomalyMap};

#[derive(Debug, Clone)]
pub struct DetectorOptions {
    pub fit: Fit,
    pub engine: EngineOptions,
    /// Override the manifest's mask count, schedule kind or seed (for experiments;
    /// devices should run what the manifest pins).
    pub masks: Option<usize>,
    pub schedule: Option<ScheduleKind>,
    pub seed: Option<u64>,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            fit: Fit::Squash,
            engine: EngineOptions::default(),
            masks: None,
            schedule: None,
            seed: None,
        }
    }
}

/// Time spent in each stage for one frame (summed over windows).
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    pub preprocess: Duration,
    pub inference: Duration,
    pub scoring: Duration,
}

impl StageTimes {
    pub fn total(&self) -> Duration {
        self.preprocess + self.inference + self.scoring
    }
}

/// The result for one frame.
#[derive(Debug, Clone)]
pub struct Detection {
    /// Eq. 1 over the frame, at the working resolution of the fit.
    pub map: AnomalyMap,
    /// `max(map)`.
    pub score: f32,
    pub windows: usize,
    pub times: StageTimes,
}

pub struct Detector {
    pub model: Model,
    pub schedule: MaskSchedule,
    engine: Box<dyn Engine>,
    pre: Preprocessor,
    kernel: Vec<f32>,
    // Buffers reused across frames.
    input: Vec<f32>,
    output: Vec<f32>,
    scratch: Vec<f32>,
}

impl Detector {
    pub fn new(model: Model, opts: &DetectorOptions) -> Result<Detector> {
        let m = &model.manifest;
        let schedule = MaskSchedule::generate(
            opts.schedule.unwrap_or(m.masks.kind),
            opts.masks.unwrap_or(m.masks.n),
            m.masks.keep,
            m.input.patches(),
            opts.seed.unwrap_or(m.masks.seed),
        )?;
        let pre = Preprocessor::new(&m.input, opts.fit)?;
        let kernel = scoring::gaussian_kernel(m.scoring.gaussian_size, m.scoring.gaussian_sigma);
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
        if m.training.starts_with("random-init") {
            log::warn!(
                "model {} has random weights: its scores mean nothing",
                m.name
            );
        }
        Ok(Detector {
            model,
            schedule,
            engine,
            pre,
            kernel,
            input: Vec::new(),
            output: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Change how frames are placed (cameras can differ); cheap when unchanged.
    pub fn set_fit(&mut self, fit: Fit) -> Result<()> {
        if self.pre.fit != fit {
            self.pre = Preprocessor::new(&self.model.manifest.input, fit)?;
        }
        Ok(())
    }

    pub fn thresholds(&self) -> Option<Thresholds> {
        self.model.manifest.thresholds
    }

    pub fn engine_description(&self) -> String {
        self.engine.describe()
    }

    /// Score one frame.
    pub fn detect(&mut self, frame: &DynamicImage) -> Result<Detection> {
        let mut times = StageTimes::default();
        let t = Instant::now();
        let placed = self.pre.place(frame)?;
        times.preprocess += t.elapsed();
        let s = self.pre.size as usize;
        let (cw, ch) = (
            placed.canvas.width() as usize,
            placed.canvas.height() as usize,
        );
        let mut sum = vec![0.0f32; cw * ch];
        let mut count = vec![0u16; cw * ch];
        let mut window = AnomalyMap::zeros(s, s);
        for &(wx, wy) in &placed.windows {
            let t = Instant::now();
            self.pre
                .window_tensor(&placed.canvas, (wx, wy), &mut self.input);
            times.preprocess += t.elapsed();

            let t = Instant::now();
            self.engine.run(&self.input, &mut self.output)?;
            times.inference += t.elapsed();

            let t = Instant::now();
            match self.engine.output_kind() {
                OutputKind::Reconstruction => scoring::anomaly_map_into(
                    &self.input,
                    &self.output,
                    &self.kernel,
                    &mut window,
                    &mut self.scratch,
                )?,
                OutputKind::AnomalyMap => window.data.copy_from_slice(&self.output),
            }
            for y in 0..s {
                let row = (wy as usize + y) * cw + wx as usize;
                for x in 0..s {
                    sum[row + x] += window.data[y * s + x];
                    count[row + x] += 1;
                }
            }
            times.scoring += t.elapsed();
        }
        let t = Instant::now();
        let c = placed.content;
        let mut map = AnomalyMap::zeros(c.width as usize, c.height as usize);
        for y in 0..map.height {
            for x in 0..map.width {
                let i = (c.y as usize + y) * cw + c.x as usize + x;
                map.data[y * map.width + x] = sum[i] / count[i].max(1) as f32;
            }
        }
        let score = map.max();
        times.scoring += t.elapsed();
        Ok(Detection {
            map,
            score,
            windows: placed.windows.len(),
            times,
        })
    }
}
