//! A plain one-input, one-output graph run by ONNX Runtime on the CPU (feature `ort`).
//!
//! Why: the benchmarks compare tract with ONNX Runtime on the same graph, and the memory
//! bank's extractor is not a MAEDAY graph (no masks), so [`super::OrtEngine`] cannot run it.
//! Serving never uses this: the extractor always runs in tract.

use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};
use ort::session::Session;
use ort::value::TensorRef;

/// One ONNX Runtime session on the CPU provider, with its input shape pinned.
pub struct OrtGraph {
    session: Session,
    shape: Vec<usize>,
}

impl OrtGraph {
    /// Load `path` (ONNX Runtime from `$ORT_DYLIB_PATH`) with `threads` intra-op threads.
    pub fn open(path: &Path, shape: &[usize], threads: usize) -> Result<OrtGraph> {
        let env = super::onnxruntime::environment(None)?;
        let session = Session::builder(&env)
            .map_err(|e| anyhow!("{e}"))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| anyhow!("{e}"))?
            .commit_from_file(path)
            .with_context(|| format!("ONNX Runtime cannot load {}", path.display()))?;
        Ok(OrtGraph {
            session,
            shape: shape.to_vec(),
        })
    }

    /// Run on `input` (the pinned shape, row-major); `out` gets the first output's values.
    pub fn run(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<()> {
        ensure!(
            input.len() == self.shape.iter().product::<usize>(),
            "input has {} values for shape {:?}",
            input.len(),
            self.shape
        );
        let value = TensorRef::from_array_view((self.shape.clone(), input))?;
        let outputs = self.session.run(ort::inputs![value])?;
        let (_, values) = outputs[0].try_extract_tensor::<f32>()?;
        out.clear();
        out.extend_from_slice(values);
        Ok(())
    }
}
