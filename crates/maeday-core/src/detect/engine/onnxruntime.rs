//! The ONNX Runtime backend (feature `ort`; feature `cuda` adds the CUDA and TensorRT
//! execution providers).
//!
//! The library is loaded at run time (`load-dynamic`) from `[model.ort] library` or
//! `$ORT_DYLIB_PATH`: nothing is downloaded at build time. The `onnxruntime` wheel from
//! PyPI ships a CPU one as `onnxruntime/capi/libonnxruntime.so.*`; GPU devices use the
//! library of `onnxruntime-gpu` (x86) or of JetPack's ONNX Runtime build (Jetson).
//!
//! ONNX Runtime quietly falls back to its CPU kernels when a provider cannot be registered,
//! or when a node is unsupported by it. Here every requested provider must register, and
//! with a GPU provider the CPU fallback for nodes is switched off, unless the config allows
//! falling back: a GPU deployment that silently runs on the CPU misses every deadline.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, ensure, Context, Result};
use ort::ep::{ExecutionProvider, ExecutionProviderDispatch};
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use ort::value::TensorRef;

use super::api::{Engine, EngineOptions, OrtSettings, Precision, Provider};
use crate::model::manifest::{Model, OutputKind};
use crate::model::schedule::MaskSchedule;

/// ONNX Runtime allows one environment per process; it lives here once loaded, with the
/// library it was loaded from.
static ENVIRONMENT: OnceLock<
    std::result::Result<(ort::environment::Environment, PathBuf), String>,
> = OnceLock::new();

pub(super) fn environment(dylib: Option<&Path>) -> Result<ort::environment::Environment> {
    let want: Option<PathBuf> = dylib
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
    let (env, loaded) = ENVIRONMENT
        .get_or_init(|| {
            let path = want.clone().ok_or_else(|| {
                "no ONNX Runtime library: set [model.ort] library or ORT_DYLIB_PATH to \
                 libonnxruntime.so"
                    .to_string()
            })?;
            if !path.is_file() {
                return Err(format!(
                    "ONNX Runtime library {} does not exist",
                    path.display()
                ));
            }
            let env = ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
                .with_name("maeday-edge")
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime: {e}"))?;
            Ok((env, path))
        })
        .clone()
        .map_err(|e| anyhow!(e))?;
    if let Some(w) = want.filter(|w| *w != loaded) {
        log::warn!(
            "ONNX Runtime is already loaded from {}; {} is ignored (one library per process)",
            loaded.display(),
            w.display()
        );
    }
    Ok(env)
}

/// Whether the loaded library was built with a provider.
type Probe = fn() -> ort::Result<bool>;

/// Providers compiled into the loaded library, e.g. `["CUDAExecutionProvider", ...]`.
fn available_providers() -> Vec<String> {
    let mut names = Vec::new();
    let candidates: [(&str, Probe); 3] = [
        ("CPUExecutionProvider", ort::ep::CPU::is_available),
        #[cfg(feature = "cuda")]
        ("CUDAExecutionProvider", ort::ep::CUDA::is_available),
        #[cfg(not(feature = "cuda"))]
        ("CUDAExecutionProvider", || Ok(false)),
        #[cfg(feature = "cuda")]
        ("TensorrtExecutionProvider", ort::ep::TensorRT::is_available),
        #[cfg(not(feature = "cuda"))]
        ("TensorrtExecutionProvider", || Ok(false)),
    ];
    for (name, available) in candidates {
        if available().unwrap_or(false) {
            names.push(name.to_string());
        }
    }
    names
}

fn dispatch(p: Provider, s: &OrtSettings) -> Result<ExecutionProviderDispatch> {
    Ok(match p {
        Provider::Cpu => ort::ep::CPU::default().build(),
        #[cfg(feature = "cuda")]
        Provider::Cuda => ort::ep::CUDA::default().with_device_id(s.device_id).build(),
        #[cfg(feature = "cuda")]
        Provider::TensorRt => {
            let mut trt = ort::ep::TensorRT::default()
                .with_device_id(s.device_id)
                .with_fp16(s.tensorrt_fp16);
            if let Some(dir) = &s.tensorrt_cache_dir {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("TensorRT cache dir {}", dir.display()))?;
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display());
            }
            trt.build()
        }
        #[cfg(not(feature = "cuda"))]
        Provider::Cuda | Provider::TensorRt => {
            let _ = s;
            bail!("execution provider {p} needs a build with `--features cuda`")
        }
    })
}

/// Registers the providers in order. Returns the ones that registered.
fn register(
    mut builder: SessionBuilder,
    s: &OrtSettings,
) -> Result<(SessionBuilder, Vec<Provider>)> {
    let mut registered = Vec::new();
    for &p in &s.providers {
        let failure = match dispatch(p, s) {
            Err(e) => e.to_string(),
            Ok(d) => match builder.with_execution_providers([d.error_on_failure()]) {
                Ok(b) => {
                    builder = b;
                    registered.push(p);
                    continue;
                }
                Err(e) => {
                    let why = e.to_string();
                    // The builder (and the options set so far) comes back with the error.
                    builder = e.recover();
                    why
                }
            },
        };
        let why = format!(
            "execution provider {p} cannot be registered: {failure} (this library has: {})",
            available_providers().join(", ")
        );
        if !s.allow_fallback {
            bail!("{why}; set [model.ort] allow_fallback = true to go on without it");
        }
        log::warn!("{why}; falling back (allow_fallback)");
    }
    if registered.is_empty() {
        log::warn!("no execution provider registered: ONNX Runtime runs on its CPU kernels");
    }
    Ok((builder, registered))
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
        settings: &OrtSettings,
    ) -> Result<Self> {
        if opts.precision == Precision::F16 {
            // `auto` picks f16 on ARMv8.2 CPUs; ONNX Runtime runs the exported f32 graph
            // (TensorRT builds fp16 engines itself with tensorrt_fp16).
            log::info!("onnxruntime runs the graph in f32 (precision f16 applies to tract)");
        }
        ensure!(
            !settings.providers.is_empty(),
            "[model.ort] providers is empty"
        );
        let env = environment(settings.library.as_deref())?;
        let threads = opts.threads.max(1);
        let path = model.graph_path();
        let builder = Session::builder(&env)
            .map_err(|e| anyhow!("{e}"))?
            .with_intra_threads(threads)
            .map_err(|e| anyhow!("{e}"))?;
        let (builder, registered) = register(builder, settings)?;
        let gpu = registered.iter().any(|p| *p != Provider::Cpu);
        let mut builder = if gpu && !settings.allow_fallback {
            // Every node on the GPU providers, or a load error naming the node.
            builder
                .with_config_entry("session.disable_cpu_ep_fallback", "1")
                .map_err(|e| anyhow!("{e}"))?
        } else {
            builder
        };
        let session = builder
            .commit_from_file(&path)
            .with_context(|| format!("ONNX Runtime cannot load {}", path.display()))?;
        let names: Vec<String> = registered.iter().map(|p| p.to_string()).collect();
        let mut engine = OrtEngine {
            session,
            kind: model.manifest.output.kind,
            size: model.manifest.input.size,
            masks: schedule.masks,
            keep_k: schedule.keep,
            keep: schedule.indices().to_vec(),
            label: format!(
                "onnxruntime {} f32 x{threads} thread{}",
                if names.is_empty() {
                    "cpu (fallback)".to_string()
                } else {
                    names.join("+")
                },
                if threads == 1 { "" } else { "s" }
            ),
        };
        // Warm up before the engine serves: TensorRT builds (or loads) its engine and CUDA
        // allocates on the first run, which would otherwise land on a camera frame (or,
        // for a bundle, after the swap).
        let started = std::time::Instant::now();
        engine
            .run(&vec![0.0; 3 * engine.size * engine.size], &mut Vec::new())
            .context("warm-up run failed")?;
        log::info!(
            "{}: warm-up {:.0} ms",
            engine.label,
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(engine)
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
