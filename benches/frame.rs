//! Per-frame cost of MAEDAY scoring, measured side by side in one run:
//! - tract vs ONNX Runtime (feature `ort`) on the same graph, same thread count, N = 8/16/32;
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
use maeday_edge::detect::engine::{Engine, EngineOptions, Precision, TractEngine};
use maeday_edge::detect::eq1::{anomaly_map_into, gaussian_kernel, AnomalyMap};
use maeday_edge::detect::preprocess::{load_image, Fit, Preprocessor};
use maeday_edge::model::manifest::Model;
use maeday_edge::model::schedule::{MaskSchedule, ScheduleKind};

const MASKS: [usize; 3] = [8, 16, 32];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn recon_model() -> Model {
    let dir = std::env::var_os("MAEDAY_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models/default"));
    Model::open(dir).expect("bench model")
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

fn engines(c: &mut Criterion) {
    let model = recon_model();
    let image = input_tensor(&model);
    let mut group = c.benchmark_group("engine");
    let mut thread_counts = vec![threads()];
    if threads() > 1 {
        thread_counts.push(1);
    }
    for &t in &thread_counts {
        let opts = EngineOptions {
            threads: t,
            precision: Precision::F32,
            f32_norms: true,
            ..Default::default()
        };
        // N = 8/16/32 at the full thread count; N = 32 only at one thread.
        for &n in MASKS.iter().filter(|&&n| t == threads() || n == 32) {
            let s = schedule(&model, n);
            let mut out = Vec::new();
            let mut tract = TractEngine::new(&model, &s, &opts).unwrap();
            group.bench_function(BenchmarkId::new(format!("tract-t{t}"), n), |b| {
                b.iter(|| tract.run(&image, &mut out).unwrap())
            });
            drop(tract);
            #[cfg(feature = "ort")]
            {
                let mut ort = maeday_edge::detect::engine::OrtEngine::new(
                    &model,
                    &s,
                    &opts,
                    &Default::default(),
                )
                .expect("ONNX Runtime (set ORT_DYLIB_PATH)");
                group.bench_function(BenchmarkId::new(format!("onnxruntime-t{t}"), n), |b| {
                    b.iter(|| ort.run(&image, &mut out).unwrap())
                });
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

fn summary() {
    let dir = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo().join("target"))
                .join("criterion")
        });
    let t = threads();
    println!("\n== summary (means; ratios from this one run) ==");
    for n in MASKS {
        let tract = mean_ms(&dir, &format!("engine/tract-t{t}/{n}"));
        let ort = mean_ms(&dir, &format!("engine/onnxruntime-t{t}/{n}"));
        match (tract, ort) {
            (Some(a), Some(b)) => println!(
                "N={n:>2} x{t} threads: tract {a:8.1} ms  onnxruntime {b:8.1} ms  tract/ort {:.2}",
                a / b
            ),
            (Some(a), None) => println!("N={n:>2} x{t} threads: tract {a:8.1} ms"),
            _ => {}
        }
    }
    for engine in ["tract", "onnxruntime"] {
        if let (Some(a), Some(b)) = (
            mean_ms(&dir, &format!("engine/{engine}-t1/32")),
            mean_ms(&dir, &format!("engine/{engine}-t{t}/32")),
        ) {
            println!(
                "{engine} N=32: 1 thread {a:.1} ms, {t} threads {b:.1} ms, speed-up {:.2}x",
                a / b
            );
        }
    }
    if let (Some(r), Some(m)) = (
        mean_ms(&dir, "detect-n32/reconstruction"),
        mean_ms(&dir, "detect-n32/anomaly_map"),
    ) {
        println!("detect N=32: reconstruction+Rust scoring {r:.1} ms, anomaly_map graph {m:.1} ms, ratio {:.2}", r / m);
    }
    if let (Some(model), Some(p), Some(s)) = (
        mean_ms(&dir, &format!("engine/tract-t{t}/32")),
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

fn main() {
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
