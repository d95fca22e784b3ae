//! The README's first command: `maeday-edge run` on its built-in default, the conveyor
//! scene (demo/conveyor.gif) with the bundled model and the demo's memory bank. The
//! console must show the belt going from normal to ANOMALOUS while the bolt rides through
//! and back to normal once the belt is empty, and anomalous frames must leave a mask and
//! a heatmap overlay a person can open.

use std::process::Command;

mod common;
use common::daemon::BIN;

/// Frames of demo/conveyor.gif (0-based) where the bolt is fully in view, and where the
/// belt is empty (frame 23 still shows its tip at the edge; 1 and 22 show part of it).
const BOLT: std::ops::RangeInclusive<u64> = 2..=21;
const FRAMES: u64 = 37;

fn empty_belt(frame: u64) -> bool {
    frame == 0 || (24..FRAMES).contains(&frame)
}

/// (boot, seq) of this run's results (the newest boot in the file) that have a mask.
fn masked_results(results: &std::path::Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(results).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let boot = rows.last().expect("results.jsonl has lines")["boot"]
        .as_u64()
        .expect("results carry their boot");
    // The demo is a CPU site: 8 balanced masks, the schedule its bank is calibrated for.
    for r in rows.iter().filter(|r| r["boot"].as_u64() == Some(boot)) {
        let schedule = r["schedule"].as_str().unwrap_or_default();
        assert!(schedule.starts_with("balanced-n8-"), "{r}");
    }
    rows.iter()
        .filter(|r| r["boot"].as_u64() == Some(boot) && r["mask"] == true)
        .map(|r| (boot, r["seq"].as_u64().unwrap()))
        .collect()
}

#[test]
fn the_built_in_demo_flags_the_bolt_and_not_the_empty_belt() {
    let out = Command::new(BIN)
        .args(["run", "--max-frames", "37"])
        .env("RUST_LOG", "info")
        .output()
        .expect("run the daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{stderr}");

    // Console lines: `belt #<seq> score <s> <verdict> blobs <n> ...`. The replay loops
    // and drops frames when scoring is slower than 2 fps, so seq counts captured frames:
    // frame = (seq - 1) mod 37.
    let mut verdicts = Vec::new();
    for line in stderr.lines() {
        let Some(rest) = line.split("belt #").nth(1) else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let seq: u64 = words[0].parse().unwrap();
        assert_eq!(words[1], "score", "{line}");
        let verdict = words[3];
        assert!(
            matches!(verdict, "ok" | "ANOMALOUS"),
            "the demo is calibrated: {line}"
        );
        let blobs: usize = words[5].parse().unwrap();
        verdicts.push(((seq - 1) % FRAMES, verdict == "ANOMALOUS", blobs));
    }
    assert!(verdicts.len() >= 37, "37 frames scored: {verdicts:?}");
    let flagged_bolt = verdicts
        .iter()
        .filter(|(f, a, _)| BOLT.contains(f) && *a)
        .count();
    let empty: Vec<_> = verdicts.iter().filter(|(f, _, _)| empty_belt(*f)).collect();
    assert!(flagged_bolt >= 1, "no bolt frame flagged: {verdicts:?}");
    assert!(
        !empty.is_empty(),
        "the loop reached the empty belt: {verdicts:?}"
    );
    assert!(
        empty.iter().all(|(_, a, _)| !a),
        "an empty-belt frame was flagged: {verdicts:?}"
    );
    assert!(
        verdicts
            .iter()
            .any(|(f, a, blobs)| BOLT.contains(f) && *a && *blobs >= 1),
        "the bolt frames report where: {verdicts:?}"
    );
    // normal -> ANOMALOUS -> normal, in this order, within the run.
    let first_alarm = verdicts.iter().position(|v| v.1).unwrap();
    assert!(
        verdicts[first_alarm..]
            .iter()
            .any(|(f, a, _)| !a && empty_belt(*f)),
        "the verdict went back to normal: {verdicts:?}"
    );
    // Anomalous frames (those the mask rate limit lets through: `mask` in the result) left
    // their mask and heatmap overlay, PNGs of the frame's size, named by boot and seq.
    let out_dir = std::path::Path::new("/tmp/maeday-edge-demo/out");
    let masked = masked_results(&out_dir.join("results.jsonl"));
    assert!(!masked.is_empty(), "no anomalous frame left a mask");
    for (boot, seq) in masked {
        for kind in ["masks", "heatmaps"] {
            let path = out_dir.join(kind).join(format!("belt-{boot}-{seq}.png"));
            let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                (img.width(), img.height()),
                (480, 270),
                "{}",
                path.display()
            );
            if kind == "masks" {
                // The mask marks the anomaly (it was blank while maps were clamped to
                // [0, 1] on resize and the ensemble's pixel threshold is above 1).
                let on = img.to_luma8().pixels().filter(|p| p[0] == 255).count();
                assert!(on > 100, "{}: {on} anomalous pixels", path.display());
            }
        }
    }
    let tested: Vec<_> = verdicts.iter().map(|(f, a, _)| (f, a)).collect();
    eprintln!("frame, anomalous: {tested:?}");
}
