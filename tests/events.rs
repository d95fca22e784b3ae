//! Anomaly events, their evidence and retained state, Home Assistant discovery and the
//! topic prefix, end to end: the real daemon on the conveyor clip (demo/conveyor.gif, the
//! demo's memory bank) against a real broker (rumqttd in the test, subscribed before the
//! daemon starts).
//!
//! The clip: the belt runs empty (frame 0), a bolt rides through (frames 1-23, its tip at
//! the edge in 22-23), the belt is empty again (24-36). Looped twice, that is two bolt
//! passages: exactly two events, none while the belt is empty.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::daemon::{decode, finish, mqtt_section, run_daemon, subscribe, summary, Inbox};
use common::repo;

const FRAMES: u64 = 37;

/// The conveyor clip with the demo's bank (the bank scorer: fast and as sharp as the
/// ensemble on this clip), N = 2, one thread, every frame scored.
fn conveyor_config(dir: &Path, device: &str, mqtt: &str, extra: &str) -> std::path::PathBuf {
    let r = repo();
    let text = format!(
        r#"
device_id = "{device}"
[model]
bank = "{bank}"
masks = 2
threads = 1
scorer = "bank"
[[camera]]
name = "belt"
source = {{ kind = "replay", path = "{gif}", fps = 0, loop = true }}
{extra}
{mqtt}
"#,
        bank = r.join("demo/bank").display(),
        gif = r.join("demo/conveyor.gif").display(),
    );
    let path = dir.join("daemon.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn on(inbox: &Inbox, topic: &str) -> Vec<Vec<u8>> {
    inbox
        .messages()
        .into_iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, p)| p)
        .collect()
}

fn empty_belt(seq: u64) -> bool {
    let frame = (seq - 1) % FRAMES;
    frame == 0 || frame >= 24
}

#[test]
fn the_conveyor_clip_gives_one_event_per_bolt_passage() {
    let port = common::broker(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let (_client, inbox, _) = subscribe("127.0.0.1", port, "maeday/#");
    let mqtt = mqtt_section(
        &format!("mqtt://127.0.0.1:{port}"),
        &dir.path().join("spool"),
        "",
    );
    let events = "[events]\nstart_frames = 1\nend_frames = 3\nupdate_interval_s = 0\n";
    let cfg = conveyor_config(dir.path(), "ev", &mqtt, events);
    let child = run_daemon(&["--config", cfg.to_str().unwrap(), "--max-frames", "74"]);
    let out = finish(child, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary(&out)["cameras"][0]["scored"], 74);
    inbox.wait_for("the second event's end", Duration::from_secs(20), |m| {
        m.iter()
            .filter(|(t, p)| t.ends_with("/event") && decode(p)["type"] == "end")
            .count()
            >= 2
    });

    // Results are JSON by default now.
    let results: Vec<Value> = on(&inbox, "maeday/ev/belt/result")
        .iter()
        .map(|p| serde_json::from_slice(p).expect("results are JSON by default"))
        .collect();
    assert_eq!(results.len(), 74);
    let events: Vec<Value> = on(&inbox, "maeday/ev/belt/event")
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    // Two passages: start, update(s) (the peak rises as the bolt comes into full view),
    // end; twice, each with its own id.
    let starts: Vec<usize> = (0..kinds.len()).filter(|&i| kinds[i] == "start").collect();
    let ends: Vec<usize> = (0..kinds.len()).filter(|&i| kinds[i] == "end").collect();
    assert_eq!((starts.len(), ends.len()), (2, 2), "{kinds:?}");
    assert_ne!(ids[starts[0]], ids[starts[1]]);
    for (&s, &e) in starts.iter().zip(&ends) {
        assert!(s < e, "{kinds:?}");
        assert!(ids[s..=e].iter().all(|id| *id == ids[s]), "{ids:?}");
        assert!(kinds[s + 1..e].iter().all(|k| *k == "update"), "{kinds:?}");
        assert!(e > s + 1, "the peak rose at least once: {kinds:?}");
        let end = &events[e];
        let (t0, t1) = (
            end["start_unix_ms"].as_u64().unwrap(),
            end["end_unix_ms"].as_u64().unwrap(),
        );
        assert!(t0 <= t1 && end["frames"].as_u64().unwrap() >= 15, "{end}");
        assert!(events[s]["end_unix_ms"].is_null());
        let peak = &end["peak"];
        assert!(
            peak["score"].as_f64() > end["image_threshold"].as_f64(),
            "{end}"
        );
        assert!(!empty_belt(peak["seq"].as_u64().unwrap()), "{end}");
        assert!(peak["bbox"].is_array() && !end["blobs"].as_array().unwrap().is_empty());
        // The empty belt is never inside an event; every frame that is, was anomalous
        // or within the end hysteresis.
        // Frames are told apart by seq: a replay at fps = 0 can capture two frames in the
        // same millisecond, so the frame before the start (or after the last anomalous
        // one) may share its timestamp.
        let first_seq: u64 = ids[s].rsplit('-').next().unwrap().parse().unwrap();
        for r in &results {
            let at = r["captured_unix_ms"].as_u64().unwrap();
            let seq = r["seq"].as_u64().unwrap();
            let after_last = at == t1 && r["anomalous"] != true;
            if seq >= first_seq && (t0..=t1).contains(&at) && !after_last {
                assert!(!empty_belt(seq), "empty belt frame {seq} inside {end}");
            }
        }
    }
    // One evidence JPEG per reported peak: the heatmap round the bolt.
    let evidence = on(&inbox, "maeday/ev/belt/evidence");
    let announced = events.iter().filter(|e| e["evidence"] == true).count();
    assert!(announced >= 2, "each event has evidence");
    assert_eq!(evidence.len(), announced);
    for jpeg in &evidence {
        assert_eq!(&jpeg[..2], [0xFF, 0xD8], "a JPEG");
        let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).unwrap();
        assert!(img.width() >= 64 && img.width() <= 480, "{}", img.width());
    }
    // The retained state: OFF at start, then ON/OFF with each event.
    let states: Vec<String> = on(&inbox, "maeday/ev/belt/anomalous")
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(states, ["OFF", "ON", "OFF", "ON", "OFF"]);
}

#[test]
fn home_assistant_discovery_and_the_topic_prefix() {
    let port = common::broker(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let (_c1, ha, _) = subscribe("127.0.0.1", port, "ha/#");
    let (_c2, dev, _) = subscribe("127.0.0.1", port, "plant/line3/#");
    let mqtt = mqtt_section(
        &format!("mqtt://127.0.0.1:{port}"),
        &dir.path().join("spool"),
        "topic_prefix = \"plant/line3\"\nhome_assistant = { discovery_prefix = \"ha\" }",
    );
    let cfg = conveyor_config(dir.path(), "disc.1", &mqtt, "[events]");
    let child = run_daemon(&["--config", cfg.to_str().unwrap(), "--max-frames", "2"]);
    let out = finish(child, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dev.wait_for("two results", Duration::from_secs(20), |m| {
        m.iter().filter(|(t, _)| t.ends_with("/result")).count() >= 2
    });
    assert!(
        dev.messages()
            .iter()
            .all(|(t, _)| t.starts_with("plant/line3/disc.1/")),
        "every topic under the prefix"
    );
    let status: Value = serde_json::from_slice(&on(&dev, "plant/line3/disc.1/status")[0]).unwrap();
    assert_eq!(
        (status["state"].as_str(), status["format"].as_str()),
        (Some("online"), Some("json"))
    );

    // The configs are retained: a subscriber arriving after the run still gets them.
    let (_c3, late, _) = subscribe("127.0.0.1", port, "ha/#");
    late.wait_for("three retained configs", Duration::from_secs(10), |m| {
        m.len() >= 3
    });
    for inbox in [&ha, &late] {
        let configs: std::collections::BTreeMap<String, Value> = inbox
            .messages()
            .into_iter()
            .map(|(t, p)| (t, serde_json::from_slice(&p).unwrap()))
            .collect();
        let topics: Vec<&str> = configs.keys().map(String::as_str).collect();
        assert_eq!(
            topics,
            [
                "ha/binary_sensor/maeday_disc_1/belt_anomalous/config",
                "ha/image/maeday_disc_1/belt_evidence/config",
                "ha/sensor/maeday_disc_1/belt_score/config",
            ]
        );
        let bin = &configs[topics[0]];
        assert_eq!(bin["state_topic"], "plant/line3/disc.1/belt/anomalous");
        assert_eq!(
            (bin["payload_on"].as_str(), bin["device_class"].as_str()),
            (Some("ON"), Some("problem"))
        );
        let image = &configs[topics[1]];
        assert_eq!(image["image_topic"], "plant/line3/disc.1/belt/evidence");
        assert_eq!(image["content_type"], "image/jpeg");
        let score = &configs[topics[2]];
        assert_eq!(score["state_topic"], "plant/line3/disc.1/belt/result");
        assert_eq!(score["value_template"], "{{ value_json.score }}");
        for c in configs.values() {
            assert_eq!(c["device"]["identifiers"][0], "maeday_disc_1");
            assert_eq!(c["availability"][0]["topic"], "plant/line3/disc.1/status");
            assert_eq!(
                c["availability"][0]["value_template"],
                "{{ value_json.state }}"
            );
            assert!(c["unique_id"]
                .as_str()
                .unwrap()
                .starts_with("maeday_disc_1_belt_"));
        }
    }
    // The status the availability reads is JSON and says offline after the clean stop.
    let last = on(&dev, "plant/line3/disc.1/status");
    let last: Value = serde_json::from_slice(last.last().unwrap()).unwrap();
    assert_eq!(last["state"], "offline");
}

#[test]
fn check_refuses_bad_prefixes_and_discovery_without_json() {
    let dir = tempfile::tempdir().unwrap();
    let check = |mqtt_extra: &str, extra: &str| {
        let mqtt = mqtt_section("mqtt://127.0.0.1:1", &dir.path().join("spool"), mqtt_extra);
        let cfg = conveyor_config(dir.path(), "chk", &mqtt, extra);
        let out = std::process::Command::new(common::daemon::BIN)
            .args(["run", "--check", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check("topic_prefix = \"plant/+/x\"", "");
    assert!(!ok && err.contains("mqtt.topic_prefix"), "{err}");
    let (ok, err) = check("home_assistant = {}", "[output]\nformat = \"cbor\"");
    assert!(!ok && err.contains("mqtt.home_assistant"), "{err}");
    let (ok, err) = check("", "[events]\nend_frames = 0");
    assert!(!ok && err.contains("events.end_frames"), "{err}");
    let (ok, err) = check(
        "topic_prefix = \"plant/line3\"",
        "[events]\nstart_frames = 3",
    );
    assert!(ok, "{err}");
}
