//! What every inference engine implements ([`Engine`]) and the options that choose and tune
//! one (backend, precision, threads, ONNX Runtime providers). The backends import this; the
//! parent module picks one of them.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Deserialize;

use crate::model::manifest::OutputKind;

/// Arithmetic precision of the plan. Read from text (config, CLI) as `auto`, `f32` or `f16`;
/// `auto` is resolved on the spot for this CPU ([`Precision::auto`]), which is also the
/// default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Precision {
    F32,
    /// tract's f32-to-f16 rewrite. Native and fast on ARMv8.2 cores with `asimdhp`;
    /// emulated (3-8x slower) on x86, where it is only useful to measure accuracy.
    F16,
}

impl Precision {
    /// f16 where tract has native fp16 kernels (ARMv8.2 `asimdhp`: Jetson Orin/Xavier),
    /// f32 elsewhere (x86 only emulates f16, several times slower).
    pub fn auto() -> Precision {
        if native_f16() {
            Precision::F16
        } else {
            Precision::F32
        }
    }
}

impl Default for Precision {
    fn default() -> Self {
        Precision::auto()
    }
}

impl TryFrom<String> for Precision {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Precision::auto()),
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            other => bail!("unknown precision {other:?} (expected auto, f32 or f16)"),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        })
    }
}

/// Which inference library runs the graph, by name (`model.engine`, `--engine`); the
/// [`Backend`] adds the library's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    #[default]
    Tract,
    Ort,
    /// tract's CUDA backend (features `tract-cuda`, `tract-cuda-12`).
    #[serde(rename = "tract-cuda")]
    TractCuda,
}

impl std::str::FromStr for EngineKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tract" => Ok(EngineKind::Tract),
            "ort" => Ok(EngineKind::Ort),
            "tract-cuda" => Ok(EngineKind::TractCuda),
            other => bail!("unknown engine {other:?} (expected tract, ort or tract-cuda)"),
        }
    }
}

impl EngineKind {
    /// The backend of this kind, with its settings (`ort` for ONNX Runtime, `gpu` for
    /// tract-cuda; each ignored by the others).
    pub fn backend(self, ort: Option<OrtSettings>, gpu: Option<GpuSettings>) -> Backend {
        match self {
            EngineKind::Tract => Backend::Tract,
            EngineKind::Ort => Backend::Ort(ort.unwrap_or_default()),
            EngineKind::TractCuda => Backend::TractCuda(gpu.unwrap_or_default()),
        }
    }
}

/// Which inference library runs the graph, with its settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Backend {
    /// tract: pure Rust, CPU, f32 or f16. Always built.
    #[default]
    Tract,
    /// ONNX Runtime (feature `ort`, `cuda` for the GPU providers), loaded at run time.
    Ort(OrtSettings),
    /// tract on an NVIDIA GPU (feature `tract-cuda`): the same graph, CUDA loaded at run time.
    TractCuda(GpuSettings),
}

/// `[model.gpu]`: how tract-cuda may behave when no GPU can be used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSettings {
    /// Without a usable CUDA driver and libraries, serve on the CPU (tract) with a warning
    /// instead of refusing to start.
    #[serde(default)]
    pub allow_fallback: bool,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Tract => "tract",
            Backend::Ort(_) => "ort",
            Backend::TractCuda(_) => "tract-cuda",
        }
    }
}

/// An ONNX Runtime execution provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
    #[serde(rename = "tensorrt")]
    TensorRt,
}

impl std::str::FromStr for Provider {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Provider::Cpu),
            "cuda" => Ok(Provider::Cuda),
            "tensorrt" => Ok(Provider::TensorRt),
            other => bail!("unknown execution provider {other:?} (expected cpu, cuda or tensorrt)"),
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::TensorRt => "tensorrt",
        })
    }
}

/// How the ONNX Runtime engine is set up (`[model.ort]` in the daemon config).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrtSettings {
    /// `libonnxruntime.so`; default: `$ORT_DYLIB_PATH`. Nothing is downloaded at build time.
    #[serde(default)]
    pub library: Option<PathBuf>,
    /// Execution providers, most preferred first (e.g. `["tensorrt", "cuda"]`).
    #[serde(default = "cpu_only")]
    pub providers: Vec<Provider>,
    /// When a provider cannot be registered, go on with the next one (and ONNX Runtime's
    /// CPU kernels last) instead of refusing to start. Off by default: ONNX Runtime falls
    /// back silently, and a GPU device that quietly runs on its CPU misses every deadline.
    #[serde(default)]
    pub allow_fallback: bool,
    /// GPU index for CUDA and TensorRT.
    #[serde(default)]
    pub device_id: i32,
    /// TensorRT builds fp16 engines (the GPU counterpart of tract's f16).
    #[serde(default = "yes")]
    pub tensorrt_fp16: bool,
    /// TensorRT engine cache: building an engine takes minutes, loading a cached one
    /// seconds. Keep it on persistent storage (e.g. under /var/lib/maeday-edge).
    #[serde(default)]
    pub tensorrt_cache_dir: Option<PathBuf>,
}

fn cpu_only() -> Vec<Provider> {
    vec![Provider::Cpu]
}

fn yes() -> bool {
    true
}

impl Default for OrtSettings {
    fn default() -> Self {
        OrtSettings {
            library: None,
            providers: cpu_only(),
            allow_fallback: false,
            device_id: 0,
            tensorrt_fp16: true,
            tensorrt_cache_dir: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// CPU threads. Reconstruction graphs split the N masks across threads (one plan
    /// state per thread); anomaly-map graphs reduce over N inside the graph, so they use
    /// tract's own multithreaded matmuls instead.
    pub threads: usize,
    pub precision: Precision,
    /// With f16: keep LayerNorm and Softmax in f32 (the scoring tail always stays f32).
    pub f32_norms: bool,
    pub backend: Backend,
    /// tract's matmul kernel family (`model.cpu_kernels`), chosen once per process.
    pub cpu_kernels: super::kernels::CpuKernels,
    /// tract: keep freed activation buffers in the heap between frames
    /// (`model.keep_freed_buffers`, see [`super::heap`]): faster, more resident memory.
    /// Process-wide and one-way: the first tract engine built with it sets it.
    pub keep_freed_buffers: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            precision: Precision::F32,
            f32_norms: true,
            backend: Backend::Tract,
            cpu_kernels: Default::default(),
            keep_freed_buffers: true,
        }
    }
}

pub trait Engine: Send {
    /// A short description for logs and reports, e.g. `tract f32 x2 threads`.
    fn describe(&self) -> String;
    fn output_kind(&self) -> OutputKind;
    /// Run the graph on one normalised `[3, S, S]` image with every mask of the bound
    /// schedule. `out` is resized and filled with `[N, 3, S, S]` reconstructions or the
    /// `[S, S]` anomaly map; reusing it across frames avoids a large allocation per frame.
    fn run(&mut self, image: &[f32], out: &mut Vec<f32>) -> Result<()>;
}

/// True when tract runs f16 plans on native fp16 kernels: an ARMv8.2 core with `asimdhp`
/// (Jetson Orin/Xavier, Cortex-A55/A75 and later), or `TRACT_CPU_AARCH64_KIND=a55|a75`
/// forcing them (qemu reports the host's CPU). Always false on x86.
pub fn native_f16() -> bool {
    tract_linalg::has_fp16()
}
