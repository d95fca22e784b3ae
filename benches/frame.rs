//! Per-frame cost of MAEDAY scoring, measured side by side in one run:
//! - tract vs ONNX Runtime (feature `ort`) on the same graph, same thread count, at 1 and
//!   all threads, N = 8 and 32, with the share of the FMA peak each reaches; on the shipped
//!   graph and (`MAEDAY_BENCH_PLAIN_MODEL`) the same weights without the export rewrites;
//!   `flash`: the shipped graph with tract's own flash attention instead of ours;
//!   `matmul`: the shipped graph with tract's own matmuls instead of our linear layers;
//! - tract's kernel family is one per process (`MAEDAY_BENCH_CPU_KERNELS`, default `auto`):
//!   `benches/run.sh` runs one pass with tract's own choice and one with `auto`;
//! - the two output kinds (reconstruction + Rust scoring vs anomaly map in the graph);
//! - pre-processing and scoring as a fraction of model time.
//!
//! `benches/run.sh` prepares the anomaly-map twin of the default model and the
//! ONNX Runtime library, then runs this with `--features ort`. At the end a table of
//! ratios is printed from criterion's estimates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};

use maeday_edge::detect::detector::{Detector, DetectorOptions};
use maeday_edge::detect::engine::{
    select_cpu_kernels, CpuKernels, Engine, EngineOptions, Precision, TractEngine,
};
use maeday_edge::detect::eq1::{anomaly_map_into, gaussian_kernel, AnomalyMap};
use maeday_edge::detect::preprocess::{load_image, Fit, Preprocessor};
use maeday_edge::model::manifest::Model;
use maeday_edge::model::schedule::{MaskSchedule, ScheduleKind};

const MASKS: [usize; 2] = [8, 32];

/// GFLOP per mask of the default architecture (31.5 GFLOP per frame at N = 32: 28.2 in the
/// linear layers, 3.3 in attention; `../shared/notes/inference-findings.md`).
const GFLOP_PER_MASK: f64 = 31.5 / 32.0;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn recon_model() -> Model {
    let dir = std::env::var_os("MAEDAY_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models/default"));
    Model::open(dir).expect("bench model")
}

/// The graphs compared: the shipped one, and the same weights exported without the exact
/// speed rewrites (`MAEDAY_BENCH_PLAIN_MODEL`, `export --plain`) or with every rewrite but
/// the fused `Attention` nodes (`MAEDAY_BENCH_UNFUSED_MODEL`, `export --unfused-attention`);
/// and `flash` and `matmul`, the shipped graph run with tract's flash-attention op or its
/// matmuls (see [`tract_engine`]).
fn graphs() -> Vec<(&'static str, Model)> {
    let mut g = vec![
        ("default", recon_model()),
        ("flash", recon_model()),
        ("matmul", recon_model()),
    ];
    for (name, var) in [
        ("plain", "MAEDAY_BENCH_PLAIN_MODEL"),
        ("unfused", "MAEDAY_BENCH_UNFUSED_MODEL"),
    ] {
        if let Some(dir) = std::env::var_os(var) {
            g.push((name, Model::open(PathBuf::from(dir)).expect(var)));
        }
    }
    g
}

fn map_model() -> Option<Model> {
    let dir = std::env::var_os("MAEDAY_BENCH_MAP_MODEL").map(PathBuf::from)?;
    Some(Model::open(dir).expect("MAEDAY_BENCH_MAP_MODEL is not a model folder"))
}

fn threads() -> usize {
    std::env::var("MAEDAY_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// 1 and all threads.
fn thread_counts() -> Vec<usize> {
    let mut t = vec![1, threads()];
    t.dedup();
    t
}

/// tract's kernel family for this run (`MAEDAY_BENCH_CPU_KERNELS`: auto, tract or a
/// family; one per process), chosen before anything plans; e.g. `tract-avx2`.
fn tract_label() -> &'static str {
    static LABEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LABEL.get_or_init(|| {
        let request: CpuKernels = std::env::var("MAEDAY_BENCH_CPU_KERNELS")
            .unwrap_or_else(|_| "auto".into())
            .parse()
            .expect("MAEDAY_BENCH_CPU_KERNELS");
        let choice = select_cpu_kernels(request).expect("kernel family");
        println!("tract matmul kernels: {choice:#}");
        format!("tract-{}", choice.family)
    })
}

/// The tract engine for graph `g`: for `flash`, planned with tract's own flash-attention
/// op (`MAEDAY_TRACT_FLASH_ATTENTION=1` while it plans), for `matmul` with tract's own
/// matmuls (`MAEDAY_TRACT_LINEAR=tract`), else with ours.
fn tract_engine(g: &str, model: &Model, s: &MaskSchedule, opts: &EngineOptions) -> TractEngine {
    let switch = match g {
        "flash" => Some(("MAEDAY_TRACT_FLASH_ATTENTION", "1")),
        "matmul" => Some(("MAEDAY_TRACT_LINEAR", "tract")),
        _ => None,
    };
    if let Some((var, value)) = switch {
        std::env::set_var(var, value);
    }
    let engine = TractEngine::new(model, s, opts).unwrap();
    if let Some((var, _)) = switch {
        std::env::remove_var(var);
    }
    engine
}

fn frame() -> image::DynamicImage {
    load_image(&repo().join("models/samples/coffee.png")).unwrap()
}

fn input_tensor(model: &Model) -> Vec<f32> {
    let pre = Preprocessor::new(&model.manifest.input, Fit::Squash).unwrap();
    let placed = pre.place(&frame()).unwrap();
    let mut t = Vec::new();
    pre.window_tensor(&placed.canvas, (0, 0), &mut t);
    t
}

fn schedule(model: &Model, n: usize) -> MaskSchedule {
    MaskSchedule::generate(
        ScheduleKind::Random,
        n,
        model.manifest.masks.keep,
        model.manifest.input.patches(),
        0,
    )
    .unwrap()
}

/// tract and ONNX Runtime on the same graph, same threads, one after the other, at 1 and
/// all threads and N = 8 and 32, for each graph of [`graphs`].
fn engines(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    for &t in &thread_counts() {
        let opts = EngineOptions {
            threads: t,
            precision: Precision::F32,
            f32_norms: true,
            ..Default::default()
        };
        for n in MASKS {
            for (g, model) in graphs() {
                let image = input_tensor(&model);
                let s = schedule(&model, n);
                let mut out = Vec::new();
                let mut tract = tract_engine(g, &model, &s, &opts);
                group.bench_function(
                    BenchmarkId::new(format!("{g}_{}-t{t}", tract_label()), n),
                    |b| b.iter(|| tract.run(&image, &mut out).unwrap()),
                );
                drop(tract);
                // `flash` and `matmul` are the shipped graph: ONNX Runtime runs it under
                // `default`.
                #[cfg(feature = "ort")]
                if g != "flash" && g != "matmul" {
                    let mut ort = maeday_edge::detect::engine::OrtEngine::new(
                        &model,
                        &s,
                        &opts,
                        &Default::default(),
                    )
                    .expect("ONNX Runtime (set ORT_DYLIB_PATH)");
                    group.bench_function(
                        BenchmarkId::new(format!("{g}_onnxruntime-t{t}"), n),
                        |b| b.iter(|| ort.run(&image, &mut out).unwrap()),
                    );
                }
            }
        }
    }
    group.finish();
}

fn output_kinds(c: &mut Criterion) {
    let Some(map) = map_model() else {
        eprintln!("MAEDAY_BENCH_MAP_MODEL not set: skipping the output-kind comparison (see benches/run.sh)");
        return;
    };
    let frame = frame();
    let mut group = c.benchmark_group("detect-n32");
    for (name, model) in [("reconstruction", recon_model()), ("anomaly_map", map)] {
        let opts = DetectorOptions {
            masks: Some(32),
            engine: EngineOptions {
                threads: threads(),
                precision: Precision::F32,
                f32_norms: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut det = Detector::new(model, &opts).unwrap();
        group.bench_function(name, |b| b.iter(|| det.detect(&frame).unwrap()));
    }
    group.finish();
}

fn stages(c: &mut Criterion) {
    let model = recon_model();
    let frame = frame();
    let pre = Preprocessor::new(&model.manifest.input, Fit::Squash).unwrap();
    let mut group = c.benchmark_group("stages");
    let mut t = Vec::new();
    group.bench_function("preprocess", |b| {
        b.iter(|| {
            let placed = pre.place(&frame).unwrap();
            pre.window_tensor(&placed.canvas, (0, 0), &mut t);
        })
    });
    let image = input_tensor(&model);
    let s = schedule(&model, 32);
    let mut recon = Vec::new();
    TractEngine::new(
        &model,
        &s,
        &EngineOptions {
            threads: threads(),
            ..Default::default()
        },
    )
    .unwrap()
    .run(&image, &mut recon)
    .unwrap();
    let kernel = gaussian_kernel(7, 1.4);
    let mut map = AnomalyMap::zeros(224, 224);
    let mut scratch = Vec::new();
    group.bench_function("scoring-n32", |b| {
        b.iter(|| {
            anomaly_map_into(&image, &recon, &kernel, &mut map, &mut scratch).unwrap();
            map.max()
        })
    });
    group.finish();
}

/// Mean time in ms of one benchmark from criterion's saved estimates.
fn mean_ms(dir: &Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(id).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v["mean"]["point_estimate"].as_f64()? / 1e6)
}

fn criterion_dir() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo().join("target"))
                .join("criterion")
        })
}

/// GFLOP/s and the share of the cores' FMA peak (`MAEDAY_BENCH_PEAK_GFLOPS` per core, or
/// [`fma_peak_gflops`] measured at start).
fn rate(ms: f64, n: usize, threads: usize) -> String {
    let gflops = GFLOP_PER_MASK * n as f64 / (ms / 1e3);
    match peak_gflops() {
        Some(peak) => format!(
            "{gflops:5.1} GFLOP/s {:3.0}%",
            100.0 * gflops / (peak * threads as f64)
        ),
        None => format!("{gflops:5.1} GFLOP/s"),
    }
}

/// One core's f32 FMA peak in GFLOP/s: `MAEDAY_BENCH_PEAK_GFLOPS`, else measured once.
fn peak_gflops() -> Option<f64> {
    static PEAK: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *PEAK.get_or_init(|| {
        let peak = std::env::var("MAEDAY_BENCH_PEAK_GFLOPS")
            .ok()
            .and_then(|p| p.parse().ok())
            .or_else(fma_peak_gflops);
        match peak {
            Some(p) => println!("FMA peak: {p:.0} GFLOP/s per core"),
            None => println!("FMA peak: unknown on this CPU (set MAEDAY_BENCH_PEAK_GFLOPS)"),
        }
        peak
    })
}

/// 12 independent chains of the widest f32 FMA this x86-64 core has (AVX-512, else AVX2),
/// best of 5 runs of 20M FMAs: what a matmul kernel could reach at most.
#[cfg(target_arch = "x86_64")]
fn fma_peak_gflops() -> Option<f64> {
    use std::arch::x86_64::*;
    const ITERS: usize = 20_000_000 / 12;
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512() -> f32 {
        let (m, a) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); 12];
        for _ in 0..ITERS {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, m, a);
            }
        }
        acc.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2() -> f32 {
        let (m, a) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..ITERS {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, m, a);
            }
        }
        let mut lanes = [0f32; 8];
        acc.iter()
            .map(|x| {
                _mm256_storeu_ps(lanes.as_mut_ptr(), *x);
                lanes.iter().sum::<f32>()
            })
            .sum()
    }
    let (width, run): (usize, unsafe fn() -> f32) = if is_x86_feature_detected!("avx512f") {
        (16, avx512)
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        (8, avx2)
    } else {
        return None;
    };
    let best = (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            // Safety: the CPU has the features `run` was compiled for (checked above).
            std::hint::black_box(unsafe { run() });
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    Some((ITERS * 12 * width * 2) as f64 / best / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak_gflops() -> Option<f64> {
    None
}

fn summary() {
    let dir = criterion_dir();
    let tract = tract_label();
    println!("\n== summary (means; ratios from this one run; % = share of the FMA peak) ==");
    for (g, _) in graphs() {
        for t in thread_counts() {
            for n in MASKS {
                let a = mean_ms(&dir, &format!("engine/{g}_{tract}-t{t}/{n}"));
                let b = mean_ms(&dir, &format!("engine/{g}_onnxruntime-t{t}/{n}"));
                match (a, b) {
                    (Some(a), Some(b)) => println!(
                        "{g:>7} N={n:>2} x{t}: {tract} {a:7.1} ms ({})  onnxruntime {b:7.1} ms \
                         ({})  tract/ort {:.2}",
                        rate(a, n, t),
                        rate(b, n, t),
                        a / b
                    ),
                    (Some(a), None) => {
                        println!(
                            "{g:>7} N={n:>2} x{t}: {tract} {a:7.1} ms ({})",
                            rate(a, n, t)
                        )
                    }
                    _ => {}
                }
            }
        }
    }
    // Each other graph against the shipped one (below 1: that graph is faster).
    for (g, _) in graphs().into_iter().filter(|(g, _)| *g != "default") {
        for t in thread_counts() {
            for n in MASKS {
                let ratio = |engine: &str| {
                    let other = mean_ms(&dir, &format!("engine/{g}_{engine}-t{t}/{n}"))?;
                    let shipped = mean_ms(&dir, &format!("engine/default_{engine}-t{t}/{n}"))?;
                    Some(format!("{engine} {:.3}", other / shipped))
                };
                if let Some(tr) = ratio(tract) {
                    let ort = ratio("onnxruntime").unwrap_or_default();
                    println!("{g}/default N={n:>2} x{t}: {tr}  {ort}");
                }
            }
        }
    }
    let t = threads();
    if let (Some(r), Some(m)) = (
        mean_ms(&dir, "detect-n32/reconstruction"),
        mean_ms(&dir, "detect-n32/anomaly_map"),
    ) {
        println!("detect N=32: reconstruction+Rust scoring {r:.1} ms, anomaly_map graph {m:.1} ms, ratio {:.2}", r / m);
    }
    if let (Some(model), Some(p), Some(s)) = (
        mean_ms(&dir, &format!("engine/default_{tract}-t{t}/32")),
        mean_ms(&dir, "stages/preprocess"),
        mean_ms(&dir, "stages/scoring-n32"),
    ) {
        println!(
            "N=32: preprocess {p:.2} ms ({:.2}% of model), scoring {s:.2} ms ({:.2}% of model)",
            100.0 * p / model,
            100.0 * s / model
        );
    }
}

#[cfg(feature = "ort")]
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// tract and ONNX Runtime alternating frame by frame on the same graph and threads
/// (`MAEDAY_BENCH_ROUNDS` pairs, default 9; 0 skips): medians, the median of the paired
/// ratios and their spread. Pairing adjacent runs cancels most of the load that other
/// processes put on a shared machine, which criterion's blocks of one engine do not.
#[cfg(feature = "ort")]
fn interleaved() {
    use std::time::Instant;
    let rounds: usize = std::env::var("MAEDAY_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(9);
    if rounds == 0 {
        return;
    }
    println!("\n== interleaved, {rounds} pairs: tract ms / onnxruntime ms (medians), tract/ort median [min-max] ==");
    for t in thread_counts() {
        let opts = EngineOptions {
            threads: t,
            precision: Precision::F32,
            f32_norms: true,
            ..Default::default()
        };
        for n in MASKS {
            for (g, model) in graphs() {
                let image = input_tensor(&model);
                let s = schedule(&model, n);
                let mut tract = tract_engine(g, &model, &s, &opts);
                let mut ort = maeday_edge::detect::engine::OrtEngine::new(
                    &model,
                    &s,
                    &opts,
                    &Default::default(),
                )
                .expect("ONNX Runtime (set ORT_DYLIB_PATH)");
                let mut out = Vec::new();
                ort.run(&image, &mut out).unwrap();
                let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..rounds {
                    let t0 = Instant::now();
                    tract.run(&image, &mut out).unwrap();
                    let t1 = Instant::now();
                    ort.run(&image, &mut out).unwrap();
                    let (x, y) = (
                        (t1 - t0).as_secs_f64() * 1e3,
                        t1.elapsed().as_secs_f64() * 1e3,
                    );
                    a.push(x);
                    b.push(y);
                    r.push(x / y);
                }
                let (ma, mb) = (median(&mut a), median(&mut b));
                let mr = median(&mut r);
                println!(
                    "{g:>7} N={n:>2} x{t}: {} {ma:7.1} ms ({})  onnxruntime {mb:7.1} ms ({})  \
                     tract/ort {mr:.2} [{:.2}-{:.2}]",
                    tract_label(),
                    rate(ma, n, t),
                    rate(mb, n, t),
                    r[0],
                    r[r.len() - 1]
                );
            }
        }
    }
}

fn main() {
    // First: tract fixes its kernel family at the first plan.
    tract_label();
    peak_gflops();
    #[cfg(feature = "ort")]
    interleaved();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    engines(&mut c);
    output_kinds(&mut c);
    stages(&mut c);
    c.final_summary();
    summary();
}
