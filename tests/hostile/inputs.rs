//! See tests/hostile.rs. Bounded decoding of frames (issue 16, item 3) and configs that
//! `--check` accepts never crash the daemon (item 7).

#[allow(unused_imports)]
use super::common::daemon::*;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::common::repo;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run the daemon on `cfg` until it ends by itself; it must exit 0 (no crash, no abort).
fn run_to_end(cfg: &Path) -> Output {
    let out = finish(
        run_daemon(&["--config", cfg.to_str().unwrap()]),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "daemon failed ({:?}):\n{}",
        out.status,
        stderr(&out)
    );
    out
}

/// A real photo (the bundled chelsea.png) as a whole JPEG.
fn photo_jpeg() -> Vec<u8> {
    let photo = image::open(repo().join("models/samples/chelsea.png")).unwrap();
    let mut jpeg = Vec::new();
    photo
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    jpeg
}

/// The 43-byte GIF once aborted the daemon (a 17 GB allocation for its logical screen).
/// Replayed alone or in a folder, it is one corrupt frame and the daemon goes on.
#[test]
fn a_43_byte_gif_is_a_corrupt_frame_not_an_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let bomb = tmp.path().join("bomb.gif");
    std::fs::write(&bomb, {
        let g = maeday_edge::detect::decode::screen_bomb_gif();
        assert_eq!(g.len(), 43);
        g
    })
    .unwrap();
    let cfg = config(tmp.path(), "gif", &replay_source(&bomb, ""), "");
    let out = run_to_end(&cfg);
    let s = summary(&out);
    assert_eq!(s["cameras"][0]["captured"], 1, "{s}");
    assert_eq!(s["cameras"][0]["corrupt"], 1, "{s}");
    assert!(stderr(&out).contains("65535x65535"), "{}", stderr(&out));

    // In a folder, between two good frames.
    let frames = tmp.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    let samples = repo().join("models/samples");
    std::fs::copy(samples.join("coins.png"), frames.join("a.png")).unwrap();
    std::fs::copy(&bomb, frames.join("b.gif")).unwrap();
    std::fs::copy(samples.join("coffee-224.png"), frames.join("c.png")).unwrap();
    let cfg = config(tmp.path(), "gif2", &replay_source(&frames, ""), "");
    let s = summary(&run_to_end(&cfg));
    assert_eq!(
        (
            &s["cameras"][0]["scored"],
            &s["cameras"][0]["corrupt"],
            &s["cameras"][0]["failed"]
        ),
        (&2.into(), &1.into(), &0.into()),
        "{s}"
    );
}

/// A JPEG cut short used to be scored as a valid (grey-filled) frame: now it is corrupt.
#[test]
fn a_truncated_jpeg_is_counted_as_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    let jpeg = photo_jpeg();
    std::fs::write(frames.join("a.jpg"), &jpeg).unwrap();
    std::fs::write(frames.join("b.jpg"), &jpeg[..jpeg.len() * 2 / 3]).unwrap();
    let cfg = config(tmp.path(), "jpeg", &replay_source(&frames, ""), "");
    let out = run_to_end(&cfg);
    let s = summary(&out);
    assert_eq!(s["cameras"][0]["captured"], 2, "{s}");
    assert_eq!(s["cameras"][0]["scored"], 1, "{s}");
    assert_eq!(s["cameras"][0]["corrupt"], 1, "{s}");
    assert!(stderr(&out).contains("truncated JPEG"), "{}", stderr(&out));
}

/// A 16000x16000 greyscale PNG of zeros: 256 Mpx (under the `image` crate's own 512 MiB
/// limit as grey) in about 250 KB, written row by row so the test never holds it.
fn write_huge_png(path: &Path, side: u32) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut enc = png::Encoder::new(file, side, side);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut w = enc.write_header().unwrap().into_stream_writer().unwrap();
    let row = vec![0u8; side as usize];
    for _ in 0..side {
        std::io::Write::write_all(&mut w, &row).unwrap();
    }
    w.finish().unwrap();
}

/// Peak resident memory of a process so far, in MiB (0 once it has exited).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    kb.unwrap_or(0) / 1024
}

/// A 16000x16000 PNG used to take the daemon to 2.6 GB of RSS. Now it is refused from
/// its header (counted as corrupt) and the daemon's peak RSS stays where a normal frame
/// leaves it. The looping replay is stopped with SIGTERM once the huge frame has been
/// met twice, so the peak is read while the process is alive.
#[test]
fn a_huge_png_is_refused_before_it_is_decoded_and_memory_stays_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    write_huge_png(&frames.join("a.png"), 16000);
    std::fs::copy(
        repo().join("models/samples/coffee-224.png"),
        frames.join("b.png"),
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    let extra = format!("[files]\ndir = \"{}\"\n", out_dir.display());
    let cfg = config(
        tmp.path(),
        "huge",
        &replay_source(&frames, "loop = true"),
        &extra,
    );
    let child = run_daemon(&["--config", cfg.to_str().unwrap()]);
    let pid = child.id();
    let results = out_dir.join("results.jsonl");
    let until = Instant::now() + Duration::from_secs(120);
    // a.png, b.png, a.png, b.png: the huge frame has been met twice once b is scored twice.
    let mut peak = 0;
    while std::fs::read_to_string(&results).map_or(0, |t| t.lines().count()) < 2 {
        if Instant::now() > until {
            let out = finish(child, Duration::from_secs(1));
            panic!("no results; stderr:\n{}", stderr(&out));
        }
        peak = peak.max(peak_rss_mib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    peak = peak.max(peak_rss_mib(pid));
    eprintln!("peak RSS with a 16000x16000 frame in the replay: {peak} MiB");
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let out = finish(child, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let s = summary(&out);
    assert!(
        s["cameras"][0]["corrupt"].as_u64().unwrap() >= 2,
        "the huge frame was not refused: {s}"
    );
    assert!(stderr(&out).contains("16000x16000"), "{}", stderr(&out));
    // The model, tract's plans and a 224x224 frame take ~200 MiB; decoding the huge
    // frame alone would add 256 MiB (grey) + 768 MiB (RGB).
    assert!(peak < 600, "peak RSS {peak} MiB");

    // The limit is the config's: a frame over `pipeline.max_frame_pixels` is corrupt.
    let extra = "[pipeline]\nmax_frame_pixels = 40000\n";
    let cfg = config(
        tmp.path(),
        "small-limit",
        &replay_source(&repo().join("models/samples/co*.png"), ""),
        extra,
    );
    let out = run_to_end(&cfg);
    let s = summary(&out);
    // coffee-224 (224x224 = 50176 px) is over 40000, like the two larger photos.
    assert_eq!(s["cameras"][0]["corrupt"], 3, "{s}");
    assert!(
        stderr(&out).contains("max_frame_pixels"),
        "{}",
        stderr(&out)
    );
}

/// Values that passed `run --check` and then crashed the daemon (Duration panics,
/// capacity overflow, a 60 GB allocation): `--check` names the key, and `run` refuses
/// them the same way, without a panic.
#[test]
fn config_values_that_crashed_at_run_time_are_refused_naming_their_key() {
    let tmp = tempfile::tempdir().unwrap();
    let gif = conveyor_gif();
    let port = super::common::free_port();
    let mqtt = |extra: &str| {
        mqtt_section(
            &format!("mqtt://127.0.0.1:{port}"),
            &tmp.path().join("spool"),
            extra,
        )
    };
    let cases: Vec<(String, String, &str)> = vec![
        (
            replay_source(&gif, "fps = 1e-300"),
            String::new(),
            "camera[0].source.fps",
        ),
        (
            replay_source(&gif, ""),
            mqtt("").replace("shutdown_grace_s = 15", "shutdown_grace_s = 1e30"),
            "mqtt.shutdown_grace_s",
        ),
        (
            replay_source(&gif, ""),
            "[output]\nmask_max_per_sec = 1e-30\n".into(),
            "output.mask_max_per_sec",
        ),
        (
            replay_source(&gif, ""),
            "[output]\nmetrics_interval_s = 1e30\n".into(),
            "output.metrics_interval_s",
        ),
        (
            replay_source(&gif, ""),
            "[pipeline]\nresult_queue = 9000000000000000000\n".into(),
            "pipeline.result_queue",
        ),
        (replay_source(&gif, ""), "MASKS".into(), "model.masks"),
    ];
    for (source, extra, key) in &cases {
        let cfg = config(
            tmp.path(),
            "crash",
            source,
            if extra == "MASKS" { "" } else { extra },
        );
        if extra == "MASKS" {
            let text = std::fs::read_to_string(&cfg).unwrap();
            std::fs::write(&cfg, text.replace("masks = 2", "masks = 100000")).unwrap();
        }
        for args in [
            &["--check", "--config"][..],
            &["--max-frames", "2", "--config"][..],
        ] {
            let out = Command::new(BIN)
                .arg("run")
                .args(args)
                .arg(&cfg)
                .output()
                .unwrap();
            let err = stderr(&out);
            assert!(
                !out.status.success(),
                "{key} with {args:?} was accepted:\n{err}"
            );
            assert!(
                !err.contains("panicked"),
                "{key} with {args:?} panicked:\n{err}"
            );
            assert!(
                err.contains(key),
                "{key} with {args:?}: the error does not name it:\n{err}"
            );
        }
    }
}

/// An ROI outside the frame passed `--check` and then failed every frame (one error line
/// per frame). `--check` now reads the replay's first frame header and refuses it; a run
/// anyway counts such frames as corrupt with one log line. For V4L2 the configured size
/// is checked.
#[test]
fn an_roi_outside_the_frame_fails_check_and_is_one_log_line_at_run_time() {
    let tmp = tempfile::tempdir().unwrap();
    let gif = conveyor_gif(); // 480x270
    let cfg = config(
        tmp.path(),
        "roi",
        &replay_source(&gif, ""),
        "roi = [500, 300, 100, 100]",
    );
    let out = Command::new(BIN)
        .args(["run", "--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success(), "--check accepted the ROI");
    assert!(stderr(&out).contains("camera[0].roi"), "{}", stderr(&out));
    assert!(stderr(&out).contains("480x270"), "{}", stderr(&out));

    let out = run_to_end(&cfg);
    let s = summary(&out);
    assert_eq!(s["cameras"][0]["captured"], 37, "{s}");
    assert_eq!(s["cameras"][0]["corrupt"], 37, "{s}");
    assert_eq!(s["cameras"][0]["failed"], 0, "{s}");
    let err = stderr(&out);
    assert_eq!(
        err.matches("does not fit").count(),
        1,
        "one log line expected:\n{err}"
    );

    let v4l2 = "{ kind = \"v4l2\", format = \"MJPG\", width = 640, height = 480 }";
    let cfg = config(tmp.path(), "roi", v4l2, "roi = [600, 0, 100, 100]");
    let out = Command::new(BIN)
        .args(["run", "--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success(), "--check accepted the V4L2 ROI");
    assert!(stderr(&out).contains("camera[0].roi"), "{}", stderr(&out));
}

/// The CLI tools decode through the same limits: `score` reports a frame over the
/// default `pipeline.max_frame_pixels` and a truncated JPEG as unreadable (exit code 1)
/// and still scores the good image.
#[test]
fn score_refuses_a_huge_png_and_a_truncated_jpeg_and_scores_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let huge = tmp.path().join("huge.png");
    write_huge_png(&huge, 16000);
    let jpeg = photo_jpeg();
    let cut = tmp.path().join("cut.jpg");
    std::fs::write(&cut, &jpeg[..jpeg.len() * 2 / 3]).unwrap();
    let good = repo().join("models/samples/coffee-224.png");
    let out = Command::new(BIN)
        .args(["score", "--masks", "2", "--threads", "1"])
        .args([&huge, &cut, &good])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let scored: Vec<&str> = stdout.lines().collect();
    assert_eq!(scored.len(), 1, "{stdout}");
    assert!(scored[0].contains("coffee-224.png"), "{stdout}");
    assert!(err.contains("16000x16000"), "{err}");
    assert!(err.contains("truncated JPEG"), "{err}");
}
