//! Few-shot enrollment end to end on real photos, the real default model and the real
//! EfficientNet-Lite0 extractor: banks that find a foreign object, bank files that refuse
//! corruption, enrollment that refuses unusable input, and `eval --shots`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use image::{DynamicImage, GenericImage, RgbImage};
use maeday_edge::bank::features::open_extractor;
use maeday_edge::bank::store::{Shot, StoredBank};
use maeday_edge::detect::detector::{Detection, Detector, DetectorOptions};
use maeday_edge::detect::fuse::ScorerKind;
use maeday_edge::detect::pixel_norm::SceneModel;
use maeday_edge::enroll::{enroll, EnrollSettings};
use maeday_edge::model::manifest::Model;
use serde_json::Value;

mod common;
use common::repo;

const BIN: &str = env!("CARGO_BIN_EXE_maeday-edge");

fn sample(name: &str) -> RgbImage {
    image::open(repo().join("models/samples").join(name))
        .unwrap()
        .to_rgb8()
}

/// A 200 x 200 view of the coins photo (the "part" on the line) at `(x, y)`.
fn coins_at(x: u32, y: u32) -> RgbImage {
    image::imageops::crop_imm(&sample("coins.png"), x, y, 200, 200).to_image()
}

/// The same view with a 48 x 48 piece of the cat photo on it at (120, 80): debris.
fn with_debris(mut view: RgbImage) -> RgbImage {
    let cat = image::imageops::crop_imm(&sample("chelsea.png"), 150, 80, 48, 48).to_image();
    view.copy_from(&cat, 120, 80).unwrap();
    view
}

fn shots() -> Vec<Shot> {
    // A fixed camera that shakes by a few pixels.
    [(40, 30), (43, 31), (46, 34), (41, 35)]
        .iter()
        .map(|&(x, y)| Shot {
            name: format!("coins@{x},{y}"),
            image: DynamicImage::ImageRgb8(coins_at(x, y)),
        })
        .collect()
}

fn options() -> DetectorOptions {
    DetectorOptions {
        masks: Some(4),
        scorer: Some(ScorerKind::Maeday),
        ..Default::default()
    }
}

fn default_model() -> Model {
    Model::open(repo().join("models/default")).unwrap()
}

fn enrolled(seed: u64) -> (Detector, StoredBank) {
    let mut d = Detector::new(default_model(), &options()).unwrap();
    let extractor = Arc::new(open_extractor(None).unwrap());
    let settings = EnrollSettings {
        seed,
        ..Default::default()
    };
    let bank = enroll(&mut d, extractor.clone(), &shots(), &settings).unwrap();
    d.attach_stored(extractor, std::slice::from_ref(&bank))
        .unwrap();
    (d, bank)
}

#[test]
fn an_enrolled_bank_finds_debris_on_a_view_it_never_saw() {
    let (mut d, bank) = enrolled(0);
    assert_eq!(bank.meta.rows_before_coreset, 4 * 784);
    assert_eq!(bank.meta.rows, 784);
    assert_eq!(bank.meta.held_out, "leave-one-out");
    // Another shake of the same view.
    let good = DynamicImage::ImageRgb8(coins_at(44, 32));
    let bad = DynamicImage::ImageRgb8(with_debris(coins_at(44, 32)));
    for kind in [
        ScorerKind::Bank,
        ScorerKind::Ensemble,
        ScorerKind::EnsembleNorm,
    ] {
        d.set_scorer(kind).unwrap();
        let g = d.detect(&good).unwrap();
        let b = d.detect(&bad).unwrap();
        let t = d.thresholds().unwrap();
        assert!(
            b.score > g.score + 1.0 && b.score > t.image,
            "{kind}: debris {} vs good {} (threshold {})",
            b.score,
            g.score,
            t.image
        );
        // The map peaks on the debris: (120..168, 80..128) of 200 px, squashed to 224.
        let (w, _) = (b.map.width, b.map.height);
        let peak = b
            .map
            .data
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        let (px, py) = (
            (peak % w) as f32 * 200.0 / 224.0,
            (peak / w) as f32 * 200.0 / 224.0,
        );
        assert!(
            (110.0..178.0).contains(&px) && (70.0..138.0).contains(&py),
            "{kind}: peak at ({px}, {py})"
        );
    }
    // The ensemble's parts are each scorer's standardised map.
    let mut d2 = Detector::new(
        default_model(),
        &DetectorOptions {
            keep_parts: true,
            ..options()
        },
    )
    .unwrap();
    d2.attach_stored(
        Arc::new(open_extractor(None).unwrap()),
        std::slice::from_ref(&bank),
    )
    .unwrap();
    d2.set_scorer(ScorerKind::Ensemble).unwrap();
    let det = d2.detect(&bad).unwrap();
    let names: Vec<&str> = det.parts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["maeday", "bank0"]);
    assert_sum_of(&det, 0, 1);
    // `ensemble-norm` sums few-shot MAEDAY's standardised map and the bank's, with the
    // thresholds enrollment calibrated on that sum.
    d2.set_scorer(ScorerKind::EnsembleNorm).unwrap();
    let det = d2.detect(&bad).unwrap();
    let names: Vec<&str> = det.parts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["maeday", "maeday-norm", "bank0"]);
    assert_sum_of(&det, 1, 2);
    let pixel = bank.meta.maeday_pixel.as_ref().unwrap();
    assert_eq!(d2.thresholds(), pixel.ensemble_thresholds);
    assert_ne!(
        pixel.ensemble_thresholds,
        Some(bank.meta.thresholds.ensemble)
    );
    // A bank from before `ensemble-norm` (no thresholds for it) is refused for it.
    let mut old = bank.clone();
    old.meta.maeday_pixel.as_mut().unwrap().ensemble_thresholds = None;
    d2.attach_stored(Arc::new(open_extractor(None).unwrap()), &[old])
        .unwrap();
    let e = d2.set_scorer(ScorerKind::EnsembleNorm).unwrap_err();
    assert!(e.to_string().contains("enroll again"), "{e}");
}

/// The map is the sum of parts `a` and `b` (weights 1), and the image score its max.
fn assert_sum_of(det: &Detection, a: usize, b: usize) {
    for (i, v) in det.map.data.iter().enumerate() {
        let sum = det.parts[a].1.data[i] + det.parts[b].1.data[i];
        assert!((v - sum).abs() <= 1e-4 * sum.abs().max(1.0), "{v} vs {sum}");
    }
    assert_eq!(det.score, det.map.max());
}

/// Few-shot MAEDAY's statistics are per pixel for a camera that shakes by a few pixels and
/// pooled for a scene that slides under it (coins passing by, 40 px a frame), as the
/// enrollment's leave-one-out check decides; `bank.toml` records the evidence, and a bank
/// whose recorded choice disagrees with its statistics is refused.
#[test]
fn the_scene_check_tells_a_fixed_scene_from_one_that_moves() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, bank) = enrolled(0);
    let pixel = bank.meta.maeday_pixel.as_ref().unwrap();
    let check = pixel.scene.expect("four frames: the scene was checked");
    assert_eq!(check.model, SceneModel::PerPixel, "{check:?}");
    assert!(check.per_pixel_held_out_max <= check.pooled_held_out_max);
    assert_eq!(pixel.params.model, SceneModel::PerPixel);

    let sliding: Vec<Shot> = [0, 40, 80, 120]
        .iter()
        .map(|&x| Shot {
            name: format!("coins@{x},30"),
            image: DynamicImage::ImageRgb8(coins_at(x, 30)),
        })
        .collect();
    let mut d = Detector::new(default_model(), &options()).unwrap();
    let extractor = Arc::new(open_extractor(None).unwrap());
    let mut moving = enroll(&mut d, extractor, &sliding, &EnrollSettings::default()).unwrap();
    let pixel = moving.meta.maeday_pixel.as_ref().unwrap();
    let check = pixel.scene.unwrap();
    assert_eq!(check.model, SceneModel::Pooled, "{check:?}");
    assert_eq!(pixel.params.model, SceneModel::Pooled);
    assert!(check.pooled_held_out_max < check.per_pixel_held_out_max);

    // Saved and loaded as is; a hand-edited choice that the statistics do not follow is not.
    let dir = tmp.path().join("moving");
    moving.save(&dir, &sliding).unwrap();
    assert_eq!(StoredBank::load(&dir).unwrap().meta, moving.meta);
    let meta = dir.join("bank.toml");
    let text = std::fs::read_to_string(&meta).unwrap();
    let edited = text.replacen("model = \"pooled\"", "model = \"per-pixel\"", 1);
    assert_ne!(edited, text);
    std::fs::write(&meta, edited).unwrap();
    let e = format!("{:#}", StoredBank::load(&dir).unwrap_err());
    assert!(e.contains("maeday_pixel.scene chose"), "{e}");
}

#[test]
fn enrollment_is_deterministic_per_seed() {
    let (_, a) = enrolled(3);
    let (_, b) = enrolled(3);
    let (_, c) = enrolled(4);
    assert_eq!(a.meta.features_sha256, b.meta.features_sha256);
    assert_eq!(a.meta.thresholds, b.meta.thresholds);
    assert_ne!(a.meta.features_sha256, c.meta.features_sha256);
}

#[test]
fn bank_files_round_trip_and_refuse_corruption_and_other_extractors() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, mut bank) = enrolled(0);
    let dir = tmp.path().join("bank");
    bank.save(&dir, &shots()).unwrap();
    assert_eq!(std::fs::read_dir(dir.join("shots")).unwrap().count(), 4);
    let loaded = StoredBank::load(&dir).unwrap();
    assert_eq!(loaded.meta, bank.meta);
    assert_eq!(loaded.bank.features(), bank.bank.features());

    // A detector opened on the saved bank scores like the one that enrolled it.
    d.set_scorer(ScorerKind::Ensemble).unwrap();
    let frame = DynamicImage::ImageRgb8(with_debris(coins_at(44, 32)));
    let want = d.detect(&frame).unwrap().score;
    let mut opened = Detector::new(
        default_model(),
        &DetectorOptions {
            scorer: None,
            banks: vec![dir.clone()],
            ..options()
        },
    )
    .unwrap();
    assert_eq!(
        opened.scorer(),
        ScorerKind::Ensemble,
        "a bank means the ensemble"
    );
    assert_eq!(opened.detect(&frame).unwrap().score, want);

    // One flipped bit, a truncated file, another extractor: refused with the reason.
    let features = dir.join("features.f32");
    let original = std::fs::read(&features).unwrap();
    let mut flipped = original.clone();
    flipped[1000] ^= 1;
    std::fs::write(&features, &flipped).unwrap();
    let e = format!("{:#}", StoredBank::load(&dir).unwrap_err());
    assert!(e.contains("corrupt"), "{e}");
    std::fs::write(&features, &original[..original.len() - 8]).unwrap();
    let e = format!("{:#}", StoredBank::load(&dir).unwrap_err());
    assert!(e.contains("truncated"), "{e}");
    std::fs::write(&features, &original).unwrap();
    let meta = dir.join("bank.toml");
    let text = std::fs::read_to_string(&meta).unwrap();
    // A threshold that is not a number would never flag: refused, naming it.
    let threshold = format!("image = {}", bank.meta.thresholds.ensemble.image);
    assert!(text.contains(&threshold), "{text}");
    for bad in ["nan", "inf", "-inf"] {
        std::fs::write(
            &meta,
            text.replacen(&threshold, &format!("image = {bad}"), 1),
        )
        .unwrap();
        let e = format!("{:#}", StoredBank::load(&dir).unwrap_err());
        assert!(
            e.contains("thresholds.ensemble.image is not a finite number"),
            "{e}"
        );
    }
    std::fs::write(
        &meta,
        text.replace(&bank.meta.extractor_sha256, &"0".repeat(64)),
    )
    .unwrap();
    let e = format!(
        "{:#}",
        Detector::new(
            default_model(),
            &DetectorOptions {
                scorer: None,
                banks: vec![dir.clone()],
                ..options()
            }
        )
        .err()
        .unwrap()
    );
    assert!(e.contains("enroll again"), "{e}");
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn save(img: &RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

#[test]
fn enroll_refuses_unusable_input_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p);
    let out = t("bank").display().to_string();
    std::fs::create_dir_all(t("empty")).unwrap();
    save(&coins_at(0, 0), &t("tiny/a.png"));
    save(&RgbImage::new(16, 40), &t("tiny/b.png"));
    save(&coins_at(0, 0), &t("corrupt/a.png"));
    std::fs::write(t("corrupt/b.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    for (dir, want) in [
        ("empty", "no images"),
        ("tiny", "16x40: too small"),
        ("corrupt", "cannot use it as a good frame"),
        ("missing", "does not exist"),
    ] {
        let good = t(dir).display().to_string();
        let o = cli(&["enroll", "--good", &good, "--out", &out, "--masks", "2"]);
        assert!(!o.status.success(), "{dir}: accepted");
        assert!(stderr(&o).contains(want), "{dir}: {}", stderr(&o));
        assert!(!t("bank").exists(), "{dir}: a bank was written");
    }
    // Asking for a bank scorer without a bank is an error too, not MAEDAY in disguise.
    let img = t("tiny/a.png").display().to_string();
    let o = cli(&["score", "--scorer", "bank", "--masks", "2", &img]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs a memory bank"), "{}", stderr(&o));
    // (The built-in demo ships a bank: a config without one.)
    let cfg = t("nobank.toml");
    std::fs::write(
        &cfg,
        format!(
            "device_id = \"t\"\n[model]\nmasks = 2\n[[camera]]\nname = \"c\"\n\
             source = {{ kind = \"replay\", path = \"{}\" }}\n",
            t("tiny").display()
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let o = cli(&[
        "run",
        "--config",
        &cfg,
        "--scorer",
        "ensemble",
        "--max-frames",
        "1",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs a memory bank"), "{}", stderr(&o));
}

/// `maeday-edge eval --dataset DATA --masks 2 --report REPORT EXTRA...`, which must succeed;
/// its report.
fn eval_report(data: &str, report: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["eval", "--dataset", data, "--masks", "2"];
    args.extend_from_slice(&["--report", report.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let o = cli(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

/// One field of every scored image in an eval report, in the report's order.
fn per_image(r: &Value, key: &str) -> Vec<Value> {
    let images = r["images"].as_array().unwrap();
    images.iter().map(|i| i[key].clone()).collect()
}

#[test]
fn cli_enroll_then_score_and_eval_with_shots() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p);
    for (i, &(x, y)) in [(40, 30), (43, 31), (46, 34), (41, 35), (44, 32), (42, 33)]
        .iter()
        .enumerate()
    {
        save(&coins_at(x, y), &t(&format!("data/good/{i}.png")));
    }
    for (i, &(x, y)) in [(41, 31), (45, 33), (43, 35)].iter().enumerate() {
        save(
            &with_debris(coins_at(x, y)),
            &t(&format!("data/debris/{i}.png")),
        );
    }
    let bank = t("bank").display().to_string();
    let good = t("data/good").display().to_string();
    let o = cli(&[
        "enroll", "--good", &good, "--limit", "3", "--out", &bank, "--masks", "2", "--seed", "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["good_images"].as_u64(), r["seed"].as_u64()),
        (Some(3), Some(5))
    );
    assert_eq!(r["rows"], 3 * 784 / 4);

    let clean = t("data/good/4.png").display().to_string();
    let dirty = t("data/debris/1.png").display().to_string();
    let score = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["score", "--bank", &bank, "--masks", "2"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&clean, &dirty]);
        let o = cli(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let ensemble = score(&[]);
    assert_eq!(ensemble[0]["scorer"], "ensemble");
    assert!(ensemble[1]["score"].as_f64() > ensemble[0]["score"].as_f64());
    // The bank alone, with its thresholds from three good frames: the right verdicts.
    let bank_only = score(&["--scorer", "bank"]);
    assert_eq!(bank_only[0]["scorer"], "bank");
    assert_eq!(bank_only[0]["anomalous"], false, "{}", bank_only[0]);
    assert_eq!(bank_only[1]["anomalous"], true, "{}", bank_only[1]);

    // eval --shots: the shots come from the normal images and are not evaluated.
    let report = t("report.json");
    let data = t("data").display().to_string();
    let r = eval_report(
        &data,
        &report,
        &["--shots", "2", "--shot-seed", "1", "--bank-seeds", "0,1"],
    );
    let shots: Vec<PathBuf> = r["shots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| PathBuf::from(s.as_str().unwrap()))
        .collect();
    assert_eq!(shots.len(), 2);
    // Two shots: the scene check ran, and the report says what it chose.
    let model = r["scene"]["model"].as_str().unwrap();
    assert!(["per-pixel", "pooled"].contains(&model), "{}", r["scene"]);
    assert!(r["scene"]["pooled_held_out_max"]
        .as_f64()
        .unwrap()
        .is_finite());
    let evaluated = per_image(&r, "image");
    assert_eq!(evaluated.len(), 4 + 3);
    for s in &shots {
        assert!(
            !evaluated.contains(&Value::from(s.to_str().unwrap())),
            "shot {s:?} evaluated"
        );
    }
    let scorers = r["scorers"].as_object().unwrap();
    let mut names: Vec<&str> = scorers.keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bank0",
            "bank0+bank1",
            "bank1",
            "maeday",
            "maeday+bank0",
            "maeday+bank0+bank1",
            "maeday+bank1"
        ]
    );
    // Pasted cat fur on coins: every bank ranks all three debris views above every good view.
    for b in ["bank0", "bank1", "bank0+bank1"] {
        assert_eq!(
            scorers[b]["image_auroc"].as_f64(),
            Some(1.0),
            "{b}: {}",
            scorers[b]
        );
    }
    assert_eq!(
        r["image_auroc"],
        scorers["maeday+bank0+bank1"]["image_auroc"]
    );
    // Each scorer reports its own per-group figures; the served one's are the report's.
    assert_eq!(r["per_group"], scorers["maeday+bank0+bank1"]["per_group"]);
    for b in ["bank0", "bank1"] {
        let groups = scorers[b]["per_group"].as_object().unwrap();
        assert!(!groups.is_empty());
        assert!(groups
            .values()
            .all(|g| g["image_auroc"].as_f64() == Some(1.0)));
    }
    assert_eq!(r["bank_rows"].as_array().unwrap().len(), 2);

    // One bank, served as `ensemble-norm`: per image its score is the `maeday-norm+bank0`
    // combination's; every calibrated scorer is reported at its enrollment's threshold.
    let r = eval_report(
        &data,
        &report,
        &[
            "--shots",
            "2",
            "--bank-seeds",
            "0",
            "--scorer",
            "ensemble-norm",
            "--compare-fusions",
        ],
    );
    let labels: Vec<bool> = per_image(&r, "anomalous")
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect();
    let served: Vec<f64> = per_image(&r, "score")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let combo = |name: &str| -> Vec<f64> {
        r["scorers"][name]["scores"]
            .as_array()
            .unwrap_or_else(|| panic!("no {name} in {}", r["scorers"]))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let close = |a: &[f64], b: &[f64]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-4 * y.abs().max(1.0))
    };
    assert!(close(&served, &combo("maeday-norm+bank0")), "{served:?}");
    assert!(!close(&served, &combo("maeday+bank0")), "{served:?}");
    let ops = r["operating_points"].as_object().unwrap();
    let mut names: Vec<&str> = ops.keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["bank0", "maeday+bank0", "maeday-norm", "maeday-norm+bank0"]
    );
    for (name, op) in ops {
        let t = op["image_threshold"].as_f64().unwrap();
        let flagged = |bad: bool| {
            combo(name)
                .iter()
                .zip(&labels)
                .filter(|(s, l)| **l == bad && **s > t)
                .count()
        };
        assert_eq!(
            op["false_alarms"].as_u64(),
            Some(flagged(false) as u64),
            "{name}"
        );
        assert_eq!(
            op["detected"].as_u64(),
            Some(flagged(true) as u64),
            "{name}"
        );
        assert_eq!(op["normal"], 4);
        assert_eq!(op["anomalous"], 3);
    }
}
