//! tract on an NVIDIA GPU (features `tract-cuda`, `tract-cuda-12`): the same graph the CPU
//! engine runs ([`super::graph`]), handed to tract-cuda's runtime, which moves the
//! supported operators to the GPU (cuBLAS matmuls, cuDNN, NVRTC kernels) and keeps the rest
//! on the CPU.
//!
//! Nothing CUDA is needed to build: the driver and libraries are loaded at run time, and a
//! machine without them is refused here with tract-cuda's own diagnosis (which library is
//! missing, which driver version was found), before any graph is loaded. All N masks run as
//! one batch; the engine runs one warm-up frame before it serves.

use anyhow::{anyhow, ensure, Context, Result};
use tract_core::runtime::{runtime_for_name, State};
use tract_onnx::prelude::*;

use super::api::{Engine, EngineOptions};
use super::graph::{guarded, Graph};
use crate::model::manifest::{Model, OutputKind};
use crate::model::schedule::MaskSchedule;

pub struct TractCudaEngine {
    kind: OutputKind,
    size: usize,
    masks: usize,
    state: Box<dyn State>,
    keep: Tensor,
    /// Whether the graph declares `image` before `keep` (inputs go in declared order).
    image_first: bool,
    input_type: DatumType,
    label: String,
    /// Set when tract panicked: its state may be inconsistent, so the engine refuses work.
    poisoned: bool,
}

impl TractCudaEngine {
    /// Check the GPU stack, load and check the graph, let tract-cuda plan it, warm up.
    pub fn new(model: &Model, schedule: &MaskSchedule, opts: &EngineOptions) -> Result<Self> {
        tract_cuda::utils::ensure_cuda_runtime_dependencies(
            "tract-cuda needs an NVIDIA driver and the CUDA libraries (cudart, NVRTC, cuBLAS, \
             cuDNN) on the loader path",
        )
        .map_err(|e| anyhow!("{e:#}"))?;
        let runtime = runtime_for_name("cuda")
            .map_err(|e| anyhow!("{e:#}"))?
            .context("tract-cuda's runtime is not registered in this build")?;
        let m = &model.manifest;
        let path = model.graph_path();
        let graph = Graph::load(model, schedule, opts)?;
        let typed = graph
            .typed(schedule.masks)?
            .into_decluttered()
            .context("graph simplification failed")?;
        graph.check_output(&typed, schedule.masks)?;
        let input_type = typed.input_fact(graph.image_ix)?.datum_type;
        let runnable = runtime
            .prepare(typed)
            .map_err(|e| anyhow!("{e:#}"))
            .with_context(|| format!("tract-cuda cannot prepare graph {}", path.display()))?;
        let state = runnable.spawn().map_err(|e| anyhow!("{e:#}"))?;
        let keep = Tensor::from_shape(&[schedule.masks, schedule.keep], schedule.indices())?;
        let mut engine = TractCudaEngine {
            kind: m.output.kind,
            size: m.input.size,
            masks: schedule.masks,
            state,
            keep,
            image_first: graph.image_ix < graph.keep_ix,
            input_type,
            label: format!("tract-cuda {} on {}", opts.precision, gpu_name()),
            poisoned: false,
        };
        let size = m.input.size;
        engine
            .run(&vec![0.0; 3 * size * size], &mut Vec::new())
            .with_context(|| format!("graph {} fails on the GPU", path.display()))?;
        Ok(engine)
    }

    fn run_inner(&mut self, image: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let s = self.size;
        ensure!(
            image.len() == 3 * s * s,
            "image tensor has {} values, expected {}",
            image.len(),
            3 * s * s
        );
        let mut input = Tensor::from_shape(&[1, 3, s, s], image)?;
        if self.input_type != DatumType::F32 {
            input = input.cast_to_dt(self.input_type)?.into_owned();
        }
        let (image, keep) = (input.into_tvalue(), self.keep.clone().into_tvalue());
        let inputs = if self.image_first {
            tvec![image, keep]
        } else {
            tvec![keep, image]
        };
        let result = self
            .state
            .run(inputs)
            .map_err(|e| anyhow!("{e:#}"))
            .context("tract-cuda failed to run the graph")?;
        let tensor = result[0].clone().into_tensor();
        let tensor = if tensor.datum_type() == DatumType::F32 {
            tensor
        } else {
            tensor.cast_to::<f32>()?.into_owned()
        };
        let want = match self.kind {
            OutputKind::Reconstruction => self.masks * 3 * s * s,
            OutputKind::AnomalyMap => s * s,
        };
        let view = tensor.to_plain_array_view::<f32>()?;
        let values = view
            .as_slice()
            .ok_or_else(|| anyhow!("the GPU's output is not contiguous"))?;
        ensure!(
            values.len() == want,
            "the GPU returned {} values, expected {want}",
            values.len()
        );
        out.clear();
        out.extend_from_slice(values);
        Ok(())
    }
}

/// The GPU's name and compute capability, for the engine description (and `status`).
fn gpu_name() -> String {
    tract_cuda::with_cuda_stream(|stream| {
        let ctx = stream.context();
        let name = ctx.name().unwrap_or_else(|_| "an NVIDIA GPU".into());
        Ok(match ctx.compute_capability() {
            Ok((major, minor)) => format!("{name} (sm_{major}{minor})"),
            Err(_) => name,
        })
    })
    .unwrap_or_else(|_| "an NVIDIA GPU".into())
}

impl Engine for TractCudaEngine {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn output_kind(&self) -> OutputKind {
        self.kind
    }

    fn run(&mut self, image: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let mut poisoned = self.poisoned;
        let r = guarded(&mut poisoned, "tract-cuda", || self.run_inner(image, out));
        self.poisoned = poisoned;
        r
    }
}
