//! The memory bank's per-frame cost against bank size, measured side by side in one run:
//! - exact nearest neighbours for one frame's 784 patch features (28 x 28, 152-d) against
//!   banks of 1, 4, 16 and 64 enrolled frames' worth of rows (25% coreset: 196 .. 12544
//!   rows; 100%: 784 .. 50176), through the sgemm search the runtime uses;
//! - the same search as a plain double loop, on the smaller banks, for the speed-up of
//!   the vectorised form;
//! - the extractor (EfficientNet-Lite0), which every bank size pays once: tract against
//!   ONNX Runtime (feature `ort`) on the same graph, same threads, at 1 and 2 threads, and
//!   tract with its own convolution, pooling and resize ops instead of ours.
//!
//! `cargo bench --bench bank`; the summary prints ms per frame and ratios to the smallest
//! bank from this one run, then (feature `ort`) the extractor interleaved with ONNX Runtime.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use tract_onnx::tract_core::prelude::multithread;

use maeday_edge::bank::features::FeatureExtractor;
use maeday_edge::bank::memory::{Features, MemoryBank};
use maeday_edge::detect::engine::{keep_freed_buffers, select_cpu_kernels, CpuKernels};
use maeday_edge::model::bundled::default_extractor_dir;

const DIM: usize = 152;
const QUERIES: usize = 784;
/// Bank rows: 1, 4, 16, 64 frames at 25%, and 64 frames whole.
const ROWS: [usize; 5] = [196, 784, 3136, 12544, 50176];
const NAIVE_ROWS: [usize; 2] = [196, 784];

fn random(rows: usize, seed: u64) -> Features {
    // A 64-bit LCG (Knuth's MMIX constants): timing does not depend on the values.
    let mut state = seed;
    let data = (0..rows * DIM)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    Features::new(DIM, data).unwrap()
}

fn naive(bank: &Features, q: &Features) -> Vec<f32> {
    (0..q.rows())
        .map(|i| {
            (0..bank.rows())
                .map(|j| {
                    q.row(i)
                        .iter()
                        .zip(bank.row(j))
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>()
                })
                .fold(f32::INFINITY, f32::min)
                .sqrt()
        })
        .collect()
}

fn knn(c: &mut Criterion) {
    let queries = random(QUERIES, 1);
    let mut group = c.benchmark_group("knn");
    for rows in ROWS {
        let features = random(rows, 2);
        let bank = MemoryBank::new(features.clone()).unwrap();
        group.bench_with_input(BenchmarkId::new("sgemm", rows), &rows, |b, _| {
            b.iter(|| bank.nearest(&queries).unwrap())
        });
        if NAIVE_ROWS.contains(&rows) {
            group.bench_with_input(BenchmarkId::new("naive", rows), &rows, |b, _| {
                b.iter(|| naive(&features, &queries))
            });
        }
    }
    group.finish();
}

/// The shipped extractor's folder, the extractor as served (our ops) and with tract's own
/// convolution, pooling and resize ops, and one 224 window to run them on.
fn extractors() -> (PathBuf, FeatureExtractor, FeatureExtractor, Vec<f32>) {
    let dir = default_extractor_dir();
    let ours = FeatureExtractor::open(&dir).unwrap();
    std::env::set_var("MAEDAY_TRACT_CNN_OPS", "tract");
    let theirs = FeatureExtractor::open(&dir).unwrap();
    std::env::remove_var("MAEDAY_TRACT_CNN_OPS");
    let image = (0..3 * 224 * 224)
        .map(|i| (i % 251) as f32 / 251.0)
        .collect();
    (dir, ours, theirs, image)
}

/// The extractor graph in tract (as served: the feature rows included) and in ONNX Runtime
/// (feature `ort`), same graph, same threads, at 1 and 2 threads.
fn extractor(c: &mut Criterion) {
    let (dir, ex, theirs, image) = extractors();
    let mut group = c.benchmark_group("extractor");
    for t in [1usize, 2] {
        let pool = multithread::Executor::multithread(t);
        group.bench_function(format!("{}-t{t}", tract_label()), |b| {
            b.iter(|| {
                multithread::multithread_tract_scope(pool.clone(), || ex.features(&image).unwrap())
            })
        });
        group.bench_function(format!("{}-tract-ops-t{t}", tract_label()), |b| {
            b.iter(|| {
                multithread::multithread_tract_scope(pool.clone(), || {
                    theirs.features(&image).unwrap()
                })
            })
        });
        #[cfg(feature = "ort")]
        {
            let graph = dir.join("efficientnet-lite0-patches.onnx");
            let mut ort = maeday_edge::detect::engine::OrtGraph::open(&graph, &[1, 3, 224, 224], t)
                .expect("ONNX Runtime (set ORT_DYLIB_PATH)");
            let mut out = Vec::new();
            group.bench_function(format!("onnxruntime-t{t}"), |b| {
                b.iter(|| ort.run(&image, &mut out).unwrap())
            });
        }
    }
    group.finish();
}

/// tract's kernel family for this run (`MAEDAY_BENCH_CPU_KERNELS`, default auto).
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

fn mean_ms(dir: &Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(id).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v["mean"]["point_estimate"].as_f64()? / 1e6)
}

fn summary() {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion");
    println!("\n== summary: kNN per frame (784 queries) vs bank rows, one run ==");
    let base = mean_ms(&dir, &format!("knn/sgemm/{}", ROWS[0]));
    for rows in ROWS {
        if let (Some(t), Some(b)) = (mean_ms(&dir, &format!("knn/sgemm/{rows}")), base) {
            let naive = mean_ms(&dir, &format!("knn/naive/{rows}"))
                .map(|n| format!("  naive {n:8.2} ms (naive/sgemm {:.1})", n / t))
                .unwrap_or_default();
            println!(
                "{rows:>6} rows: sgemm {t:8.2} ms  x{:.1} of the smallest{naive}",
                t / b
            );
        }
    }
    for t in [1, 2] {
        let a = mean_ms(&dir, &format!("extractor/{}-t{t}", tract_label()));
        let b = mean_ms(&dir, &format!("extractor/onnxruntime-t{t}"));
        match (a, b) {
            (Some(a), Some(b)) => println!(
                "extractor x{t}: {} {a:.2} ms, onnxruntime {b:.2} ms per 224x224 window, \
                 tract/ort {:.2}",
                tract_label(),
                a / b
            ),
            (Some(a), None) => println!("extractor x{t}: {} {a:.2} ms", tract_label()),
            _ => {}
        }
        let own = mean_ms(&dir, &format!("extractor/{}-tract-ops-t{t}", tract_label()));
        if let (Some(a), Some(own)) = (a, own) {
            println!(
                "  with tract's own conv/pool/resize ops: {own:.2} ms (ours / tract's {:.2})",
                a / own
            );
        }
    }
}

/// The extractor in tract (with our ops, and with tract's own) and in ONNX Runtime taking
/// turns window by window, same graph and threads (`MAEDAY_BENCH_ROUNDS` rounds, default
/// 31; 0 skips): medians, and the medians of each round's ratios to ONNX Runtime with their
/// spread. Taking turns cancels most of the load that other processes put on a shared
/// machine, which criterion's blocks of one engine do not.
#[cfg(feature = "ort")]
fn interleaved() {
    use std::time::Instant;
    let rounds: usize = std::env::var("MAEDAY_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(31);
    if rounds == 0 {
        return;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0f64, f64::max);
        format!("[{lo:.2}-{hi:.2}]")
    };
    println!("\n== extractor taking turns, {rounds} rounds: medians; ratios to onnxruntime, median [min-max] ==");
    let (dir, ours, theirs, image) = extractors();
    for t in [1usize, 2] {
        let pool = multithread::Executor::multithread(t);
        let graph = dir.join("efficientnet-lite0-patches.onnx");
        let mut ort = maeday_edge::detect::engine::OrtGraph::open(&graph, &[1, 3, 224, 224], t)
            .expect("ONNX Runtime (set ORT_DYLIB_PATH)");
        let mut out = Vec::new();
        let timed = |ex: &FeatureExtractor| {
            let t0 = Instant::now();
            multithread::multithread_tract_scope(pool.clone(), || ex.features(&image).unwrap());
            t0.elapsed().as_secs_f64() * 1e3
        };
        // One warm-up run of each.
        timed(&ours);
        timed(&theirs);
        ort.run(&image, &mut out).unwrap();
        let mut ms = [Vec::new(), Vec::new(), Vec::new()];
        let mut ratios = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            let (a, b) = (timed(&ours), timed(&theirs));
            let t0 = Instant::now();
            ort.run(&image, &mut out).unwrap();
            let c = t0.elapsed().as_secs_f64() * 1e3;
            for (v, x) in ms.iter_mut().zip([a, b, c]) {
                v.push(x);
            }
            ratios[0].push(a / c);
            ratios[1].push(b / c);
        }
        let [a, b, c] = ms.each_mut().map(&median);
        let [ra, rb] = ratios.each_mut().map(|v| (spread(v), median(v)));
        println!(
            "extractor x{t}: {} {a:.2} ms (tract/ort {:.2} {}), with tract's own ops {b:.2} ms \
             ({:.2} {}), onnxruntime {c:.2} ms",
            tract_label(),
            ra.1,
            ra.0,
            rb.1,
            rb.0
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    tract_label();
    // As in the daemon, whose engine does this before the bank's extractor plans (the
    // default `model.keep_freed_buffers`); it applies to ONNX Runtime too (same process).
    println!("heap: {}", keep_freed_buffers());
    knn(&mut c);
    extractor(&mut c);
    c.final_summary();
    summary();
    #[cfg(feature = "ort")]
    interleaved();
}
