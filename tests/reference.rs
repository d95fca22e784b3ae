//! The Rust pipeline against independent references made by the workstation tooling
//! (`python -m models.workstation fixture`): torch reconstructions, the numpy literal Eq. 1,
//! and the Python port of the mask schedules.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::read_npy;

mod common;

use maeday_edge::detect::detector::{Detector, DetectorOptions};
use maeday_edge::detect::engine::{Engine, EngineOptions, Precision, TractEngine};
use maeday_edge::detect::eq1::{anomaly_map, anomaly_map_literal, gaussian_kernel};
use maeday_edge::detect::preprocess::{load_image, Fit, Preprocessor};
use maeday_edge::model::manifest::{Model, Standardise};
use maeday_edge::model::schedule::{MaskSchedule, ScheduleKind};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn npy_f32(name: &str) -> Vec<f32> {
    let a: ArrayD<f32> = read_npy(fixtures().join("reference").join(name)).unwrap();
    a.iter().copied().collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn one_thread(precision: Precision) -> EngineOptions {
    EngineOptions {
        threads: 1,
        precision,
        f32_norms: true,
        ..Default::default()
    }
}

#[test]
fn manifest_schedule_is_the_one_torch_used() {
    let keep: ArrayD<i64> = read_npy(fixtures().join("reference/keep.npy")).unwrap();
    let model = Model::open(fixtures().join("fixture-recon")).unwrap();
    let schedule = model.manifest.schedule().unwrap();
    assert_eq!(keep.shape(), &[schedule.masks, schedule.keep]);
    assert_eq!(keep.iter().copied().collect::<Vec<_>>(), schedule.indices());
}

#[test]
fn schedules_match_the_python_port_bit_for_bit() {
    let text = std::fs::read_to_string(fixtures().join("reference/schedules.json")).unwrap();
    let golden: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(golden.len(), 4);
    for (key, masks) in golden {
        // key: <kind>-n<N>-k<K>-l<L>-s<seed>
        let parts: Vec<&str> = key.split('-').collect();
        let num = |p: &str| p[1..].parse::<u64>().unwrap();
        let kind: ScheduleKind = parts[0].parse().unwrap();
        let s = MaskSchedule::generate(
            kind,
            num(parts[1]) as usize,
            num(parts[2]) as usize,
            num(parts[3]) as usize,
            num(parts[4]),
        )
        .unwrap();
        let want: Vec<i64> = masks
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()))
            .collect();
        assert_eq!(s.indices(), &want[..], "{key}");
    }
}

#[test]
fn tract_reconstruction_matches_torch() {
    let model = Model::open(fixtures().join("fixture-recon")).unwrap();
    let schedule = model.manifest.schedule().unwrap();
    let image = npy_f32("image.npy");
    let want = npy_f32("reconstruction.npy");
    for threads in [1, 2, 3] {
        let opts = EngineOptions {
            threads,
            ..one_thread(Precision::F32)
        };
        let mut engine = TractEngine::new(&model, &schedule, &opts).unwrap();
        let mut out = Vec::new();
        engine.run(&image, &mut out).unwrap();
        let d = max_abs_diff(&out, &want);
        assert!(
            d <= 1e-4,
            "threads {threads}: tract vs torch max |diff| {d}"
        );
        // Running again reuses the buffers and gives the same numbers.
        let first = out.clone();
        engine.run(&image, &mut out).unwrap();
        assert_eq!(first, out);
    }
}

#[test]
fn eq1_in_rust_matches_the_numpy_literal_reference() {
    let image = npy_f32("image.npy");
    let recon = npy_f32("reconstruction.npy");
    let want: ArrayD<f64> = read_npy(fixtures().join("reference/anomaly_map.npy")).unwrap();
    assert_eq!(want.shape(), &[224, 224]);
    let want: Vec<f32> = want.iter().map(|v| *v as f32).collect();
    let k = gaussian_kernel(7, 1.4);
    let fast = anomaly_map(&image, &recon, 224, &k).unwrap();
    let literal = anomaly_map_literal(&image, &recon, 224, &k);
    let scale = want.iter().copied().fold(0.0, f32::max);
    assert!(scale > 0.1, "the reference map is degenerate (max {scale})");
    assert!(
        max_abs_diff(&fast.data, &want) <= 1e-5,
        "fast vs numpy {}",
        max_abs_diff(&fast.data, &want)
    );
    assert!(
        max_abs_diff(&literal.data, &want) <= 1e-5,
        "literal vs numpy {}",
        max_abs_diff(&literal.data, &want)
    );
    assert!(max_abs_diff(&fast.data, &literal.data) <= 1e-5);
}

#[test]
fn graph_with_folded_scoring_matches_numpy() {
    let model = Model::open(fixtures().join("fixture-map")).unwrap();
    let schedule = model.manifest.schedule().unwrap();
    let mut engine = TractEngine::new(&model, &schedule, &one_thread(Precision::F32)).unwrap();
    let mut out = Vec::new();
    engine.run(&npy_f32("image.npy"), &mut out).unwrap();
    let want: ArrayD<f64> = read_npy(fixtures().join("reference/anomaly_map.npy")).unwrap();
    let want: Vec<f32> = want.iter().map(|v| *v as f32).collect();
    let d = max_abs_diff(&out, &want);
    assert!(d <= 1e-4, "in-graph Eq. 1 vs numpy max |diff| {d}");
}

#[test]
fn detector_on_a_real_frame_reproduces_the_reference_end_to_end() {
    let frame =
        load_image(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples/coffee-224.png"))
            .unwrap();
    let want: ArrayD<f64> = read_npy(fixtures().join("reference/anomaly_map.npy")).unwrap();
    let want: Vec<f32> = want.iter().map(|v| *v as f32).collect();
    // Pre-processing of a 224x224 frame is exactly the normalisation torch saw.
    let model = Model::open(fixtures().join("fixture-recon")).unwrap();
    let pre = Preprocessor::new(&model.manifest.input, Fit::Squash).unwrap();
    let placed = pre.place(&frame).unwrap();
    let mut tensor = Vec::new();
    pre.window_tensor(&placed.canvas, (0, 0), &mut tensor);
    assert!(max_abs_diff(&tensor, &npy_f32("image.npy")) <= 1e-5);
    for dir in ["fixture-recon", "fixture-map"] {
        for threads in [1, 2] {
            let model = Model::open(fixtures().join(dir)).unwrap();
            let opts = DetectorOptions {
                engine: EngineOptions {
                    threads,
                    ..one_thread(Precision::F32)
                },
                ..Default::default()
            };
            let mut det = Detector::new(model, &opts).unwrap();
            let d = det.detect(&frame).unwrap();
            assert_eq!((d.map.width, d.map.height, d.windows), (224, 224, 1));
            let diff = max_abs_diff(&d.map.data, &want);
            assert!(diff <= 1e-4, "{dir} x{threads}: map vs numpy {diff}");
            let want_max = want.iter().copied().fold(f32::MIN, f32::max);
            assert!((d.score - want_max).abs() <= 1e-4);
        }
    }
}

#[test]
fn standardised_input_matches_numpy() {
    // `[input.standardise]` vs the workstation's numpy (`python -m models.workstation
    // input-reference`): the gray level of coffee-224.png set to mean 0.45, std 0.225.
    let frame =
        load_image(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples/coffee-224.png"))
            .unwrap();
    let mut input = Model::open(fixtures().join("fixture-recon"))
        .unwrap()
        .manifest
        .input;
    input.standardise = Some(Standardise {
        mean: 0.45,
        std: 0.225,
    });
    let pre = Preprocessor::new(&input, Fit::Squash).unwrap();
    let placed = pre.place(&frame).unwrap();
    let mut tensor = Vec::new();
    pre.window_tensor(&placed.canvas, (0, 0), &mut tensor);
    let want = npy_f32("image-standardised.npy");
    let d = max_abs_diff(&tensor, &want);
    assert!(d <= 1e-4, "standardised input vs numpy max |diff| {d}");
    // And it is not the plain normalisation.
    assert!(max_abs_diff(&tensor, &npy_f32("image.npy")) > 0.1);
}

#[test]
fn f16_plan_runs_and_stays_close_to_f32() {
    // CI runs this test under qemu with native fp16 kernels forced
    // (TRACT_CPU_AARCH64_KIND=a75, MAEDAY_EXPECT_NATIVE_F16=1): make sure they ran.
    if std::env::var("MAEDAY_EXPECT_NATIVE_F16").is_ok_and(|v| v == "1") {
        assert!(
            maeday_edge::detect::engine::native_f16(),
            "native fp16 kernels expected"
        );
    }
    eprintln!(
        "f16 kernels: {}",
        if maeday_edge::detect::engine::native_f16() {
            "native"
        } else {
            "emulated"
        }
    );
    let model = Model::open(fixtures().join("fixture-recon")).unwrap();
    let schedule = model.manifest.schedule().unwrap();
    let image = npy_f32("image.npy");
    let want = npy_f32("reconstruction.npy");
    let mut outputs = Vec::new();
    for f32_norms in [true, false] {
        let opts = EngineOptions {
            threads: 1,
            precision: Precision::F16,
            f32_norms,
            ..Default::default()
        };
        let mut engine = TractEngine::new(&model, &schedule, &opts).unwrap();
        let mut out = Vec::new();
        engine.run(&image, &mut out).unwrap();
        let d = max_abs_diff(&out, &want);
        eprintln!("f16 (norms in f32: {f32_norms}) vs torch f32: max |diff| {d}");
        let range = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
        // The documented fp16 tolerance (cross/README.md): max |diff| within 1.5% of the
        // output range. f16 keeps ~3 decimal digits and tract accumulates f16 matmuls in
        // f16; measured 0.59-0.67% on x86 (emulated) and arm64 (native kernels, qemu).
        assert!(
            d > 0.0 && d < 0.015 * range,
            "f32_norms {f32_norms}: f16 vs torch {d} (range {range})"
        );
        outputs.push(out);
    }
    // Keeping LayerNorm/Softmax in f32 really changes the plan.
    assert_ne!(outputs[0], outputs[1]);
}

#[test]
fn tiling_a_wide_frame_stitches_a_full_resolution_map() {
    let model = Model::open(fixtures().join("fixture-map")).unwrap();
    let frame = image::DynamicImage::ImageRgb8(image::imageops::resize(
        &load_image(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples/coffee.png"))
            .unwrap()
            .to_rgb8(),
        600,
        200,
        image::imageops::FilterType::Triangle,
    ));
    let opts = DetectorOptions {
        fit: "tile".parse().unwrap(),
        engine: one_thread(Precision::F32),
        ..Default::default()
    };
    let d = Detector::new(model, &opts).unwrap().detect(&frame).unwrap();
    assert_eq!((d.map.width, d.map.height), (672, 224));
    assert_eq!(d.windows, 4);
    assert!(d.map.data.iter().all(|v| v.is_finite() && *v >= 0.0));
    assert_eq!(d.score, d.map.data.iter().copied().fold(f32::MIN, f32::max));
}

#[test]
fn inputs_are_fed_in_the_order_the_graph_declares() {
    use prost::Message;
    // The same graph with `keep` declared before `image`.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("swapped");
    std::fs::create_dir(&dir).unwrap();
    let src = fixtures().join("fixture-recon");
    let bytes = std::fs::read(src.join("fixture-recon.onnx")).unwrap();
    let mut proto = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap();
    proto.graph.as_mut().unwrap().input.swap(0, 1);
    assert_eq!(proto.graph.as_ref().unwrap().input[0].name, "keep");
    let graph = dir.join("fixture-recon.onnx");
    std::fs::write(&graph, proto.encode_to_vec()).unwrap();
    std::fs::copy(src.join("manifest.toml"), dir.join("manifest.toml")).unwrap();
    common::repin_graph_sha(&dir, &graph);

    let model = Model::open(&dir).unwrap();
    let schedule = model.manifest.schedule().unwrap();
    for threads in [1, 2] {
        let opts = EngineOptions {
            threads,
            ..one_thread(Precision::F32)
        };
        let mut engine = TractEngine::new(&model, &schedule, &opts).unwrap();
        let mut out = Vec::new();
        engine.run(&npy_f32("image.npy"), &mut out).unwrap();
        let d = max_abs_diff(&out, &npy_f32("reconstruction.npy"));
        assert!(d <= 1e-4, "threads {threads}: {d}");
    }
}

/// The speed rewrites of the export (three Q/K/V MatMuls, a plain Gather, channel-major
/// `decoder_pred`, one `Attention` node per attention) optimise the same way on every
/// architecture: the optimised plans of the rewritten fixture and its plain twin (same
/// weights, `export --plain`) have the op counts recorded per architecture in
/// `tests/fixtures/plan-ops.json` (x86-64 here, aarch64 under qemu: `cross/qemu-test.sh` runs
/// this suite there), and on every recorded architecture the rewrites change the same ops by
/// the same counts (aarch64 also fuses Mul+Add chains, in both forms alike). Our linear layer
/// (`detect::engine::linear`) runs on x86-64 only, so the comparison across architectures
/// takes x86-64's plans with tract's matmuls (`MAEDAY_TRACT_LINEAR=tract`, recorded as
/// `x86_64, tract's matmuls`); the plans with ours are recorded too. Both forms compute the
/// same reconstruction.
#[test]
fn rewritten_and_plain_graphs_optimise_to_the_recorded_ops_on_this_architecture() {
    use std::collections::BTreeMap;
    type Counts = BTreeMap<String, usize>;
    type Plans = BTreeMap<String, Counts>;
    let recorded: BTreeMap<String, Plans> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("plan-ops.json")).unwrap())
            .unwrap();
    // Per op: its count in the rewritten plan minus in the plain one.
    let delta = |plans: &Plans| -> BTreeMap<String, i64> {
        let (fast, plain) = (&plans["fixture-recon"], &plans["fixture-recon-plain"]);
        fast.keys()
            .chain(plain.keys())
            .map(|op| {
                let n = |c: &Counts| c.get(op).copied().unwrap_or(0) as i64;
                (op.clone(), n(fast) - n(plain))
            })
            .filter(|(_, d)| *d != 0)
            .collect()
    };
    let ours = |plans: &Plans| plans.values().any(|c| c.contains_key("MaedayLinear"));
    let deltas: Vec<_> = recorded.values().filter(|p| !ours(p)).map(delta).collect();
    assert!(
        deltas.len() >= 2 && deltas.windows(2).all(|w| w[0] == w[1]),
        "{deltas:?}"
    );

    let mut outputs = Vec::new();
    let plans = |outputs: &mut Vec<Vec<f32>>| -> Plans {
        let mut measured = BTreeMap::new();
        for dir in ["fixture-recon", "fixture-recon-plain"] {
            let model = Model::open(fixtures().join(dir)).unwrap();
            let schedule = model.manifest.schedule().unwrap();
            let opts = one_thread(Precision::F32);
            measured.insert(
                dir.to_string(),
                maeday_edge::detect::engine::plan_op_counts(&model, &schedule, &opts).unwrap(),
            );
            let mut engine = TractEngine::new(&model, &schedule, &opts).unwrap();
            let mut out = Vec::new();
            engine.run(&npy_f32("image.npy"), &mut out).unwrap();
            outputs.push(out);
        }
        measured
    };
    let arch = std::env::consts::ARCH;
    let measured = plans(&mut outputs);
    println!(
        "optimised plan ops on {arch}: {}",
        serde_json::to_string(&measured).unwrap()
    );
    let neutral = if ours(&measured) {
        // Other tests may plan with tract's matmuls meanwhile: correct either way.
        std::env::set_var("MAEDAY_TRACT_LINEAR", "tract");
        let theirs = plans(&mut outputs);
        std::env::remove_var("MAEDAY_TRACT_LINEAR");
        println!(
            "with tract's matmuls: {}",
            serde_json::to_string(&theirs).unwrap()
        );
        let key = format!("{arch}, tract's matmuls");
        if let Some(want) = recorded.get(&key) {
            assert_eq!(&theirs, want, "{key}");
        }
        theirs
    } else {
        measured.clone()
    };
    assert_eq!(delta(&neutral), deltas[0], "{arch}");
    if let Some(want) = recorded.get(arch) {
        assert_eq!(&measured, want, "{arch}");
    }
    for out in &outputs[1..] {
        assert!(max_abs_diff(&outputs[0], out) <= 1e-5);
    }
}

/// The shipped graphs fuse each attention into one ONNX `Attention` node, which tract runs
/// as its flash-attention op; left alone, that op spreads heads over every core (rayon's
/// global pool), past the engine's `threads` and across the workers that already split the
/// masks. The engine keeps it on the calling thread: the knob is set once it loads a model.
#[test]
fn fused_attention_runs_on_the_engine_threads_only() {
    let model = Model::open(fixtures().join("fixture-recon")).unwrap();
    let graph = std::fs::read(model.graph_path()).unwrap();
    assert!(
        graph.windows(b"Attention".len()).any(|w| w == b"Attention"),
        "fixture-recon has no fused attention"
    );
    let schedule = model.manifest.schedule().unwrap();
    let mut engine = TractEngine::new(&model, &schedule, &one_thread(Precision::F32)).unwrap();
    let knob = tract_onnx::tract_core::knobs::all()
        .into_iter()
        .find(|k| k.name == "TRACT_FLASH_SDPA_ST")
        .expect("tract's flash attention has a single-thread knob");
    assert_eq!((knob.current)(), "true");
    let mut out = Vec::new();
    engine.run(&npy_f32("image.npy"), &mut out).unwrap();
    let want = npy_f32("reconstruction.npy");
    assert!(max_abs_diff(&out, &want) <= 1e-4);
}
