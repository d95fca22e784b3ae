//! Inference engines: run one MAEDAY graph on one frame with all N masks.
//!
//! An engine is bound to a model and a mask schedule when it is built (shapes are fixed
//! then, so the backend can plan once); after that [`Engine::run`] only moves numbers.
//! tract is the backend today; an ONNX Runtime one will sit behind the same trait.

#[cfg(feature = "ort")]
mod onnxruntime;
mod tract;

use anyhow::{bail, Result};

#[cfg(feature = "ort")]
pub use self::onnxruntime::OrtEngine;
pub use self::tract::{native_f16, TractEngine};
use crate::manifest::OutputKind;

/// Arithmetic precision of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// CPU threads. Reconstruction graphs split the N masks across threads (one plan
    /// state per thread); anomaly-map graphs reduce over N inside the graph, so they use
    /// tract's own multithreaded matmuls instead.
    pub threads: usize,
    pub precision: Precision,
    /// With f16: keep LayerNorm and Softmax in f32 (the scoring tail always stays f32).
    pub f32_norms: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            precision: Precision::F32,
            f32_norms: true,
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
