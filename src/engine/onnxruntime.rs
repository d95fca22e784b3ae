//! The ONNX Runtime backend (feature `ort`), CPU execution provider.
//!
//! The library is loaded at run time (`load-dynamic`) from `ORT_DYLIB_PATH` or an
//! explicit path; the `onnxruntime` wheel from PyPI ships one as
//! `onnxruntime/capi/libonnxruntime.so.*`. Today this backend serves the side-by-side
//! benchmark and parity tests; GPU execution providers come later behind it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, ensure, Context, Result};
use ort::session::Session;
use ort::value::TensorRef;

use super::{Engine, EngineOptions, Precision};
use crate::manifest::{Model, OutputKind};
use crate::schedule::MaskSchedule;

/// ONNX Runtime allows one environment per process; it lives here once loaded.
static ENVIRONMENT: OnceLock<std::result::Result<ort::environment::Environment, String>> =
    OnceLock::new();

fn environment(dylib: Option<&Path>) -> Result<ort::environment::Environment> {
    ENVIRONMENT
        .get_or_init(|| {
            let path: PathBuf = match dylib {
                Some(p) => p.to_path_buf(),
                None => std::env::var_os("ORT_DYLIB_PATH")
                    .map(PathBuf::from)
                    .ok_or_else(|| "set ORT_DYLIB_PATH to libonnxruntime.so".to_string())?,
            };
            ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
                .with_name("maeday-edge")
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

pub struct OrtEngine {
    session: Session,
    kind: OutputKind,
    size: usize,
    masks: usize,
    keep_k: usize,
    keep: Vec<i64>,
    label: String,
}

impl OrtEngine {
    pub fn new(
        model: &Model,
        schedule: &MaskSchedule,
        opts: &EngineOptions,
        dylib: Option<&Path>,
    ) -> Result<Self> {
        ensure!(
            opts.precision == Precision::F32,
            "the ort backend runs the graph as exported (f32)"
        );
        let env = environment(dylib)?;
        let threads = opts.threads.max(1);
        let path = model.graph_path();
        let session = Session::builder(&env)
            .map_err(|e| anyhow!("{e}"))?
            .with_intra_threads(threads)
            .map_err(|e| anyhow!("{e}"))?
            .commit_from_file(&path)
            .with_context(|| format!("ONNX Runtime cannot load {}", path.display()))?;
        Ok(OrtEngine {
            session,
            kind: model.manifest.output.kind,
            size: model.manifest.input.size,
            masks: schedule.masks,
            keep_k: schedule.keep,
            keep: schedule.indices().to_vec(),
            label: format!(
                "onnxruntime cpu f32 x{threads} thread{}",
                if threads == 1 { "" } else { "s" }
            ),
        })
    }
}

impl Engine for OrtEngine {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn output_kind(&self) -> OutputKind {
        self.kind
    }

    fn run(&mut self, image: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let s = self.size;
        ensure!(
            image.len() == 3 * s * s,
            "image tensor has {} values, expected {}",
            image.len(),
            3 * s * s
        );
        let image = TensorRef::from_array_view(([1usize, 3, s, s], image))?;
        let keep = TensorRef::from_array_view(([self.masks, self.keep_k], &self.keep[..]))?;
        let outputs = self
            .session
            .run(ort::inputs!["image" => image, "keep" => keep])?;
        let (_, values) = outputs[0].try_extract_tensor::<f32>()?;
        out.clear();
        out.extend_from_slice(values);
        Ok(())
    }
}
