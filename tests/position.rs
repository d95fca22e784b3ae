//! The position stamp (`[position]`) end to end: the real daemon on the conveyor clip
//! (demo/conveyor.gif, the demo's bank) against a real broker (rumqttd in the test), with
//! a test client playing the cart's pose publisher on `robot/pose`.
//!
//! A retained pose is taken at connect, results carry it with an age that grows frame by
//! frame and turns stale past `position.max_age_s`, a malformed pose is refused (logged)
//! and changes nothing, a new pose replaces it, and the events carry the pose of their
//! peak frame. Without `[position]` no result has the field.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rumqttc::{Client, MqttOptions, QoS};
use serde_json::Value;

mod common;
use common::daemon::{decode, mqtt_section, run_daemon, subscribe, BIN};
use common::device::Device;
use common::{free_port, repo};

/// The conveyor clip at `fps`, looped, the demo's bank (fast), N = 2, one thread.
fn conveyor(dir: &Path, mqtt: &str, extra: &str) -> std::path::PathBuf {
    let r = repo();
    let text = format!(
        r#"
device_id = "cart"
console = false
[model]
bank = "{bank}"
masks = 2
threads = 1
scorer = "bank"
[[camera]]
name = "floor"
source = {{ kind = "replay", path = "{gif}", fps = 4, loop = true }}
{mqtt}
{extra}
"#,
        bank = r.join("demo/bank").display(),
        gif = r.join("demo/conveyor.gif").display(),
    );
    let path = dir.join("daemon.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A pose publisher: QoS 1, its event loop on a thread.
fn publisher(port: u16) -> Client {
    let mut opts = MqttOptions::new(format!("pose-pub-{}", free_port()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 16);
    std::thread::spawn(move || for _ in conn.iter() {});
    client
}

/// The results among received messages (inside `wait_for`, which holds the inbox).
fn results_in(m: &[(String, Vec<u8>)]) -> Vec<Value> {
    m.iter()
        .filter(|(t, _)| t.ends_with("/result"))
        .map(|(_, p)| decode(p))
        .collect()
}

fn results(inbox: &common::daemon::Inbox) -> Vec<Value> {
    inbox.results()
}

/// Results stamped with a pose whose `x` is `x`.
fn with_x(r: &[Value], x: f64) -> Vec<Value> {
    r.iter()
        .filter(|r| r["position"]["x"].as_f64() == Some(x))
        .cloned()
        .collect()
}

#[test]
fn results_and_events_carry_the_newest_pose_with_its_age() {
    let port = common::broker(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let pose = publisher(port);
    // Retained before the daemon exists: a pose is state, taken at connect.
    pose.publish(
        "robot/pose",
        QoS::AtLeastOnce,
        true,
        r#"{"x":1.5,"y":-2.25,"yaw":0.5,"frame":"map"}"#,
    )
    .unwrap();
    let (_c, inbox, _) = subscribe("127.0.0.1", port, "maeday/#");
    let mqtt = mqtt_section(
        &format!("mqtt://127.0.0.1:{port}"),
        &dir.path().join("spool"),
        "",
    );
    let extra = "[events]\nstart_frames = 1\nupdate_interval_s = 0\n\
                 [position]\ntopic = \"robot/+\"\nfields = [\"x\", \"y\"]\nmax_age_s = 0.6\n";
    let cfg = conveyor(dir.path(), &mqtt, extra);
    let device = Device::spawn(
        std::process::Command::new(BIN)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let long = Duration::from_secs(240);
    inbox.wait_for("3 results with the retained pose", long, |m| {
        with_x(&results_in(m), 1.5).len() >= 3
    });
    // Malformed poses: refused whole, the last good pose stays.
    for bad in [
        r#"{"x":"1.0","y":2}"#,
        r#"{"y":2}"#,
        "not json",
        r#"{"x":1e999,"y":0}"#,
    ] {
        pose.publish("robot/pose", QoS::AtLeastOnce, false, bad)
            .unwrap();
    }
    let big = format!(r#"{{"x":9,"y":9,"pad":"{}"}}"#, "a".repeat(2000));
    pose.publish("robot/pose", QoS::AtLeastOnce, false, big)
        .unwrap();
    // A pose on a topic outside the filter is not read.
    pose.publish(
        "robot/pose/raw",
        QoS::AtLeastOnce,
        false,
        r#"{"x":7,"y":7}"#,
    )
    .unwrap();
    let n = results(&inbox).len();
    inbox.wait_for("2 more results", long, |m| results_in(m).len() >= n + 2);
    pose.publish(
        "robot/pose",
        QoS::AtLeastOnce,
        false,
        r#"{"x":3.0,"y":4.0}"#,
    )
    .unwrap();
    inbox.wait_for("2 stamps of the new pose, one stale", long, |m| {
        let new = with_x(&results_in(m), 3.0);
        new.len() >= 2 && new.iter().any(|r| r["position"]["stale"] == true)
    });
    let out = device.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);

    let all = results(&inbox);
    for r in &all {
        let p = &r["position"];
        assert!(p.is_object(), "every result has a position: {r}");
        match p["age_ms"].as_u64() {
            // Before the first pose: nothing invented.
            None => assert!(p["stale"] == true && p.get("x").is_none(), "{p}"),
            Some(age) => {
                let x = p["x"].as_f64().unwrap();
                assert!(x == 1.5 || x == 3.0, "only good poses: {p}");
                let y = if x == 1.5 { -2.25 } else { 4.0 };
                assert_eq!(p["y"].as_f64(), Some(y), "{p}");
                assert!(p.get("yaw").is_none(), "only the configured fields: {p}");
                assert_eq!(p["stale"], age > 600, "stale past max_age_s: {p}");
            }
        }
    }
    // The age grows frame by frame while the pose stays the same.
    for pose in [with_x(&all, 1.5), with_x(&all, 3.0)] {
        let ages: Vec<u64> = pose
            .iter()
            .map(|r| r["position"]["age_ms"].as_u64().unwrap())
            .collect();
        assert!(ages.windows(2).all(|w| w[0] <= w[1]), "{ages:?}");
        assert!(ages.last() > ages.first(), "{ages:?}");
    }
    let first_new = all.iter().position(|r| r["position"]["x"] == 3.0).unwrap();
    assert!(
        all[first_new..].iter().all(|r| r["position"]["x"] == 3.0),
        "the new pose replaced the old one"
    );
    assert!(
        stderr
            .matches("position: pose on robot/pose refused")
            .count()
            >= 1,
        "{stderr}"
    );
    // The README's contract examples come from here (MAEDAY_CONTRACT_EXAMPLES=folder).
    if let Some(dir) = std::env::var_os("MAEDAY_CONTRACT_EXAMPLES") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (t, p) in inbox.messages() {
            let name = t.replace('/', "_");
            let Ok(v) = serde_json::from_slice::<Value>(&p) else {
                continue;
            };
            let kind = v["type"].as_str().unwrap_or("").to_string();
            let _ = std::fs::write(dir.join(format!("{name}{kind}.json")), v.to_string());
        }
        std::fs::write(dir.join("stdout.txt"), &out.stdout).unwrap();
    }
    // Events: the pose of their peak frame (the bolt rides through at 4 fps).
    let events: Vec<Value> = inbox
        .messages()
        .into_iter()
        .filter(|(t, _)| t == "maeday/cart/floor/event")
        .map(|(_, p)| decode(&p))
        .collect();
    assert!(!events.is_empty(), "the bolt made an event");
    for e in &events {
        let peak = e["peak"]["seq"].as_u64().unwrap();
        let frame = all
            .iter()
            .find(|r| r["seq"].as_u64() == Some(peak))
            .unwrap();
        assert_eq!(e["position"], frame["position"], "{e}");
    }
}

#[test]
fn no_position_section_no_field() {
    let port = common::broker(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let (_c, inbox, _) = subscribe("127.0.0.1", port, "maeday/#");
    let mqtt = mqtt_section(
        &format!("mqtt://127.0.0.1:{port}"),
        &dir.path().join("spool"),
        "",
    );
    let cfg = conveyor(dir.path(), &mqtt, "");
    let child = run_daemon(&["--config", cfg.to_str().unwrap(), "--max-frames", "2"]);
    let out = common::daemon::finish(child, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    inbox.wait_for("2 results", Duration::from_secs(20), |m| {
        results_in(m).len() >= 2
    });
    assert!(results(&inbox).iter().all(|r| r.get("position").is_none()));
}

#[test]
fn check_refuses_bad_position_keys() {
    let dir = tempfile::tempdir().unwrap();
    let check = |mqtt: bool, position: &str| {
        let m = if mqtt {
            mqtt_section("mqtt://127.0.0.1:1", &dir.path().join("spool"), "")
        } else {
            String::new()
        };
        let cfg = conveyor(dir.path(), &m, &format!("[position]\n{position}"));
        let out = std::process::Command::new(BIN)
            .args(["run", "--check", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let started = Instant::now();
    for (mqtt, position, key) in [
        (false, "topic = \"robot/pose\"", "position"),
        (true, "topic = \"robot/#/pose\"", "position.topic"),
        (true, "topic = \"\"", "position.topic"),
        (true, "topic = \"maeday/#\"", "position.topic"),
        (true, "topic = \"maeday/cart/+/result\"", "position.topic"),
        (true, "topic = \"p\"\nfields = []", "position.fields"),
        (
            true,
            "topic = \"p\"\nfields = [\"x\", \"x\"]",
            "position.fields[1]",
        ),
        (
            true,
            "topic = \"p\"\nfields = [\"a..b\"]",
            "position.fields[0]",
        ),
        (
            true,
            "topic = \"p\"\nfields = [\"age_ms\"]",
            "position.fields[0]",
        ),
        (true, "topic = \"p\"\nmax_age_s = 0", "position.max_age_s"),
        (true, "topic = \"p\"\nmax_age_s = nan", "position.max_age_s"),
        (
            true,
            "topic = \"p\"\nmax_bytes = 1000000",
            "position.max_bytes",
        ),
    ] {
        let (ok, err) = check(mqtt, position);
        assert!(!ok && err.contains(key), "{position}: {err}");
    }
    let (ok, err) = check(
        true,
        "topic = \"gps/fix\"\nfields = [\"fix.lat\", \"fix.lon\"]\nmax_age_s = 5",
    );
    assert!(ok, "{err}");
    assert!(started.elapsed() < Duration::from_secs(120));
}
