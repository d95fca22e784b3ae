//! Operator commands (issue 19) against the real daemon and a real broker (the embedded
//! rumqttd): every request answered once on `command/reply` with its id, pause and resume,
//! trigger and snapshot (also on a paused camera), thresholds applied at once, persisted
//! across a restart and dropped when another model serves, and the signatures that guard
//! what changes the device's reports.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use maeday_edge::model::manifest::Model;
use maeday_edge::update::bundle;
use maeday_edge::update::transfer::split;
use rumqttc::{Client, QoS};
use serde_json::{json, Value};

mod common;
use common::daemon::{subscribe, Inbox, BIN};
use common::device::{device_config, settings_bundle, trusted_key, Device};
use common::repo;

/// Each test runs a device: one at a time on the 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// A broker, a subscriber to everything the device says, the workstation key, the device.
struct Rig {
    port: u16,
    client: Client,
    inbox: Inbox,
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let key = trusted_key(dir.path());
        let port = common::broker(8 << 20);
        let (client, inbox, _) = subscribe("127.0.0.1", port, "maeday/dev/#");
        Rig {
            port,
            client,
            inbox,
            dir,
            key,
        }
    }

    /// Start the device (a replayed photo at 4 fps) and wait until it is online and scoring.
    fn start(&self, extra: &str) -> Device {
        let cfg = device_config(self.dir.path(), self.port, 4.0, extra);
        let from = self.len();
        let d = Device::spawn(
            Command::new(BIN)
                .args(["run", "--config", cfg.to_str().unwrap()])
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        self.wait(from, "a first result", |t, _| t.ends_with("/cam/result"));
        d
    }

    fn len(&self) -> usize {
        self.inbox.messages().len()
    }

    /// Messages from index `from` on, JSON decoded (`Null` for pictures).
    fn since(&self, from: usize) -> Vec<(String, Value)> {
        self.inbox.messages()[from.min(self.len())..]
            .iter()
            .filter(|(t, _)| !t.ends_with("/command"))
            .map(|(t, p)| (t.clone(), serde_json::from_slice(p).unwrap_or(Value::Null)))
            .collect()
    }

    /// The first message from index `from` on that `f` accepts.
    fn wait(&self, from: usize, what: &str, f: impl Fn(&str, &Value) -> bool) -> Value {
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some((_, v)) = self.since(from).into_iter().find(|(t, v)| f(t, v)) {
                return v;
            }
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn publish(&self, payload: Vec<u8>) {
        self.client
            .publish("maeday/dev/command", QoS::AtLeastOnce, false, payload)
            .unwrap();
    }

    /// Send `payload` on the command topic and return the reply with id `id`.
    fn ask(&self, id: &str, payload: Vec<u8>) -> Value {
        let from = self.len();
        self.publish(payload);
        self.wait(from, &format!("the reply to {id}"), |t, v| {
            t == "maeday/dev/command/reply" && v["id"] == id
        })
    }

    /// An unsigned request.
    fn request(&self, req: Value) -> Value {
        let id = req["id"].as_str().unwrap().to_string();
        self.ask(&id, req.to_string().into_bytes())
    }

    /// A request signed by the workstation key (README: the request's JSON is the signed
    /// command's text), and its reply.
    fn signed(&self, req: Value) -> (Vec<u8>, Value) {
        let id = req["id"].as_str().unwrap().to_string();
        let envelope = self.envelope(&req);
        (envelope.clone(), self.ask(&id, envelope))
    }

    fn envelope(&self, req: &Value) -> Vec<u8> {
        let seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        maeday_edge::update::command::sign(&self.key, "dev", seq, &req.to_string()).encode()
    }

    /// The next retained status from `from` on that `f` accepts.
    fn status(&self, from: usize, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        self.wait(from, what, |t, v| t == "maeday/dev/status" && f(v))
    }

    /// Result payloads from `from` on.
    fn results(&self, from: usize) -> Vec<Value> {
        self.since(from)
            .into_iter()
            .filter(|(t, _)| t == "maeday/dev/cam/result")
            .map(|(_, v)| v)
            .collect()
    }

    /// Wait for a result from `from` on whose image threshold is `t`.
    fn scores_with(&self, from: usize, t: f64) -> Value {
        self.wait(from, &format!("a result with threshold {t}"), |topic, v| {
            topic == "maeday/dev/cam/result" && v["image_threshold"].as_f64() == Some(t)
        })
    }

    /// Send a signed settings bundle (`version`, image threshold `image`) until its verdict.
    fn install(&self, version: u64, image: f32) -> Value {
        let model = Model::open(repo().join("models/default")).unwrap();
        let (mut m, files) = settings_bundle(&model, version, image);
        let bytes = bundle::sign_and_pack(&mut m, &files, &self.key).unwrap();
        let from = self.len();
        for c in split(&bytes, 16 << 10) {
            self.client
                .publish(
                    "maeday/dev/bundle/chunk",
                    QoS::AtLeastOnce,
                    false,
                    c.encode(),
                )
                .unwrap();
        }
        self.wait(from, "the bundle's verdict", |t, v| {
            t.ends_with("/bundle/status") && (v["state"] == "installed" || v["state"] == "rejected")
        })
    }
}

/// SIGTERM, a clean exit, the log.
fn stop(device: Device) -> String {
    let out = device.stop();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    log
}

fn error(reply: &Value) -> &str {
    assert_eq!(reply["ok"], false, "{reply}");
    reply["error"].as_str().unwrap()
}

#[test]
fn every_request_gets_one_reply_with_its_id() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::new();
    let device = rig.start("");
    let start = rig.len();

    // metrics: acknowledged, and the metrics follow.
    let from = rig.len();
    let r = rig.request(json!({"id": "m1", "command": "metrics"}));
    assert_eq!(
        (r["ok"].clone(), r["command"].clone()),
        (json!(true), json!("metrics"))
    );
    rig.wait(from, "the metrics", |t, _| t == "maeday/dev/metrics");

    // trigger: the reply carries the next scored frame's result, also published as usual.
    let from = rig.len();
    let r = rig.request(json!({"id": "t1", "command": "trigger", "camera": "cam"}));
    assert_eq!(r["ok"], true, "{r}");
    let result = &r["result"];
    assert_eq!(result["camera"], "cam");
    assert_eq!(result["device_id"], "dev");
    let seq = result["seq"].as_u64().unwrap();
    rig.wait(from, "the triggered frame's result", |t, v| {
        t == "maeday/dev/cam/result" && v["seq"] == seq
    });

    // snapshot: a JPEG of the whole frame on <camera>/snapshot, described in the reply.
    let from = rig.len();
    let r = rig.request(json!({"id": "s1", "command": "snapshot", "camera": "cam"}));
    assert_eq!(r["ok"], true, "{r}");
    let snap = &r["snapshot"];
    assert_eq!(snap["topic"], "maeday/dev/cam/snapshot");
    let jpeg = rig.inbox.messages()[from..]
        .iter()
        .find(|(t, _)| t == "maeday/dev/cam/snapshot")
        .map(|(_, p)| p.clone())
        .expect("the snapshot came before its reply");
    assert_eq!(jpeg.len() as u64, snap["bytes"].as_u64().unwrap());
    assert_eq!(
        image::guess_format(&jpeg).unwrap(),
        image::ImageFormat::Jpeg
    );
    let img = image::load_from_memory(&jpeg).unwrap();
    let photo = image::open(repo().join("models/samples/coins.png")).unwrap();
    assert_eq!((img.width(), img.height()), (photo.width(), photo.height()));
    assert_eq!(snap["width"].as_u64(), Some(img.width() as u64));

    // Pause changes what the device reports: unsigned, it is refused and nothing changes.
    let r = rig.request(json!({"id": "p0", "command": "pause", "camera": "cam"}));
    assert!(error(&r).contains("unauthorized"), "{r}");
    let from = rig.len();
    rig.wait(from, "results after the refused pause", |t, _| {
        t == "maeday/dev/cam/result"
    });

    // Malformed requests: the id comes back when it is valid, nothing unbounded does.
    let r = rig.ask(
        "u1",
        br#"{"id":"u1","command":"trigger","camera":"<nope>"}"#.to_vec(),
    );
    assert!(
        !error(&r).contains("nope") && error(&r).contains("cam"),
        "{r}"
    );
    let from = rig.len();
    let long = "x".repeat(300);
    rig.publish(format!(r#"{{"id":"{long}","command":"{long}"}}"#).into_bytes());
    let r = rig.wait(from, "the reply without an id", |t, v| {
        t == "maeday/dev/command/reply" && v["id"].is_null()
    });
    assert_eq!(r["command"], Value::Null);
    assert!(!r.to_string().contains(&long), "{r}");

    // Thresholds on a model that has none yet: both are needed (signed, so it is read).
    let (_, r) = rig.signed(json!({"id": "th0", "command": "thresholds", "image": 3.0}));
    assert!(error(&r).contains("both"), "{r}");

    // Exactly one reply per request.
    let replies: Vec<Value> = rig
        .since(start)
        .into_iter()
        .filter(|(t, _)| t == "maeday/dev/command/reply")
        .map(|(_, v)| v)
        .collect();
    let ids: Vec<&Value> = replies.iter().map(|r| &r["id"]).collect();
    assert_eq!(
        ids,
        ["m1", "t1", "s1", "p0", "u1"]
            .iter()
            .map(|s| json!(s))
            .chain([Value::Null, json!("th0")])
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>(),
        "{replies:?}"
    );
    stop(device);
}

#[test]
fn a_paused_camera_publishes_nothing_until_resumed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::new();
    let device = rig.start("");

    let from = rig.len();
    let (pause, r) = rig.signed(json!({"id": "p1", "command": "pause", "camera": "cam"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["cameras"]["cam"]["paused"], true, "{r}");
    rig.status(from, "the paused status", |s| {
        s["camera_state"]["cam"]["paused"] == true
    });

    // A trigger still scores one frame of the paused camera: the reply has its result,
    // which goes nowhere else. (The first one also waits out a frame in flight at pause.)
    let r = rig.request(json!({"id": "t1", "command": "trigger", "camera": "cam"}));
    assert_eq!(r["ok"], true, "{r}");
    let quiet = rig.len();
    let t0 = Instant::now();
    // 8 frame periods of the 4 fps camera: none may be published.
    while t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = rig.request(json!({"id": "t2", "command": "trigger", "camera": "cam"}));
    assert_eq!(r["ok"], true, "{r}");
    let seq = r["result"]["seq"].as_u64().unwrap();
    assert!(
        rig.results(quiet).is_empty(),
        "a paused camera published {:?}",
        rig.results(quiet)
    );
    // A snapshot of the paused camera works too.
    let r = rig.request(json!({"id": "s1", "command": "snapshot", "camera": "cam"}));
    assert_eq!(r["ok"], true, "{r}");

    // The signed pause captured and sent again: refused (replay), answered with its id.
    let r = rig.ask("p1", pause);
    assert!(error(&r).contains("refused"), "{r}");

    // Resume: results flow again, numbered after the triggered frame.
    let from = rig.len();
    let (_, r) = rig.signed(json!({"id": "r1", "command": "resume", "camera": "cam"}));
    assert_eq!(r["cameras"]["cam"]["paused"], false, "{r}");
    let next = rig.wait(from, "results after resume", |t, _| {
        t == "maeday/dev/cam/result"
    });
    assert!(next["seq"].as_u64().unwrap() > seq);
    rig.status(from, "the resumed status", |s| {
        s["camera_state"]["cam"]["paused"] == false
    });
    stop(device);
}

#[test]
fn thresholds_persist_across_a_restart_and_reset_on_a_new_model() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::new();
    let open = "[commands]\nallow_unsigned = true\n";
    let device = rig.start(open);

    // With allow_unsigned, thresholds and pause are taken unsigned, applied at once.
    let from = rig.len();
    let r = rig.request(
        json!({"id": "th1", "command": "thresholds", "camera": "cam",
        "image": 42.5, "pixel": 7.25}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let cam = &r["cameras"]["cam"];
    assert_eq!(
        (
            &cam["image_threshold"],
            &cam["pixel_threshold"],
            &cam["thresholds_from"]
        ),
        (&json!(42.5), &json!(7.25), &json!("operator")),
        "{r}"
    );
    rig.scores_with(from, 42.5);
    let r = rig.request(json!({"id": "bad", "command": "thresholds", "pixel": -1}));
    assert!(error(&r).contains("pixel"), "{r}");
    let r = rig.request(json!({"id": "p1", "command": "pause", "camera": "cam"}));
    assert_eq!(r["ok"], true, "{r}");
    stop(device);
    assert!(rig.dir.path().join("state/operator.json").is_file());

    // After a restart: still paused, still the operator's thresholds, in the status.
    let from = rig.len();
    let cfg = device_config(rig.dir.path(), rig.port, 4.0, open);
    let device = Device::spawn(
        Command::new(BIN)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let s = rig.status(from, "the status after the restart", |s| {
        s["state"] == "online"
    });
    let cam = &s["camera_state"]["cam"];
    assert_eq!(cam["paused"], true, "{s}");
    assert_eq!(cam["image_threshold"], 42.5, "{s}");
    assert_eq!(cam["thresholds_from"], "operator", "{s}");
    let from = rig.len();
    let r = rig.request(json!({"id": "r1", "command": "resume", "camera": "cam"}));
    assert_eq!(r["ok"], true, "{r}");
    rig.scores_with(from, 42.5);

    // Another model serves (a signed bundle): the operator's thresholds were set on the
    // old one's scale and are dropped; the new model's apply, and the status says why.
    let from = rig.len();
    assert_eq!(rig.install(2, 15.0)["state"], "installed");
    rig.scores_with(from, 15.0);
    let s = rig.status(from, "the status after the swap", |s| {
        s["camera_state"]["cam"]["thresholds_reset"] == "model changed"
    });
    assert_eq!(s["camera_state"]["cam"]["thresholds_from"], "model", "{s}");
    // Now the model has both: one may be set alone (the pixel one stays the model's).
    let from = rig.len();
    let r = rig.request(json!({"id": "th2", "command": "thresholds", "image": 3.5}));
    let cam = &r["cameras"]["cam"];
    assert_eq!(
        (&cam["image_threshold"], &cam["pixel_threshold"]),
        (&json!(3.5), &json!(5.0)),
        "{r}"
    );
    rig.scores_with(from, 3.5);
    // reset: back to the model's.
    let from = rig.len();
    let r = rig.request(json!({"id": "th3", "command": "thresholds", "reset": true}));
    assert_eq!(r["cameras"]["cam"]["thresholds_from"], "model", "{r}");
    rig.scores_with(from, 15.0);
    let log = stop(device);
    assert!(log.contains("dropped"), "{log}");
    check_file(&rig.dir.path().join("state/operator.json"));
}

/// The persisted file: JSON, no operator thresholds left after the reset.
fn check_file(path: &Path) {
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(v["cameras"]["cam"]["paused"], false, "{v}");
    assert_eq!(v["cameras"]["cam"]["image"], Value::Null, "{v}");
}
