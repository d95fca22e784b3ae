//! The tract backend.

use anyhow::{anyhow, ensure, Context, Result};
use tract_onnx::prelude::*;

use super::api::{native_f16, Engine, EngineOptions, Precision};
use super::graph::{guarded, Graph};
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
        // Before anything plans: tract fixes its kernel family at the first plan.
        let kernels = super::kernels::select(opts.cpu_kernels).context("model.cpu_kernels")?;
        attention_on_the_calling_thread()?;
        if opts.keep_freed_buffers {
            super::heap::keep_freed_buffers();
        }
        let graph = Graph::load(model, schedule, opts)?;

        let threads = opts.threads.max(1);
        let split = m.output.kind == OutputKind::Reconstruction && threads > 1;
        let workers_n = if split {
            threads.min(schedule.masks)
        } else {
            1
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
        let label = format!("{}, {kernels}", describe(opts, threads));
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

/// tract runs a fused attention (an ONNX `Attention` node, see `models/workstation/
/// attention.py`) one head per task on rayon's global pool, i.e. on every core. Our workers
/// already split the masks across `threads` threads, which is also the user's CPU budget:
/// each worker computes its heads itself. (Measured on 2 cores, 32 masks: 2 workers with
/// rayon 338-343 ms a frame, on their own threads 291-295 ms.) Process-wide, like the
/// kernel choice; fails if this tract no longer has the knob, rather than silently
/// oversubscribing.
fn attention_on_the_calling_thread() -> Result<()> {
    ensure!(
        tract_core::knobs::set_str("TRACT_FLASH_SDPA_ST", "true"),
        "this tract has no TRACT_FLASH_SDPA_ST knob: cannot keep attention on our threads"
    );
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
                let p = plan(graph, masks)?;
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

/// The optimised CPU plan for a batch of `masks` masks.
fn plan(graph: &Graph, masks: usize) -> Result<Plan> {
    let typed = optimised(graph, masks)?;
    graph.check_output(&typed, masks)?;
    typed.into_runnable()
}

/// tract's optimised model with our linear layers in place of its matmuls where they run
/// fast (see [`super::linear`]; `MAEDAY_TRACT_LINEAR=tract` keeps tract's, a benchmark
/// switch), our attention op in place of its flash attention (see
/// [`super::attention`]), our row normalisation in place of its `RmsNorm` and the mean
/// subtraction before it (see [`super::row_norm`]), and one copy for each pair of axis
/// moves (see [`super::permute`]), and our scatter (see [`super::scatter`]).
/// `MAEDAY_TRACT_FLASH_ATTENTION=1` keeps tract's own
/// attention: a switch for side-by-side benchmarks (`benches/before-after.sh`), not a
/// setting.
fn optimised(graph: &Graph, masks: usize) -> Result<TypedModel> {
    let mut typed = graph.typed(masks)?.into_decluttered()?;
    let n = super::linear::use_linear(&mut typed)?;
    log::debug!("{n} linear layers now run as ours");
    let mut typed = typed.into_optimized().context("optimisation failed")?;
    if std::env::var_os("MAEDAY_TRACT_FLASH_ATTENTION").is_none_or(|v| v != "1") {
        let n = super::attention::use_head_attention(&mut typed)?;
        log::debug!("{n} flash-attention nodes now run as our head attention");
    }
    let n = super::row_norm::use_row_rms(&mut typed)?;
    log::debug!("{n} RmsNorm nodes now run as our row normalisation");
    let n = super::permute::fuse_moves(&mut typed)?;
    log::debug!("{n} pairs of axis moves now run as one permutation");
    let n = super::scatter::use_scatter(&mut typed)?;
    log::debug!("{n} scatters now run as ours");
    Ok(typed)
}

/// How many nodes of each op the optimised CPU plan for the schedule's batch has (e.g.
/// `OptMatMul: 98`): how the tests check that an exported graph optimises the same way on
/// every architecture (`tests/reference.rs`, run under qemu for aarch64 too).
pub fn plan_op_counts(
    model: &Model,
    schedule: &MaskSchedule,
    opts: &EngineOptions,
) -> Result<std::collections::BTreeMap<String, usize>> {
    let graph = Graph::load(model, schedule, opts)?;
    let typed = optimised(&graph, schedule.masks)?;
    let mut counts = std::collections::BTreeMap::new();
    for node in typed.nodes() {
        *counts.entry(node.op().name().into_owned()).or_insert(0) += 1;
    }
    Ok(counts)
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

impl Engine for TractEngine {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn output_kind(&self) -> OutputKind {
        self.kind
    }

    fn run(&mut self, image: &[f32], out: &mut Vec<f32>) -> Result<()> {
        let mut poisoned = self.poisoned;
        let r = guarded(&mut poisoned, "tract", || self.run_inner(image, out));
        self.poisoned = poisoned;
        r
    }
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
