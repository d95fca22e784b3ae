//! Inference engines: run one MAEDAY graph on one frame with all N masks.
//!
//! An engine is bound to a model and a mask schedule when it is built (shapes are fixed
//! then, so the backend can plan once); after that [`Engine::run`] only moves numbers.
//! tract is the default backend; ONNX Runtime (feature `ort`, with CUDA and TensorRT
//! providers under feature `cuda`) and tract's own CUDA backend (feature `tract-cuda`) sit
//! behind the same trait: [`build`] picks one.

mod api;
mod attention;
mod box_sum;
mod direct_conv;
mod graph;
mod heap;
mod kernels;
mod linear;
#[cfg(feature = "ort")]
mod onnxruntime;
#[cfg(feature = "ort")]
mod ort_graph;
mod permute;
mod resize;
mod rewrite;
mod row_norm;
mod scatter;
mod shares;
mod simd;
#[cfg(test)]
mod test_values;
mod tract;
#[cfg(any(feature = "tract-cuda", feature = "tract-cuda-12"))]
mod tract_cuda;

use anyhow::Result;

pub use self::api::{
    native_f16, Backend, Engine, EngineKind, EngineOptions, GpuSettings, OrtSettings, Precision,
    Provider,
};
pub use self::heap::{keep_freed_buffers, HeapTuning};
pub use self::kernels::{CpuKernels, Family, KernelChoice};
#[cfg(feature = "ort")]
pub use self::onnxruntime::OrtEngine;
#[cfg(feature = "ort")]
pub use self::ort_graph::OrtGraph;
pub use self::tract::{plan_op_counts, TractEngine};

/// Our ops for the CNN pieces tract runs slowly ([`direct_conv`], [`box_sum`], [`resize`]),
/// swapped into a decluttered model before tract optimises it; returns how many
/// convolutions (1x1 ones included: [`direct_conv::use_pointwise`]), box sums and resizes
/// became ours.
pub fn use_cnn_ops(model: &mut tract_core::internal::TypedModel) -> Result<[usize; 3]> {
    Ok([
        direct_conv::use_direct_conv(model)? + direct_conv::use_pointwise(model)?,
        box_sum::use_box_sum(model)?,
        resize::use_resample(model)?,
    ])
}

/// Choose tract's matmul kernel family for this process (see [`kernels`]); engines call it
/// on load, a caller may call it earlier (e.g. before a memory bank's extractor plans).
pub fn select_cpu_kernels(request: CpuKernels) -> Result<&'static KernelChoice> {
    kernels::select(request)
}

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
        Backend::Ort(_) => anyhow::bail!(
            "this build has no ONNX Runtime engine: rebuild with `--features ort` (CPU) or \
             `--features cuda` (CUDA and TensorRT providers)"
        ),
        Backend::TractCuda(gpu) => tract_cuda_or_fallback(model, schedule, opts, gpu),
    }
}

/// tract-cuda, or (with `allow_fallback`) tract on the CPU when no GPU can be used.
fn tract_cuda_or_fallback(
    model: &crate::model::manifest::Model,
    schedule: &crate::model::schedule::MaskSchedule,
    opts: &EngineOptions,
    gpu: &GpuSettings,
) -> Result<Box<dyn Engine>> {
    #[cfg(any(feature = "tract-cuda", feature = "tract-cuda-12"))]
    let refused = match tract_cuda::TractCudaEngine::new(model, schedule, opts) {
        Ok(engine) => return Ok(Box::new(engine)),
        Err(e) => e,
    };
    #[cfg(not(any(feature = "tract-cuda", feature = "tract-cuda-12")))]
    let refused = anyhow::anyhow!(
        "this build has no tract-cuda engine: rebuild with `--features tract-cuda` (CUDA 13 \
         drivers) or `--features tract-cuda-12` (CUDA 12, JetPack 6)"
    );
    if !gpu.allow_fallback {
        return Err(refused.context(
            "engine tract-cuda: no usable GPU (set [model.gpu] allow_fallback = true, or \
             --gpu-allow-fallback, to serve on the CPU instead)",
        ));
    }
    log::warn!("tract-cuda unavailable ({refused:#}): serving on the CPU (allow_fallback)");
    Ok(Box::new(TractEngine::new(model, schedule, opts)?))
}
