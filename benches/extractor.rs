//! Per-window cost of the memory bank's extractors against MAEDAY, side by side in one run
//! (issue 20): EfficientNet-Lite0 (224 window), DINOv2 ViT-S/14 (the 224 window resized to
//! 448: 32 x 32 patches), and MAEDAY's whole window (inference + Eq. 1) at N = 8 and 32,
//! plus the DINOv2 bank's kNN (1024 unit queries of 384-d against 4 frames at 25%).
//!
//! `cargo bench --bench extractor`; the summary prints ms per window and the ratios
//! DINOv2 / MAEDAY from this one run. Threads: `MAEDAY_BENCH_THREADS` (default all cores).

use std::path::PathBuf;
use std::time::Duration;

use criterion::Criterion;

use maeday_edge::bank::features::open_extractor;
use maeday_edge::bank::memory::MemoryBank;
use maeday_edge::detect::detector::{Detector, DetectorOptions};
use maeday_edge::detect::engine::EngineOptions;
use maeday_edge::detect::fuse::ScorerKind;
use maeday_edge::detect::preprocess::{load_image, Fit, Preprocessor};
use maeday_edge::model::manifest::{InputSpec, Model};

const MASKS: [usize; 2] = [8, 32];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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

/// MAEDAY on one thread (as the extractors run: tract plans are single-threaded) and on
/// all cores (how the daemon runs it: the masks split across threads).
fn thread_counts() -> Vec<usize> {
    let mut t = vec![1];
    if threads() > 1 {
        t.push(threads());
    }
    t
}

fn bench(c: &mut Criterion) {
    let model = || Model::open(repo().join("models/default")).unwrap();
    let frame = load_image(&repo().join("models/samples/coffee.png")).unwrap();
    // The 224 window as the bank's extractors get it: RGB in [0, 1].
    let pre = Preprocessor::new(&model().manifest.input, Fit::Squash).unwrap();
    let placed = pre.place(&frame).unwrap();
    let mut window = Vec::new();
    pre.window_rgb01(&placed.canvas, (0, 0), &mut window);
    let mut group = c.benchmark_group("window");
    let lite0 = open_extractor(Some(&"lite0".into())).unwrap();
    group.bench_function("lite0", |b| b.iter(|| lite0.features(&window).unwrap()));
    // DINOv2 sees the window's region at its view size (448: 2 x 2 graph runs of 224).
    let dino = open_extractor(Some(&"dinov2".into())).unwrap();
    let spec = InputSpec {
        size: dino.manifest.view_size(),
        ..model().manifest.input
    };
    let view_pre = Preprocessor::new(&spec, Fit::Squash).unwrap();
    let mut view = Vec::new();
    view_pre.window_rgb01(&view_pre.place(&frame).unwrap().canvas, (0, 0), &mut view);
    group.bench_function("dinov2", |b| b.iter(|| dino.features(&view).unwrap()));
    let queries = dino.features(&view).unwrap();
    assert_eq!(queries.rows(), dino.manifest.view_grid().pow(2));
    let bank = MemoryBank::new(queries.select(&(0..1024).collect::<Vec<_>>())).unwrap();
    group.bench_function("dinov2-knn-1024", |b| {
        b.iter(|| bank.nearest(&queries).unwrap())
    });
    for n in MASKS {
        for t in thread_counts() {
            let opts = DetectorOptions {
                masks: Some(n),
                scorer: Some(ScorerKind::Maeday),
                engine: EngineOptions {
                    threads: t,
                    ..Default::default()
                },
                ..Default::default()
            };
            let mut d = Detector::new(model(), &opts).unwrap();
            group.bench_function(format!("maeday-n{n}-t{t}"), |b| {
                b.iter(|| d.detect(&frame).unwrap())
            });
        }
    }
    group.finish();
}

fn mean_ms(id: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("criterion/window");
    let text = std::fs::read_to_string(dir.join(id).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v["mean"]["point_estimate"].as_f64()? / 1e6)
}

fn summary() {
    println!("\n== summary: ms per 224 window, one run (extractors: 1 thread) ==");
    let mut ids = vec![
        "lite0".to_string(),
        "dinov2".into(),
        "dinov2-knn-1024".into(),
    ];
    for n in MASKS {
        ids.extend(thread_counts().iter().map(|t| format!("maeday-n{n}-t{t}")));
    }
    for id in &ids {
        if let Some(t) = mean_ms(id) {
            println!("{id:>16}: {t:8.1} ms");
        }
    }
    if let Some(d) = mean_ms("dinov2") {
        for n in MASKS {
            for t in thread_counts() {
                if let Some(m) = mean_ms(&format!("maeday-n{n}-t{t}")) {
                    println!(
                        "DINOv2 extractor / MAEDAY N = {n} ({t} threads): {:.2}",
                        d / m
                    );
                }
            }
        }
        if let Some(l) = mean_ms("lite0") {
            println!("DINOv2 / Lite0 extractor: {:.1}", d / l);
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
    summary();
}
