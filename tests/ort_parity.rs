//! tract and ONNX Runtime on the same graphs (built only with `--features ort`; needs
//! `ORT_DYLIB_PATH`, e.g. the `libonnxruntime.so.*` of the onnxruntime wheel).
#![cfg(feature = "ort")]

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::read_npy;

use maeday_edge::engine::{Engine, EngineOptions, OrtEngine, Precision, TractEngine};
use maeday_edge::manifest::Model;

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
        };
        let mut ort = OrtEngine::new(&model, &schedule, &opts, None).unwrap();
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
