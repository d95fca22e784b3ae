//! Clearing what an earlier run left retained (`daemon::sweep`), end to end: the real
//! daemon against a real broker (rumqttd in the test), run twice on the same broker. The
//! first run has two cameras, events and Home Assistant discovery; the second has one
//! camera left. After it, the removed camera's discovery configs and retained
//! `anomalous` state are gone from the broker, the remaining camera's are there, and a
//! config of another device that shares the Home Assistant node id is left alone.

use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::{Client, MqttOptions, QoS};

mod common;
use common::daemon::{finish, mqtt_section, run_daemon, subscribe};
use common::repo;

/// Device `disc.1` on the conveyor clip with `cameras`, events, discovery under `ha`.
fn config(dir: &Path, port: u16, cameras: &[&str]) -> std::path::PathBuf {
    let r = repo();
    let mut text = format!(
        "device_id = \"disc.1\"\nconsole = false\n[model]\nbank = \"{}\"\nmasks = 2\n\
         threads = 1\nscorer = \"bank\"\n",
        r.join("demo/bank").display()
    );
    for c in cameras {
        text.push_str(&format!(
            "[[camera]]\nname = \"{c}\"\nsource = {{ kind = \"replay\", path = \"{}\", fps = 0 }}\n",
            r.join("demo/conveyor.gif").display()
        ));
    }
    text.push_str("[events]\n");
    text.push_str(&mqtt_section(
        &format!("mqtt://127.0.0.1:{port}"),
        &dir.join("spool"),
        "home_assistant = { discovery_prefix = \"ha\" }",
    ));
    let path = dir.join("daemon.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(dir: &Path, port: u16, cameras: &[&str]) {
    let cfg = config(dir, port, cameras);
    let child = run_daemon(&["--config", cfg.to_str().unwrap(), "--max-frames", "2"]);
    let out = finish(child, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The retained topics under `filter` now, as a new subscriber sees them (non-empty).
fn retained(port: u16, filter: &str, expected: usize) -> Vec<String> {
    let (_c, inbox, _) = subscribe("127.0.0.1", port, filter);
    // Retained messages come right after the SUBACK; wait for as many as expected, then
    // a little longer for any extra one.
    let until = Instant::now() + Duration::from_secs(5);
    while inbox.messages().len() < expected && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut topics: Vec<String> = inbox
        .messages()
        .into_iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(t, _)| t)
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

#[test]
fn a_removed_camera_leaves_nothing_retained() {
    let port = common::broker(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    // Another device whose id maps to the same Home Assistant node id (`disc_1`).
    let mut opts = MqttOptions::new("other-device", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (other, mut conn) = Client::new(opts, 16);
    std::thread::spawn(move || for _ in conn.iter() {});
    let foreign = "ha/sensor/maeday_disc_1/gate_score/config";
    other
        .publish(
            foreign,
            QoS::AtLeastOnce,
            true,
            r#"{"name":"x","availability":[{"topic":"maeday/disc_1/status"}]}"#,
        )
        .unwrap();

    run(dir.path(), port, &["belt", "dock"]);
    let first = retained(port, "ha/#", 7);
    assert_eq!(first.len(), 7, "ours and the other device's: {first:?}");
    assert!(first.iter().any(|t| t.contains("dock_anomalous")));
    assert!(retained(port, "maeday/disc.1/+/anomalous", 2).len() == 2);

    // The dock camera is gone from the config.
    run(dir.path(), port, &["belt"]);
    let until = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let now = retained(port, "ha/#", 4);
        if now.len() <= 4 || Instant::now() > until {
            break now;
        }
    };
    assert_eq!(
        after,
        [
            "ha/binary_sensor/maeday_disc_1/belt_anomalous/config",
            "ha/image/maeday_disc_1/belt_evidence/config",
            "ha/sensor/maeday_disc_1/belt_score/config",
            foreign,
        ],
        "the dock's configs are cleared, the other device's is not"
    );
    assert_eq!(
        retained(port, "maeday/disc.1/+/anomalous", 1),
        ["maeday/disc.1/belt/anomalous"]
    );
}
