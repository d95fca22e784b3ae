//! Inference engines: run one MAEDAY graph on one frame with all N masks.
//!
//! An engine is bound to a model and a mask schedule when it is built (shapes are fixed
//! then, so the backend can plan once); after that [`Engine::run`] only moves numbers.
//! tract is the default backend; ONNX Runtime (feature `ort`, with CUDA and TensorRT
//! providers under feature `cuda`) sits behind the same trait: [`build`] picks one.

mod api;
#[cfg(feature = "ort")]
mod onnxruntime;
mod tract;

#[cfg(not(feature = "ort"))]
use anyhow::bail;
use anyhow::Result;

pub use self::api::{
    native_f16, Backend, Engine, EngineKind, EngineOptions, OrtSettings, Precision, Provider,
};
#[cfg(feature = "ort")]
pub use self::onnxruntime::OrtEngine;
pub use self::tract::TractEngine;

/// The engine the options ask for, bound to `model` and `schedule`, warmed up.
pub fn build(
    model: &crate::model::manifest::Model,
    schedule: &crate::model::schedule::MaskSchedule,
    opts: &EngineOptions,
) -> Result<Box<dyn Engine>> {
    match &opts.backend {
        Backend::Tract => Ok(Box::new(TractEngine::new(model, schedule, opts)?)),
        #[cfg(feature = "ort")]
        Backend::Ort(settings) => Ok(Box::new(OrtEngine::new(model, schedule, opts, settings)?)),
        #[cfg(not(feature = "ort"))]
        Backend::Ort(_) => bail!(
            "this build has no ONNX Runtime engine: rebuild with `--features ort` (CPU) or \
             `--features cuda` (CUDA and TensorRT providers)"
        ),
    }
}
