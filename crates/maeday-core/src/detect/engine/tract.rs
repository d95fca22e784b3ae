//! The tract backend.

use anyhow::{anyhow, bail, ensure, Context, Result};
use tract_core::transform::{build_float_translator, NodeFilter};
use tract_onnx::pb::{type_proto, ModelProto};
use tract_onnx::prelude::*;

use super::api::{native_f16, Engine, EngineOptions, Precision};
use crate::model::manifest::{Model, OutputKind};
use crate::model::schedule::MaskSchedule;

type Plan = Arc<TypedRunnableModel>;

/// A slice of the masks run by one worker, with its own plan state (reused every frame).
struct Worker {
    state: TypedSimpleState,
    keep: Tensor,
    masks: usize,
    /// Whether the graph declares `image` before `keep` (inputs go in declared order).
    image_first: bool,
}

pub struct TractEngine {
    kind: OutputKind,
    size: usize,
    workers: Vec<Worker>,
    input_type: DatumType,
    /// tract's own thread pool, used only when a single worker runs (anomaly-map graphs).
    pool: Option<tract_linalg::multithread::Executor>,
    label: String,
    /// Set when tract panicked: its state may be inconsistent, so the engine refuses work.
    poisoned: bool,
}

impl TractEngine {
    /// Load, check against the manifest, pin shapes and optimise: everything slow happens
    /// here, before the first frame.
    pub fn new(model: &Model, schedule: &MaskSchedule, opts: &EngineOptions) -> Result<Self> {
        let m = &model.manifest;
        let path = model.graph_path();
        let size = m.input.size;
        ensure!(
            schedule.patches == m.input.patches(),
            "the schedule covers {} patches but the model has {}",
            schedule.patches,
            m.input.patches()
        );
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_path(&path)
            .with_context(|| format!("cannot parse ONNX graph {}", path.display()))?;
        let (image_ix, keep_ix) = check_contract(&proto, model, schedule.keep)
            .with_context(|| format!("graph {} does not match its manifest", path.display()))?;

        let threads = opts.threads.max(1);
        let split = m.output.kind == OutputKind::Reconstruction && threads > 1;
        let workers_n = if split {
            threads.min(schedule.masks)
        } else {
            1
        };
        let graph = Graph {
            onnx: &onnx,
            proto: &proto,
            image_ix,
            keep_ix,
            model,
            keep: schedule.keep,
            opts,
        };
        let (workers, input_type) = build_workers(&graph, schedule, workers_n)
            .with_context(|| format!("cannot prepare graph {} for tract", path.display()))?;
        let pool = (!split && threads > 1)
            .then(|| tract_linalg::multithread::Executor::multithread(threads));
        if opts.precision == Precision::F16 && !native_f16() {
            log::warn!(
                "f16 requested but this CPU has no native fp16 arithmetic (asimdhp): tract \
                 emulates it, several times slower than f32; use f32 here"
            );
        }
        let label = describe(opts, threads);
        let mut engine = TractEngine {
            kind: m.output.kind,
            size,
            workers,
            input_type,
            pool,
            label,
            poisoned: false,
        };
        // One warm-up frame: proves the graph runs with the manifest's shapes before the
        // first real frame (and pays the first-run costs here, not on a camera frame).
        engine
            .run(&vec![0.0; 3 * size * size], &mut Vec::new())
            .with_context(|| format!("graph {} fails on the manifest's shapes", path.display()))?;
        Ok(engine)
    }
}

/// Check the graph's declared inputs/outputs against the contract and the manifest;
/// returns the positions of `image` and `keep` among the graph inputs.
fn check_contract(proto: &ModelProto, model: &Model, keep: usize) -> Result<(usize, usize)> {
    let m = &model.manifest;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("the ONNX file has no graph"))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .collect();
    let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    let find = |n: &str| {
        names.iter().position(|x| *x == n).ok_or_else(|| {
            anyhow!("the graph has no input named {n:?} (its inputs are {names:?}); see models/README.md")
        })
    };
    let (image_ix, keep_ix) = (find("image")?, find("keep")?);
    ensure!(
        inputs.len() == 2,
        "the graph must have exactly the inputs image and keep, not {names:?}"
    );
    let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let want = m.output.kind.tensor_name();
    ensure!(
        outputs == [want],
        "the manifest says output.kind = {want:?} but the graph outputs {outputs:?}"
    );
    check_metadata(proto, model, keep)?;
    let s = m.input.size as i64;
    check_dims(
        inputs[image_ix],
        "image",
        &[Some(1), Some(3), Some(s), Some(s)],
    )?;
    check_dims(inputs[keep_ix], "keep", &[None, Some(keep as i64)])?;
    Ok((image_ix, keep_ix))
}

/// Graphs from our exporter carry the contract in their metadata (`maeday.*`); a patch
/// grid that differs from the manifest's is only visible there.
fn check_metadata(proto: &ModelProto, model: &Model, keep: usize) -> Result<()> {
    let m = &model.manifest;
    let expected = [
        ("maeday.input_size", m.input.size.to_string(), "input.size"),
        (
            "maeday.patch_size",
            m.input.patch_size.to_string(),
            "input.patch_size",
        ),
        ("maeday.keep", keep.to_string(), "masks.keep"),
        (
            "maeday.output",
            m.output.kind.tensor_name().to_string(),
            "output.kind",
        ),
    ];
    for prop in &proto.metadata_props {
        if let Some((_, want, field)) = expected.iter().find(|(k, _, _)| *k == prop.key) {
            ensure!(
                prop.value == *want,
                "the graph was exported with {} = {} but the manifest says {field} = {want}",
                prop.key.trim_start_matches("maeday."),
                prop.value
            );
        }
    }
    if !proto
        .metadata_props
        .iter()
        .any(|p| p.key == "maeday.patch_size")
    {
        log::warn!("the graph carries no maeday.* metadata: its patch grid cannot be checked");
    }
    Ok(())
}

/// Compare the declared dims (symbolic ones match anything) with what the manifest implies.
fn check_dims(
    input: &tract_onnx::pb::ValueInfoProto,
    name: &str,
    want: &[Option<i64>],
) -> Result<()> {
    let Some(type_proto::Value::TensorType(t)) =
        input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        bail!("input {name:?} is not a tensor");
    };
    let Some(shape) = t.shape.as_ref() else {
        return Ok(());
    };
    let dims: Vec<Option<i64>> = shape
        .dim
        .iter()
        .map(|d| match d.value {
            Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
            _ => None,
        })
        .collect();
    ensure!(
        dims.len() == want.len(),
        "input {name:?} has rank {} but the contract needs rank {}",
        dims.len(),
        want.len()
    );
    for (i, (have, want)) in dims.iter().zip(want).enumerate() {
        if let (Some(h), Some(w)) = (have, want) {
            ensure!(
                h == w,
                "input {name:?} dim {i} is {h} in the graph but {w} by the manifest"
            );
        }
    }
    Ok(())
}

/// `workers_n` workers that split the schedule's masks as evenly as possible (at most two
/// distinct batch sizes, so at most two plans), and the graph's image input type.
fn build_workers(
    graph: &Graph,
    schedule: &MaskSchedule,
    workers_n: usize,
) -> Result<(Vec<Worker>, DatumType)> {
    let mut plans: Vec<(usize, Plan)> = Vec::new();
    let mut workers = Vec::with_capacity(workers_n);
    let mut first = 0;
    for w in 0..workers_n {
        let masks = schedule.masks / workers_n + usize::from(w < schedule.masks % workers_n);
        let plan = match plans.iter().find(|(n, _)| *n == masks) {
            Some((_, p)) => p.clone(),
            None => {
                let p = graph.plan(masks)?;
                plans.push((masks, p.clone()));
                p
            }
        };
        let keep = Tensor::from_shape(
            &[masks, schedule.keep],
            &schedule.indices()[first * schedule.keep..(first + masks) * schedule.keep],
        )?;
        first += masks;
        workers.push(Worker {
            state: TypedSimpleState::new(&plan)?,
            keep,
            masks,
            image_first: graph.image_ix < graph.keep_ix,
        });
    }
    let input_type = plans[0].1.model().input_fact(graph.image_ix)?.datum_type;
    Ok((workers, input_type))
}

/// E.g. `tract f16 native (norms f32) x4 threads`.
fn describe(opts: &EngineOptions, threads: usize) -> String {
    format!(
        "tract {}{} x{threads} thread{}",
        opts.precision,
        match (opts.precision, native_f16(), opts.f32_norms) {
            (Precision::F32, _, _) => "",
            (Precision::F16, true, true) => " native (norms f32)",
            (Precision::F16, true, false) => " native",
            (Precision::F16, false, true) => " emulated (norms f32)",
            (Precision::F16, false, false) => " emulated",
        },
        if threads == 1 { "" } else { "s" }
    )
}

/// One parsed ONNX graph and where its inputs are: plans for several batch sizes are
/// made from it.
struct Graph<'a> {
    onnx: &'a tract_onnx::Onnx,
    proto: &'a ModelProto,
    image_ix: usize,
    keep_ix: usize,
    model: &'a Model,
    /// Patches each mask keeps.
    keep: usize,
    opts: &'a EngineOptions,
}

impl Graph<'_> {
    /// The optimised plan for a batch of `masks` masks, its output shape checked.
    fn plan(&self, masks: usize) -> Result<Plan> {
        let Graph {
            onnx,
            proto,
            image_ix,
            keep_ix,
            model,
            keep,
            opts,
        } = *self;
        let s = model.manifest.input.size;
        let mut inference = onnx.model_for_proto_model(proto)?;
        inference.set_input_fact(image_ix, f32::fact([1, 3, s, s]).into())?;
        inference.set_input_fact(keep_ix, i64::fact([masks, keep]).into())?;
        let mut typed = inference.into_typed().context("shape analysis failed")?;
        if opts.precision == Precision::F16 {
            // The scoring tail (named /head/ by the exporter) always stays f32: in f16 its
            // depthwise Gaussian conv dominated the frame on x86 and loses precision.
            let mut exclude = vec!["/head/".to_string()];
            if opts.f32_norms {
                exclude.extend(["norm".to_string(), "Softmax".to_string()]);
            }
            let filter = NodeFilter {
                exclude: Some(exclude),
                ..Default::default()
            };
            build_float_translator(DatumType::F32, DatumType::F16, filter).transform(&mut typed)?;
        }
        let typed = typed.into_optimized().context("optimisation failed")?;
        let out = typed
            .output_fact(0)?
            .shape
            .as_concrete()
            .map(|d| d.to_vec());
        let want = match model.manifest.output.kind {
            OutputKind::Reconstruction => vec![masks, 3, s, s],
            OutputKind::AnomalyMap => vec![1, 1, s, s],
        };
        ensure!(
            out.as_deref() == Some(&want[..]),
            "the graph outputs shape {out:?}, the contract needs {want:?}"
        );
        typed.into_runnable()
    }
}

impl Engine for TractEngine {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn output_kind(&self) -> OutputKind {
        self.kind
    }

    fn run(&mut self, image: &[f32], out: &mut Vec<f32>) -> Result<()> {
        ensure!(
            !self.poisoned,
            "the engine failed on an earlier frame; reload the model"
        );
        // tract reports most problems as errors but can panic on a graph that disagrees
        // with its inputs (e.g. patch indices out of range): never let that take the
        // process down.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_inner(image, out)));
        match result {
            Ok(r) => r,
            Err(payload) => {
                self.poisoned = true;
                bail!("tract panicked: {}", panic_message(&payload))
            }
        }
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl TractEngine {
    fn run_inner(&mut self, image: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let s = self.size;
        let chw = 3 * s * s;
        ensure!(
            image.len() == chw,
            "image tensor has {} values, expected {chw}",
            image.len()
        );
        let mut input = Tensor::from_shape(&[1, 3, s, s], image)?;
        if self.input_type != DatumType::F32 {
            input = input.cast_to_dt(self.input_type)?.into_owned();
        }
        let per_mask = match self.kind {
            OutputKind::Reconstruction => chw,
            OutputKind::AnomalyMap => s * s,
        };
        let total: usize = match self.kind {
            OutputKind::Reconstruction => self.workers.iter().map(|w| w.masks).sum::<usize>() * chw,
            OutputKind::AnomalyMap => s * s,
        };
        out.resize(total, 0.0);
        if let [worker] = &mut self.workers[..] {
            return match &self.pool {
                Some(pool) => {
                    tract_linalg::multithread::multithread_tract_scope(pool.clone(), || {
                        run_worker(worker, &input, out)
                    })
                }
                None => run_worker(worker, &input, out),
            };
        }
        // One scoped thread per worker, each writing its own slice of `out`.
        std::thread::scope(|scope| {
            let mut rest = &mut out[..];
            let mut handles = Vec::with_capacity(self.workers.len());
            for worker in self.workers.iter_mut() {
                let (mine, tail) = rest.split_at_mut(worker.masks * per_mask);
                rest = tail;
                let input = &input;
                handles.push(scope.spawn(move || run_worker(worker, input, mine)));
            }
            // Join every thread before looking at any result.
            let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
            results.into_iter().try_for_each(|r| match r {
                Ok(r) => r,
                Err(payload) => std::panic::resume_unwind(payload),
            })
        })
    }
}

fn run_worker(worker: &mut Worker, image: &Tensor, out: &mut [f32]) -> Result<()> {
    let (image, keep) = (
        image.clone().into_tvalue(),
        worker.keep.clone().into_tvalue(),
    );
    let inputs = if worker.image_first {
        tvec![image, keep]
    } else {
        tvec![keep, image]
    };
    let result = worker
        .state
        .run(inputs)
        .context("tract failed to run the graph")?;
    let tensor = result[0].clone().into_tensor();
    let tensor = if tensor.datum_type() == DatumType::F32 {
        tensor
    } else {
        tensor.cast_to::<f32>()?.into_owned()
    };
    let view = tensor.to_plain_array_view::<f32>()?;
    let values = view
        .as_slice()
        .ok_or_else(|| anyhow!("graph output is not contiguous"))?;
    ensure!(
        values.len() == out.len(),
        "graph output has {} values, expected {}",
        values.len(),
        out.len()
    );
    out.copy_from_slice(values);
    Ok(())
}
