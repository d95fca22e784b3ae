//! The flags every offline tool shares: which model, how frames are placed, which engine,
//! which scorer and banks ([`ModelArgs`]); how banks are built ([`BankArgs`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::bank::store::Augmentation;
use crate::detect::detector::DetectorOptions;
use crate::detect::engine::{
    CpuKernels, EngineKind, EngineOptions, GpuSettings, OrtSettings, Precision, Provider,
};
use crate::detect::fuse::{ScorerKind, Weights};
use crate::detect::preprocess::Fit;
use crate::enroll::EnrollSettings;
use crate::model::manifest::Model;
use crate::model::schedule::ScheduleKind;

#[derive(Args)]
pub struct ModelArgs {
    /// Model folder (`<name>.onnx` + `manifest.toml`); default: the bundled model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// squash (the paper), letterbox, or tile (aspect-preserving overlapping windows).
    #[arg(long, default_value = "squash")]
    fit: Fit,
    /// Override the manifest's mask count N.
    #[arg(long)]
    masks: Option<usize>,
    /// Override the manifest's schedule kind (random or balanced).
    #[arg(long)]
    schedule: Option<ScheduleKind>,
    /// Override the manifest's schedule seed.
    #[arg(long)]
    schedule_seed: Option<u64>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// auto (f16 on CPUs with native fp16, else f32), f32 or f16.
    #[arg(long, default_value = "auto")]
    precision: Precision,
    /// tract's matmul kernels: auto (time each family this CPU has, keep the faster),
    /// tract (its own choice), or a family: avx512, avx2 (x86-64), sve2, neon (aarch64).
    #[arg(long, default_value = "auto")]
    cpu_kernels: CpuKernels,
    /// With f16, also convert LayerNorm and Softmax to f16.
    #[arg(long)]
    f16_norms: bool,
    /// Inference engine: tract (built in), ort (ONNX Runtime; builds with `--features ort`
    /// or `cuda`) or tract-cuda (tract on an NVIDIA GPU; `--features tract-cuda`).
    #[arg(long, default_value = "tract")]
    engine: EngineKind,
    /// ort: libonnxruntime.so (default: $ORT_DYLIB_PATH).
    #[arg(long)]
    ort_library: Option<PathBuf>,
    /// ort: execution providers, most preferred first (repeatable): cpu, cuda, tensorrt.
    #[arg(long = "ort-provider", default_value = "cpu")]
    ort_providers: Vec<Provider>,
    /// ort: go on without a provider that fails to register.
    #[arg(long)]
    ort_allow_fallback: bool,
    /// tract-cuda: serve on the CPU (tract) when no GPU can be used, instead of refusing.
    #[arg(long)]
    gpu_allow_fallback: bool,
    /// ort: TensorRT engine cache folder.
    #[arg(long)]
    tensorrt_cache: Option<PathBuf>,
    /// maeday, maeday-norm, bank, ensemble or ensemble-norm (default: the ensemble when the
    /// model has a memory bank, else MAEDAY alone).
    #[arg(long)]
    scorer: Option<ScorerKind>,
    /// Memory bank folders from `enroll` (repeatable; default: the model's bank/).
    #[arg(long = "bank")]
    banks: Vec<PathBuf>,
    /// The banks' feature extractor (default: models/efficientnet-lite0).
    #[arg(long)]
    extractor: Option<PathBuf>,
}

impl ModelArgs {
    /// The model and how to serve it.
    pub fn load(&self) -> Result<(Model, DetectorOptions)> {
        let dir = self
            .model
            .clone()
            .unwrap_or_else(crate::model::bundled::default_model_dir);
        let model = Model::open(&dir)?;
        let ort = OrtSettings {
            library: self.ort_library.clone(),
            providers: self.ort_providers.clone(),
            allow_fallback: self.ort_allow_fallback,
            tensorrt_cache_dir: self.tensorrt_cache.clone(),
            ..Default::default()
        };
        let mut engine = EngineOptions {
            precision: self.precision,
            f32_norms: !self.f16_norms,
            cpu_kernels: self.cpu_kernels,
            backend: self.engine.backend(
                Some(ort),
                Some(GpuSettings {
                    allow_fallback: self.gpu_allow_fallback,
                }),
            ),
            ..Default::default()
        };
        if let Some(t) = self.threads {
            anyhow::ensure!(t > 0, "--threads must be at least 1");
            engine.threads = t;
        }
        let opts = DetectorOptions {
            fit: self.fit,
            engine,
            masks: self.masks,
            schedule: self.schedule,
            seed: self.schedule_seed,
            scorer: self.scorer,
            banks: self.banks.clone(),
            extractor: self.extractor.clone(),
            keep_parts: false,
        };
        Ok((model, opts))
    }
}

/// How banks are built (defaults: [`EnrollSettings::default`], the same as `[enroll]`).
#[derive(Args)]
pub struct BankArgs {
    /// The fraction of patch features the coreset keeps [default: 0.25].
    #[arg(long)]
    coreset_fraction: Option<f64>,
    /// Extra views of each good image (repeatable): hflip, vflip, rotate, brightness,
    /// dihedral (all 8 flips and quarter turns).
    #[arg(long)]
    augment: Vec<Augmentation>,
    /// Weight of MAEDAY's standardised map in the ensemble [default: 1].
    #[arg(long)]
    maeday_weight: Option<f32>,
    /// Weight of each bank's standardised map in the ensemble [default: 1].
    #[arg(long)]
    bank_weight: Option<f32>,
}

impl BankArgs {
    pub fn settings(&self, seed: u64) -> EnrollSettings {
        let d = EnrollSettings::default();
        EnrollSettings {
            seed,
            coreset_fraction: self.coreset_fraction.unwrap_or(d.coreset_fraction),
            augment: self.augment.clone(),
            weights: Weights {
                maeday: self.maeday_weight.unwrap_or(d.weights.maeday),
                bank: self.bank_weight.unwrap_or(d.weights.bank),
            },
            ..d
        }
    }
}
