//! `[model]` (which model, engine and scorer serve) and `[enroll]` (how `enroll` commands
//! build memory banks).

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use serde::Deserialize;

use super::checks::{MAX_MASKS, MAX_THREADS};
use crate::detect::engine::{Backend, CpuKernels, EngineKind, GpuSettings, OrtSettings, Precision};
use crate::enroll::EnrollSettings;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model folder; default: the bundled model.
    pub path: Option<PathBuf>,
    /// Override the manifest's mask count (fewer masks: faster, noisier).
    pub masks: Option<usize>,
    /// Override the manifest's schedule kind: `random` (the paper) or `balanced` (every
    /// patch visible equally often; N = 8 balanced matches N = 32 random on CPU sites,
    /// models/README.md "How many masks").
    pub schedule: Option<crate::model::schedule::ScheduleKind>,
    /// CPU threads for inference; default: all cores.
    pub threads: Option<usize>,
    #[serde(default)]
    pub precision: Precision,
    /// tract's matmul kernel family: `auto` (measured at load), `tract`, or a family.
    #[serde(default)]
    pub cpu_kernels: CpuKernels,
    /// tract: keep freed activation buffers in the heap between frames (default true):
    /// -6% inference time at N = 32, one thread, and no page faults per frame, for more
    /// resident memory (peak RSS at N = 32: 240 -> 371 MB on the Zen 4 bench). Read at
    /// start; false returns them to the system after every frame.
    pub keep_freed_buffers: Option<bool>,
    /// `tract` (built in, CPU) or `ort` (ONNX Runtime: GPU providers; see `[model.ort]`).
    #[serde(default)]
    pub engine: EngineKind,
    /// ONNX Runtime settings, used with `engine = "ort"`.
    pub ort: Option<OrtSettings>,
    /// `maeday`, `bank` or `ensemble`; default: the ensemble once a memory bank is
    /// enrolled, MAEDAY alone before.
    pub scorer: Option<crate::detect::fuse::ScorerKind>,
    /// The memory bank's feature extractor; default: the shipped EfficientNet-Lite0.
    pub extractor: Option<PathBuf>,
    /// A memory bank folder (from `enroll`) for a model folder that has no `bank/` of its
    /// own (the demo ships one for the bundled model); a bank enrolled into a model slot
    /// on the device takes precedence.
    pub bank: Option<PathBuf>,
    /// tract-cuda settings, used with `engine = "tract-cuda"`.
    pub gpu: Option<GpuSettings>,
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(m) = self.masks {
            // The batch holds all N masked copies of a window: 256 is ~150 MB of input.
            ensure!(
                (1..=MAX_MASKS).contains(&m),
                "model.masks: must be 1 to {MAX_MASKS} (got {m})"
            );
        }
        if let Some(t) = self.threads {
            ensure!(
                (1..=MAX_THREADS).contains(&t),
                "model.threads: must be 1 to {MAX_THREADS} (got {t})"
            );
        }
        self.cpu_kernels.check().context("model.cpu_kernels")?;
        if let Some(o) = &self.ort {
            ensure!(
                !o.providers.is_empty(),
                "model.ort.providers: name at least one of cpu, cuda, tensorrt"
            );
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.engine.backend(self.ort.clone(), self.gpu.clone())
    }
}

/// Enrollment of a memory bank from live good frames (the `enroll` MQTT command; the
/// bank is installed into a model slot, so it needs `[bundles]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollConfig {
    /// Good frames captured when the command names no count.
    #[serde(default = "default_enroll_frames")]
    pub frames: usize,
    #[serde(default)]
    pub seed: u64,
    /// The fraction of patch features the coreset keeps.
    #[serde(default = "default_coreset_fraction")]
    pub coreset_fraction: f64,
    /// Extra views of each good frame: hflip, vflip, rotate, brightness,
    /// dihedral (all 8 flips and quarter turns).
    #[serde(default)]
    pub augment: Vec<String>,
    /// Weights of MAEDAY's and the bank's standardised maps in the ensemble.
    #[serde(default = "default_maeday_weight")]
    pub maeday_weight: f32,
    #[serde(default = "default_bank_weight")]
    pub bank_weight: f32,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        EnrollConfig {
            frames: default_enroll_frames(),
            seed: 0,
            coreset_fraction: default_coreset_fraction(),
            augment: Vec::new(),
            maeday_weight: default_maeday_weight(),
            bank_weight: default_bank_weight(),
        }
    }
}

fn default_enroll_frames() -> usize {
    4
}

// The defaults are EnrollSettings' (the same as the `enroll` and `eval` tools').
fn default_coreset_fraction() -> f64 {
    EnrollSettings::default().coreset_fraction
}

fn default_maeday_weight() -> f32 {
    EnrollSettings::default().weights.maeday
}

fn default_bank_weight() -> f32 {
    EnrollSettings::default().weights.bank
}

impl EnrollConfig {
    pub fn validate(&self) -> Result<()> {
        let e = self;
        ensure!(
            (1..=64).contains(&e.frames),
            "enroll.frames: must be 1 to 64 (got {})",
            e.frames
        );
        ensure!(
            e.coreset_fraction > 0.0 && e.coreset_fraction <= 1.0,
            "enroll.coreset_fraction: must be in (0, 1] (got {})",
            e.coreset_fraction
        );
        ensure!(
            e.maeday_weight.is_finite()
                && e.bank_weight.is_finite()
                && e.maeday_weight >= 0.0
                && e.bank_weight > 0.0,
            "enroll: maeday_weight must be finite and >= 0, bank_weight finite and > 0"
        );
        let settings = e.settings()?;
        // Each augmentation multiplies the bank's rows: no view twice.
        maeday_core::enroll::augment::check(&settings.augment).context("enroll.augment")?;
        Ok(())
    }

    pub fn settings(&self) -> Result<EnrollSettings> {
        Ok(EnrollSettings {
            seed: self.seed,
            coreset_fraction: self.coreset_fraction,
            augment: self
                .augment
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_>>()
                .context("enroll.augment")?,
            weights: crate::detect::fuse::Weights {
                maeday: self.maeday_weight,
                bank: self.bank_weight,
            },
            ..Default::default()
        })
    }
}
