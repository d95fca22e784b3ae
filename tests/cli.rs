//! The `maeday-edge` binary end to end: real graphs, real photos, real files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::repin_graph_sha;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn samples() -> PathBuf {
    repo().join("models/samples")
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_maeday-edge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("MAEDAY_MODEL")
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "the binary panicked: {stderr}"
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A copy of a fixture model folder that a test may rewrite.
fn model_copy(name: &str, tmp: &Path) -> PathBuf {
    let dst = tmp.join(name);
    fs::create_dir_all(&dst).unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn score_prints_one_json_line_per_image_and_writes_heatmaps() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let imgs = [samples().join("coffee.png"), samples().join("camera.png")];
    let o = run(&[
        "score",
        "--model",
        s(&fixture("fixture-recon")),
        "--out",
        s(&out_dir),
        s(&imgs[0]),
        s(&imgs[1]),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (line, img) in lines.iter().zip(&imgs) {
        assert_eq!(line["image"], s(img));
        assert!(line["score"].as_f64().unwrap() > 0.0);
        assert!(line["latency_ms"].as_f64().unwrap() > 0.0);
        assert!(
            line["threshold"].is_null() && line["anomalous"].is_null(),
            "uncalibrated model gives no verdict"
        );
        assert_eq!(line["model_sha256"].as_str().unwrap().len(), 64);
        assert!(line["schedule"]
            .as_str()
            .unwrap()
            .starts_with("random-n4-k49-s0-"));
    }
    // The heatmap is at the frame's own resolution; no mask without a pixel threshold.
    let heat = image::open(out_dir.join("camera.heatmap.png")).unwrap();
    let frame = image::open(&imgs[1]).unwrap();
    assert_eq!(
        (heat.width(), heat.height()),
        (frame.width(), frame.height())
    );
    assert!(!out_dir.join("camera.mask.png").exists());
    // Different images get different scores; the same image the same score.
    assert_ne!(lines[0]["score"], lines[1]["score"]);
    let again = run(&[
        "score",
        "--model",
        s(&fixture("fixture-recon")),
        s(&imgs[0]),
    ]);
    let again: serde_json::Value = serde_json::from_str(stdout(&again).trim()).unwrap();
    assert_eq!(again["score"], lines[0]["score"]);
}

#[test]
fn calibrate_writes_thresholds_that_score_then_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy("fixture-recon", tmp.path());
    let good = tmp.path().join("good");
    fs::create_dir(&good).unwrap();
    for n in ["coffee.png", "chelsea.png", "coins.png"] {
        fs::copy(samples().join(n), good.join(n)).unwrap();
    }
    let o = run(&["calibrate", "--model", s(&model), "--good", s(&good)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["good_images"], 3);
    let t_img = r["image_threshold"].as_f64().unwrap();
    let t_pix = r["pixel_threshold"].as_f64().unwrap();
    // The rule: threshold above the largest normal score it was fitted on (q99 + margin).
    assert!(t_img >= r["image_scores"]["median"].as_f64().unwrap());
    let manifest = fs::read_to_string(model.join("manifest.toml")).unwrap();
    assert!(
        manifest.contains("[thresholds]") && manifest.contains("[calibration]"),
        "{manifest}"
    );
    // The rewritten manifest still loads (sha256 unchanged) and its thresholds are used.
    let out_dir = tmp.path().join("out");
    let o = run(&[
        "score",
        "--model",
        s(&model),
        "--out",
        s(&out_dir),
        s(&samples().join("coffee.png")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!((line["threshold"].as_f64().unwrap() - t_img).abs() < 1e-3 * t_img.abs().max(1.0));
    assert_eq!(
        line["anomalous"].as_bool().unwrap(),
        line["score"].as_f64().unwrap() > t_img
    );
    let mask = image::open(out_dir.join("coffee.mask.png"))
        .unwrap()
        .to_luma8();
    assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    assert!(t_pix > 0.0);
}

/// Draw a bright square on a real photo and return (image, mask).
fn defect(src: &Path, x0: u32, y0: u32, side: u32) -> (image::RgbImage, image::GrayImage) {
    let mut img = image::open(src).unwrap().to_rgb8();
    let mut mask = image::GrayImage::new(img.width(), img.height());
    for y in y0..y0 + side {
        for x in x0..x0 + side {
            img.put_pixel(x, y, image::Rgb([255, 0, 255]));
            mask.put_pixel(x, y, image::Luma([255]));
        }
    }
    (img, mask)
}

#[test]
fn eval_reads_mvtec_magnetic_tile_and_image_level_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = ["coffee.png", "chelsea.png", "coins.png", "camera.png"];
    // MVTec AD layout.
    let cat = tmp.path().join("mvtec/widget");
    for d in ["test/good", "test/paint", "ground_truth/paint"] {
        fs::create_dir_all(cat.join(d)).unwrap();
    }
    // magnetic-tile layout.
    let mt = tmp.path().join("mt");
    for d in ["MT_Free/Imgs", "MT_Blowhole/Imgs", "MT_Crack/Imgs"] {
        fs::create_dir_all(mt.join(d)).unwrap();
    }
    // image-level layout.
    let lvl = tmp.path().join("floor/corridor");
    fs::create_dir_all(&lvl).unwrap();
    for (i, p) in photos.iter().enumerate() {
        let src = samples().join(p);
        let (bad, mask) = defect(&src, 20 + 10 * i as u32, 30, 60);
        fs::copy(&src, cat.join(format!("test/good/{i:03}.png"))).unwrap();
        bad.save(cat.join(format!("test/paint/{i:03}.png")))
            .unwrap();
        mask.save(cat.join(format!("ground_truth/paint/{i:03}_mask.png")))
            .unwrap();
        image::open(&src)
            .unwrap()
            .to_rgb8()
            .save(mt.join(format!("MT_Free/Imgs/f{i}.jpg")))
            .unwrap();
        image::GrayImage::new(mask.width(), mask.height())
            .save(mt.join(format!("MT_Free/Imgs/f{i}.png")))
            .unwrap();
        // Two defect groups, two images each.
        let group = if i < 2 { "MT_Blowhole" } else { "MT_Crack" };
        bad.save(mt.join(format!("{group}/Imgs/b{i}.jpg"))).unwrap();
        mask.save(mt.join(format!("{group}/Imgs/b{i}.png")))
            .unwrap();
        fs::copy(&src, lvl.join(format!("normal{i}.png"))).unwrap();
        bad.save(lvl.join(format!("debris{i}.png"))).unwrap();
    }
    let model = fixture("fixture-map");
    for (dir, layout, pixels) in [
        (tmp.path().join("mvtec"), "mvtec", true),
        (mt.clone(), "magnetic-tile", true),
        (tmp.path().join("floor"), "image-level", false),
    ] {
        let report = tmp.path().join(format!("{layout}.json"));
        let o = run(&[
            "eval",
            "--model",
            s(&model),
            "--dataset",
            s(&dir),
            "--report",
            s(&report),
        ]);
        assert!(o.status.success(), "{layout}: {}", stderr(&o));
        assert!(stdout(&o).contains("image AUROC"), "{}", stdout(&o));
        let r: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(r["layout"], layout);
        assert_eq!(r["counts"]["normal"], 4);
        assert_eq!(r["counts"]["anomalous"], 4);
        assert_eq!(r["counts"]["failed"], 0);
        let a = r["image_auroc"].as_f64().unwrap();
        // Only groups holding anomalies are listed, each with a real AUROC.
        let groups = r["per_group"].as_object().unwrap();
        assert!(
            !groups.is_empty() && groups.values().all(|g| g["image_auroc"].is_f64()),
            "{groups:?}"
        );
        assert!(!groups.contains_key("MT_Free") && !groups.contains_key("widget/good"));
        assert!((0.0..=1.0).contains(&a));
        if pixels {
            assert!(r["counts"]["with_masks"].as_u64().unwrap() >= 4);
            let p = r["pixel_auroc"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p));
            // Even a random-weight MAE reconstructs a flat magenta square badly.
            assert!(p > 0.5, "{layout}: pixel AUROC {p}");
            let pro = r["pro_0_3"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&pro), "{layout}: PRO {pro}");
            // Per group: its images and every normal image. The groups' defect pixels
            // add up to all of them; with one group its pixels are every pixel.
            let share: f64 = groups
                .values()
                .map(|g| g["defect_pixel_share"].as_f64().unwrap())
                .sum();
            assert!((share - 1.0).abs() < 1e-9, "{layout}: {groups:?}");
            assert!(groups
                .values()
                .all(|g| g["defect_pixel_share"].as_f64() > Some(0.0)));
            if groups.len() == 1 {
                let g = groups.values().next().unwrap();
                assert_eq!(g["pixel_auroc"].as_f64(), Some(p), "{layout}");
                assert_eq!(g["pro_0_3"].as_f64(), Some(pro), "{layout}");
            }
        } else {
            assert!(groups.values().all(|g| g.get("pixel_auroc").is_none()));
            assert!(r["pixel_auroc"].is_null() && r["pro_0_3"].is_null());
        }
    }
    // --limit picks per class, reproducibly.
    let o = run(&[
        "eval",
        "--model",
        s(&model),
        "--dataset",
        s(&mt),
        "--limit",
        "2",
        "--seed",
        "3",
        "--report",
        s(&tmp.path().join("l.json")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tmp.path().join("l.json")).unwrap()).unwrap();
    assert_eq!(
        (
            r["counts"]["normal"].as_u64(),
            r["counts"]["anomalous"].as_u64()
        ),
        (Some(2), Some(2))
    );
}

#[test]
fn bad_images_fail_clearly_without_stopping_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("notes.txt");
    fs::write(&text, "this is not an image").unwrap();
    let fake_png = tmp.path().join("fake.png");
    fs::write(&fake_png, "this is not a png either").unwrap();
    let truncated = tmp.path().join("truncated.png");
    let bytes = fs::read(samples().join("coffee.png")).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let missing = tmp.path().join("missing.png");
    let good = samples().join("coins.png");
    let o = run(&[
        "score",
        "--model",
        s(&fixture("fixture-recon")),
        s(&missing),
        s(&text),
        s(&fake_png),
        s(&truncated),
        s(&good),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    for (file, message) in [
        ("missing.png", "cannot open image"),
        ("notes.txt", "not an image in a supported format"),
        ("fake.png", "Invalid PNG signature"),
        ("truncated.png", "cannot decode"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("no error for {file}: {err}"));
        assert!(line.contains(message), "{file}: {line}");
    }
    assert!(err.contains("4 of 5 images could not be scored"), "{err}");
    // The good image in the same batch was still scored.
    assert_eq!(stdout(&o).lines().count(), 1);
    assert!(stdout(&o).contains("coins.png"));
}

fn edit_manifest(model: &Path, from: &str, to: &str) {
    let path = model.join("manifest.toml");
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in manifest");
    fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn manifest_graph_mismatches_are_rejected_before_the_first_frame() {
    let img = samples().join("coins.png");
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "fixture-recon",
            "keep = 49",
            "keep = 64",
            "exported with keep = 49 but the manifest says masks.keep = 64",
        ),
        (
            "fixture-recon",
            "kind = \"reconstruction\"",
            "kind = \"anomaly_map\"",
            "graph outputs [\"reconstruction\"]",
        ),
        (
            "fixture-map",
            "size = 224",
            "size = 256",
            "exported with input_size = 224 but the manifest says input.size = 256",
        ),
        (
            "fixture-recon",
            "patch_size = 16",
            "patch_size = 14",
            "exported with patch_size = 16 but the manifest says input.patch_size = 14",
        ),
        (
            "fixture-recon",
            "patch_size = 16",
            "patch_size = 15",
            "must be a positive multiple",
        ),
        (
            "fixture-recon",
            "format_version = 1",
            "format_version = 9",
            "format_version 9 is not supported",
        ),
        (
            "fixture-recon",
            "gaussian_size = 7",
            "gaussian_size = 6",
            "gaussian_size must be odd",
        ),
        (
            "fixture-recon",
            "kind = \"random\"",
            "kind = \"spiral\"",
            "unknown variant",
        ),
    ];
    for (name, from, to, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let model = model_copy(name, tmp.path());
        edit_manifest(&model, from, to);
        let o = run(&["score", "--model", s(&model), s(&img)]);
        assert!(!o.status.success(), "{from} -> {to} was accepted");
        assert!(stderr(&o).contains(want), "{from} -> {to}: {}", stderr(&o));
        assert!(stdout(&o).is_empty());
    }
    // A graph that is not the one the manifest pins.
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy("fixture-recon", tmp.path());
    fs::copy(
        fixture("fixture-map/fixture-map.onnx"),
        model.join("fixture-recon.onnx"),
    )
    .unwrap();
    let o = run(&["score", "--model", s(&model), s(&img)]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("does not match its manifest: sha256"),
        "{}",
        stderr(&o)
    );
    // A corrupt graph whose hash was updated to match.
    fs::write(model.join("fixture-recon.onnx"), b"\x08\x07garbage").unwrap();
    repin_graph_sha(&model, &model.join("fixture-recon.onnx"));
    let o = run(&["score", "--model", s(&model), s(&img)]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot parse ONNX graph"),
        "{}",
        stderr(&o)
    );
    // A graph without our contract metadata whose patch grid disagrees with the manifest:
    // caught by the warm-up frame at load time, reported as an error, no crash.
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy("fixture-recon", tmp.path());
    let graph = model.join("fixture-recon.onnx");
    let bytes = fs::read(&graph).unwrap();
    let mut edited = bytes.clone();
    let mut stripped = 0;
    while let Some(pos) = edited.windows(7).position(|w| w == b"maeday.") {
        edited[pos..pos + 6].copy_from_slice(b"vendor");
        stripped += 1;
    }
    assert_eq!(stripped, 5, "the exporter writes five maeday.* keys");
    fs::write(&graph, &edited).unwrap();
    repin_graph_sha(&model, &graph);
    edit_manifest(&model, "patch_size = 16", "patch_size = 14");
    let o = Command::new(env!("CARGO_BIN_EXE_maeday-edge"))
        .args(["score", "--model", s(&model), s(&img)])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("fails on the manifest's shapes"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("no maeday.* metadata"),
        "{}",
        stderr(&o)
    );
    // Without metadata, the declared input dims still catch a wrong K.
    edit_manifest(&model, "patch_size = 14", "patch_size = 16");
    edit_manifest(&model, "keep = 49", "keep = 64");
    let o = run(&["score", "--model", s(&model), s(&img)]);
    assert!(
        stderr(&o).contains("input \"keep\" dim 1 is 49 in the graph but 64 by the manifest"),
        "{}",
        stderr(&o)
    );
    // No model folder at all.
    let o = run(&["score", "--model", "/nonexistent/model", s(&img)]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("model folder /nonexistent/model does not exist"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_settings_are_usage_errors() {
    let img = samples().join("coins.png");
    let m = fixture("fixture-recon");
    for (args, want) in [
        (vec!["--fit", "stretch"], "unknown fit"),
        (vec!["--precision", "f8"], "unknown precision"),
        (vec!["--schedule", "balanced", "--masks", "0"], "at least 1"),
        (vec!["--threads", "0"], "--threads must be at least 1"),
    ] {
        let mut all = vec!["score", "--model", s(&m)];
        all.extend(args.iter().copied());
        all.push(s(&img));
        let o = run(&all);
        assert!(!o.status.success(), "{args:?} accepted");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    let o = run(&["eval", "--model", s(&m), "--dataset", "/nonexistent/data"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("dataset folder /nonexistent/data does not exist"));
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let bash = run(&["completions", "bash"]);
    assert!(bash.status.success(), "{}", stderr(&bash));
    let script = stdout(&bash);
    for word in ["maeday-edge", "calibrate", "--max-frames", "--bank-seeds"] {
        assert!(script.contains(word), "bash completions lack {word}");
    }
    let zsh = run(&["completions", "zsh"]);
    assert!(zsh.status.success() && stdout(&zsh).contains("#compdef maeday-edge"));
    assert!(!run(&["completions", "tcsh"]).status.success());

    let man = run(&["man"]);
    assert!(man.status.success(), "{}", stderr(&man));
    let page = stdout(&man);
    assert!(
        page.starts_with(".ie") || page.starts_with(".TH"),
        "{}",
        &page[..80]
    );
    assert!(page.contains(".TH maeday-edge"), "no title");
    // Every subcommand has its own section with its own flags.
    for (section, flag) in [
        ("RUN", "max\\-frames"),
        ("EVAL", "bank\\-seeds"),
        ("SCORE", "out"),
    ] {
        assert!(
            page.contains(&format!(".SH \"{section}\"")),
            "no {section} section"
        );
        assert!(page.contains(flag), "no {flag}");
    }
}

/// Under systemd (stderr is the stream `$JOURNAL_STREAM` names) every log line carries its
/// syslog priority for journald, and the per-frame console lines are off unless the config
/// asks for them; in a terminal, neither.
#[test]
fn under_the_journal_lines_carry_priorities_and_per_frame_lines_are_off() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let write_config = |console: &str| {
        let path = tmp.path().join(format!("journal{console}.toml"));
        let text = format!(
            "device_id = \"j\"\n{console}\n[model]\nmasks = 2\nthreads = 1\n[[camera]]\n\
             name = \"c\"\nsource = {{ kind = \"replay\", path = \"{}\" }}\n",
            samples().join("coffee-224.png").display()
        );
        fs::write(&path, text).unwrap();
        path
    };
    let daemon = |config: &Path, journal: bool| -> String {
        let log = tmp.path().join("stderr.log");
        let file = fs::File::create(&log).unwrap();
        let meta = file.metadata().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_maeday-edge"));
        cmd.args(["run", "--config", s(config), "--max-frames", "1"])
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .stderr(file);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        fs::read_to_string(&log).unwrap()
    };
    let default = write_config("");
    let journal = daemon(&default, true);
    let lines: Vec<&str> = journal.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let prio = l
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .map(|(p, _)| p);
        assert!(
            matches!(prio, Some("3" | "4" | "6" | "7")),
            "no priority: {l}"
        );
    }
    assert!(
        !journal.contains(" #1 "),
        "a per-frame line went to the journal: {journal}"
    );
    let forced = daemon(&write_config("console = true"), true);
    assert!(
        forced.contains(" #1 "),
        "console = true is ignored: {forced}"
    );
    let terminal = daemon(&default, false);
    assert!(
        terminal.contains(" #1 ") && !terminal.starts_with('<'),
        "{terminal}"
    );
    // A $JOURNAL_STREAM inherited but not naming stderr (a redirect) changes nothing.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_maeday-edge"));
    let out = cmd
        .args(["run", "--config", s(&default), "--max-frames", "1"])
        .env("RUST_LOG", "info")
        .env("JOURNAL_STREAM", "1:1")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(" #1 "));
}

/// `export` writes opset 23 (one `Attention` node per attention), past the 18 tract is
/// tested on: the default log stays quiet about it. An opset neither tract nor maeday-edge
/// tests gets a warning naming it, and the graph still runs.
#[test]
fn only_opsets_nobody_tests_are_warned_about() {
    use prost::Message;
    let score = |model: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_maeday-edge"))
            .args([
                "score",
                "--model",
                s(model),
                s(&samples().join("coins.png")),
            ])
            .env_remove("RUST_LOG")
            .env_remove("MAEDAY_MODEL")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let shipped = fixture("fixture-recon");
    let bytes = fs::read(shipped.join("fixture-recon.onnx")).unwrap();
    let mut proto = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap();
    let opset = proto
        .opset_import
        .iter_mut()
        .find(|o| o.domain.is_empty())
        .unwrap();
    assert_eq!(opset.version, 23);
    let err = score(&shipped);
    assert!(
        !err.contains("opset") && !err.contains("operator set"),
        "{err}"
    );

    opset.version = 24;
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy("fixture-recon", tmp.path());
    let graph = model.join("fixture-recon.onnx");
    fs::write(&graph, proto.encode_to_vec()).unwrap();
    repin_graph_sha(&model, &graph);
    let err = score(&model);
    assert!(err.contains("uses ONNX opset 24"), "{err}");
}
