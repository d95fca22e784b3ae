//! The GStreamer source's cost per frame at 1080p (H.264 decode + conversion to RGB + the
//! checks and copy into the frame), as a fraction of the model's time on the same frame.
//!
//! `cargo bench --features gstreamer --bench gstreamer`: the conveyor clip is encoded to a
//! 1920x1080 H.264 MP4 (by `maeday-rtsp-test-server encode`), replayed through the daemon's
//! own source (`kind = "replay"` with an MP4: every frame, as fast as it decodes), and one
//! frame is scored by the default model (N = 8 masks, `MAEDAY_BENCH_THREADS` threads, f32).
//! Medians of per-frame times are printed, with the ratio.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use maeday_edge::config::PipelineConfig;
use maeday_edge::daemon::source::{self, Next};
use maeday_edge::detect::detector::{Detector, DetectorOptions};
use maeday_edge::detect::engine::{EngineOptions, Precision};
use maeday_edge::model::manifest::Model;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("conveyor-1080p.mp4");
    let gif = repo.join("../shared/data/conveyor/bolt-multi-size-detection.gif");
    let gif = if gif.is_file() {
        gif
    } else {
        repo.join("demo/conveyor.gif")
    };
    let ok = Command::new(env!("CARGO_BIN_EXE_maeday-rtsp-test-server"))
        .args([
            "encode",
            gif.to_str().unwrap(),
            mp4.to_str().unwrap(),
            "1920x1080",
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "encoding the 1080p clip failed");

    // The source: three passes of the clip (37 frames each), every frame timed.
    let cfg = maeday_edge::config::SourceConfig::Replay {
        path: mp4.clone(),
        fps: 0.0,
        looping: true,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut src = source::open(&cfg, &PipelineConfig::default(), stop).unwrap();
    let mut per_frame = Vec::new();
    let mut last = None;
    // The first frames include the pipeline's start: not counted.
    for i in 0..(3 * 37 + 5) {
        let t = Instant::now();
        match src.next_frame() {
            Next::Frame(f) => {
                assert_eq!(f.dimensions(), (1920, 1080));
                if i >= 5 {
                    per_frame.push(t.elapsed());
                }
                last = Some(f);
            }
            Next::Corrupt(e) => panic!("{e:#}"),
            Next::End => break,
        }
    }
    let source_t = median(per_frame.clone());

    let threads = std::env::var("MAEDAY_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let model = Model::open(repo.join("models/default")).unwrap();
    let opts = DetectorOptions {
        masks: Some(8),
        engine: EngineOptions {
            threads,
            precision: Precision::F32,
            f32_norms: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut det = Detector::new(model, &opts).unwrap();
    let frame = image::DynamicImage::ImageRgb8(last.expect("no frame"));
    det.detect(&frame).unwrap();
    let model_t = median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                det.detect(&frame).unwrap();
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "gstreamer source, 1080p H.264 MP4 -> RGB: median {:.2} ms/frame over {} frames \
         (p90 {:.2} ms)",
        source_t.as_secs_f64() * 1e3,
        per_frame.len(),
        {
            let mut v = per_frame.clone();
            v.sort();
            v[v.len() * 9 / 10].as_secs_f64() * 1e3
        }
    );
    println!(
        "model (default, N = 8, {threads} threads, f32, squash): median {:.1} ms/frame",
        model_t.as_secs_f64() * 1e3
    );
    println!(
        "source / model = {:.3}",
        source_t.as_secs_f64() / model_t.as_secs_f64()
    );
}
