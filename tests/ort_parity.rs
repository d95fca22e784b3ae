//! tract and ONNX Runtime on the same graphs (built only with `--features ort`; needs
//! `ORT_DYLIB_PATH`, e.g. the `libonnxruntime.so.*` of the onnxruntime wheel, which is a
//! CPU-only build: the GPU providers' refusal paths are tested against it).
#![cfg(feature = "ort")]

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::ArrayD;
use ndarray_npy::read_npy;

mod common;
use common::repo;

use maeday_edge::detect::engine::{
    Engine, EngineOptions, OrtEngine, OrtSettings, Precision, Provider, TractEngine,
};
use maeday_edge::model::manifest::Model;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn onnxruntime_and_tract_agree_on_both_output_kinds() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "set ORT_DYLIB_PATH to run the ort tests"
    );
    let image: ArrayD<f32> = read_npy(fixtures().join("reference/image.npy")).unwrap();
    let image: Vec<f32> = image.iter().copied().collect();
    for (dir, reference) in [
        ("fixture-recon", "reconstruction.npy"),
        ("fixture-map", "anomaly_map.npy"),
    ] {
        let model = Model::open(fixtures().join(dir)).unwrap();
        let schedule = model.manifest.schedule().unwrap();
        let opts = EngineOptions {
            threads: 2,
            precision: Precision::F32,
            f32_norms: true,
            ..Default::default()
        };
        let mut ort = OrtEngine::new(&model, &schedule, &opts, &OrtSettings::default()).unwrap();
        let mut tract = TractEngine::new(&model, &schedule, &opts).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ort.run(&image, &mut a).unwrap();
        tract.run(&image, &mut b).unwrap();
        let want: Vec<f32> = if reference == "anomaly_map.npy" {
            let r: ArrayD<f64> = read_npy(fixtures().join("reference").join(reference)).unwrap();
            r.iter().map(|v| *v as f32).collect()
        } else {
            let r: ArrayD<f32> = read_npy(fixtures().join("reference").join(reference)).unwrap();
            r.iter().copied().collect()
        };
        let diff = |x: &[f32], y: &[f32]| {
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max)
        };
        assert_eq!(a.len(), want.len());
        assert!(diff(&a, &b) <= 1e-4, "{dir}: ort vs tract {}", diff(&a, &b));
        assert!(
            diff(&a, &want) <= 1e-4,
            "{dir}: ort vs reference {}",
            diff(&a, &want)
        );
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_maeday-edge");

fn score_lines(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(BIN).arg("score").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "score {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `score --engine ort` and `--engine tract` on the shipped default model and real photos:
/// the same scores (Eq. 1 max) to 1e-4 relative.
#[test]
fn score_with_either_engine_gives_the_same_scores_on_the_default_model() {
    let samples = repo().join("models/samples");
    let images: Vec<String> = ["coins.png", "camera.png", "coffee.png"]
        .iter()
        .map(|n| samples.join(n).display().to_string())
        .collect();
    let mut common = vec!["--masks", "8", "--threads", "2"];
    common.extend(images.iter().map(String::as_str));
    let tract = score_lines(&[&["--engine", "tract"], &common[..]].concat());
    let ort = score_lines(&[&["--engine", "ort"], &common[..]].concat());
    assert_eq!(tract.len(), 3);
    for (t, o) in tract.iter().zip(&ort) {
        let (a, b) = (t["score"].as_f64().unwrap(), o["score"].as_f64().unwrap());
        assert!(
            (a - b).abs() <= 1e-4 * a.abs(),
            "{}: tract {a} vs ort {b}",
            t["image"]
        );
    }
}

/// A GPU provider the library cannot give is an error that says so, not a silent run on
/// the CPU; with allow_fallback the engine runs (on ONNX Runtime's CPU kernels) and still
/// agrees with tract.
#[test]
fn missing_gpu_provider_is_an_error_unless_fallback_is_allowed() {
    let model = Model::open(fixtures().join("fixture-recon")).unwrap();
    let schedule = model.manifest.schedule().unwrap();
    let strict = OrtSettings {
        providers: vec![Provider::Cuda],
        ..Default::default()
    };
    let opts = EngineOptions {
        threads: 1,
        ..Default::default()
    };
    let err = match OrtEngine::new(&model, &schedule, &opts, &strict) {
        Ok(e) => panic!("CUDA registered on a CPU-only library: {}", e.describe()),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("cuda"), "{err}");
    assert!(err.contains("allow_fallback"), "{err}");

    let lenient = OrtSettings {
        providers: vec![Provider::TensorRt, Provider::Cuda],
        allow_fallback: true,
        ..Default::default()
    };
    let mut ort = OrtEngine::new(&model, &schedule, &opts, &lenient).unwrap();
    assert!(ort.describe().contains("fallback"), "{}", ort.describe());
    let image: ArrayD<f32> = read_npy(fixtures().join("reference/image.npy")).unwrap();
    let image: Vec<f32> = image.iter().copied().collect();
    let mut tract = TractEngine::new(&model, &schedule, &opts).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    ort.run(&image, &mut a).unwrap();
    tract.run(&image, &mut b).unwrap();
    let d = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max);
    assert!(d <= 1e-4, "fallback ort vs tract {d}");

    // The same refusal reaches the daemon's config and the CLI.
    let out = Command::new(BIN)
        .args([
            "score",
            "--engine",
            "ort",
            "--ort-provider",
            "cuda",
            "--model",
        ])
        .arg(fixtures().join("fixture-recon"))
        .arg(repo().join("models/samples/coins.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("execution provider cuda"), "{stderr}");

    let out = Command::new(BIN)
        .args([
            "score",
            "--engine",
            "ort",
            "--ort-library",
            "/nonexistent/libonnxruntime.so",
        ])
        .arg(repo().join("models/samples/coins.png"))
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/libonnxruntime.so does not exist"),
        "{stderr}"
    );
}

/// The daemon with `--engine ort`: a replay through the files sink, same scores as tract.
#[test]
fn daemon_runs_on_the_ort_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let mut scores = Vec::new();
    for engine in ["tract", "ort"] {
        let out_dir = tmp.path().join(engine);
        let cfg = tmp.path().join(format!("{engine}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"
device_id = "ort-test"
[model]
masks = 4
threads = 2
[model.ort]
providers = ["cpu"]
[[camera]]
name = "samples"
source = {{ kind = "replay", path = "{}" }}
[files]
dir = "{}"
"#,
                repo().join("models/samples").display(),
                out_dir.display()
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["run", "--engine", engine, "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{engine}: {stderr}");
        if engine == "ort" {
            assert!(stderr.contains("onnxruntime cpu f32"), "{stderr}");
        }
        let lines = std::fs::read_to_string(out_dir.join("results.jsonl")).unwrap();
        let s: Vec<f64> = lines
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["score"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        assert_eq!(s.len(), 5, "{engine}: {lines}");
        scores.push(s);
    }
    for (a, b) in scores[0].iter().zip(&scores[1]) {
        assert!((a - b).abs() <= 1e-4 * a.abs(), "tract {a} vs ort {b}");
    }
}
