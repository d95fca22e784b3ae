//! See tests/hostile.rs. Who may change what serves, and the incoming chunk area: the
//! real daemon, a real rumqttd, bundles signed with real ed25519 keys.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use maeday_edge::model::manifest::Model;
use maeday_edge::update::bundle;
use maeday_edge::update::transfer::{split, Chunk};
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;

#[allow(unused_imports)]
use super::common::daemon::*;
use super::common::device::{device_config, settings_bundle, trusted_key, Device};
use super::common::{free_port, repo};

/// Each test runs a device and installs models: one at a time on the 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

struct Workstation {
    key: SigningKey,
    model: Model,
}

impl Workstation {
    fn new(dir: &Path) -> Workstation {
        let key = trusted_key(dir);
        Workstation {
            key,
            model: Model::open(repo().join("models/default")).unwrap(),
        }
    }

    /// A signed settings-only bundle that sets the image threshold (seen in every result).
    fn pack(&self, version: u64, image_threshold: f32) -> Vec<u8> {
        let (mut m, files) = settings_bundle(&self.model, version, image_threshold);
        bundle::sign_and_pack(&mut m, &files, &self.key).unwrap()
    }

    /// A signed command in the documented wire format (README, "Signed commands"): ed25519
    /// over `maeday-command/1\n<device>\n<seq>\n<command>`.
    fn command(&self, device: &str, seq: u64, text: &str) -> Vec<u8> {
        let sig = self
            .key
            .sign(format!("maeday-command/1\n{device}\n{seq}\n{text}").as_bytes());
        serde_json::to_vec(&serde_json::json!({
            "device": device,
            "seq": seq,
            "command": text,
            "key_id": bundle::key_id(&self.key.verifying_key()),
            "sig": hex::encode(sig.to_bytes()),
        }))
        .unwrap()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Start the device; `stop` (SIGTERM) must find it exiting cleanly.
fn start_device(cfg: &Path) -> Device {
    Device::spawn(
        Command::new(BIN)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}

/// SIGTERM, wait, return its log.
fn stop(device: Device) -> String {
    let out = device.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A broker (the embedded rumqttd), a watcher of everything the device says, the device.
struct Rig {
    port: u16,
    client: Client,
    inbox: Inbox,
    dir: tempfile::TempDir,
    ws: Workstation,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workstation::new(dir.path());
        let port = super::common::broker(8 << 20);
        let (client, inbox, _) = subscribe("127.0.0.1", port, "maeday/dev/#");
        Rig {
            port,
            client,
            inbox,
            dir,
            ws,
        }
    }

    fn start(&self, bundles_extra: &str) -> Device {
        let cfg = device_config(self.dir.path(), self.port, 4.0, bundles_extra);
        let from = self.len();
        let d = start_device(&cfg);
        self.wait(from, "the device online", |t, v| {
            t.ends_with("/status") && v["state"] == "online"
        });
        d
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn len(&self) -> usize {
        self.inbox.messages().len()
    }

    /// The first message from index `from` on (JSON decoded) that `f` accepts.
    fn wait(&self, from: usize, what: &str, mut f: impl FnMut(&str, &Value) -> bool) -> Value {
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            for (t, p) in &self.inbox.messages()[from.min(self.len())..] {
                if t.ends_with("/chunk") || t.ends_with("/command") {
                    continue;
                }
                let v: Value = serde_json::from_slice(p).unwrap_or(Value::Null);
                if f(t, &v) {
                    return v;
                }
            }
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) {
        self.client
            .publish(
                format!("maeday/dev/{topic}"),
                QoS::AtLeastOnce,
                retain,
                payload,
            )
            .unwrap();
    }

    /// Send a bundle's chunks and wait for the verdict on it, sending again when the
    /// device says nothing for 8 s (as `bundle send` does).
    fn send(&self, bytes: &[u8]) -> Value {
        let chunks = split(bytes, 16 << 10);
        let sha = chunks[0].bundle_sha256.clone();
        let from = self.len();
        let until = Instant::now() + Duration::from_secs(90);
        while Instant::now() < until {
            for c in &chunks {
                self.publish("bundle/chunk", false, c.encode());
            }
            let again = Instant::now() + Duration::from_secs(8);
            while Instant::now() < again {
                for (t, p) in &self.inbox.messages()[from..] {
                    let v: Value = serde_json::from_slice(p).unwrap_or(Value::Null);
                    if t.ends_with("/bundle/status")
                        && v["bundle_sha256"] == sha.as_str()
                        && (v["state"] == "installed" || v["state"] == "rejected")
                    {
                        return v;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no verdict on bundle {sha}");
    }

    /// The image threshold of the third result from now on (the frame in flight at a
    /// swap may still come from the old model).
    fn serving_threshold(&self) -> Value {
        let from = self.len();
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let results: Vec<Value> = self.inbox.messages()[from..]
                .iter()
                .filter(|(t, _)| t.ends_with("/result"))
                .map(|(_, p)| serde_json::from_slice::<Value>(p).unwrap())
                .collect();
            if results.len() >= 3 {
                return results[2]["image_threshold"].clone();
            }
            assert!(Instant::now() < until, "no new results");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn serves(&self, threshold: f64) {
        let from = self.len();
        self.wait(
            from,
            &format!("results with threshold {threshold}"),
            |t, v| t.ends_with("/result") && v["image_threshold"] == threshold,
        );
    }
}

fn bundle_status(t: &str, v: &Value, state: &str) -> bool {
    t.ends_with("/bundle/status") && v["state"] == state
}

/// Issue 16, attack 4: an anonymous `rollback` downgraded the model; a retained one re-ran
/// at every reconnect; a captured signed one could be replayed.
#[test]
fn unsigned_replayed_retained_or_foreign_rollbacks_do_not_change_what_serves() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::new();
    let device = rig.start("");
    assert_eq!(rig.send(&rig.ws.pack(2, 15.0))["state"], "installed");
    assert_eq!(rig.send(&rig.ws.pack(3, 30.0))["state"], "installed");
    rig.serves(30.0);

    // Anonymous: refused with a reason, v3 keeps serving.
    let from = rig.len();
    rig.publish("command", false, b"rollback".to_vec());
    let v = rig.wait(from, "the refusal", |t, v| bundle_status(t, v, "rejected"));
    assert_eq!(v["reason"], "unauthorized", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("signed"), "{v}");
    // Signed for another device, or by an unknown key: refused too.
    let from = rig.len();
    rig.publish(
        "command",
        false,
        rig.ws.command("other", now_ms(), "rollback"),
    );
    let v = rig.wait(from, "the foreign refusal", |t, v| {
        bundle_status(t, v, "rejected")
    });
    assert!(v["detail"].as_str().unwrap().contains("other"), "{v}");
    assert_eq!(rig.serving_threshold(), 30.0);

    // Retained while the device is away (unsigned, and signed and fresh): ignored when it
    // comes back, and cleared from the broker.
    stop(device);
    rig.publish("command", true, rig.ws.command("dev", now_ms(), "rollback"));
    rig.publish("command", true, b"rollback".to_vec());
    let from = rig.len();
    let device = rig.start("");
    // Something the device answers, to know it has read the retained ones by then.
    rig.publish("command", false, b"metrics".to_vec());
    rig.wait(from, "metrics", |t, _| t.ends_with("/metrics"));
    assert_eq!(rig.serving_threshold(), 30.0);
    let flips = rig.inbox.messages()[from..]
        .iter()
        .filter(|(t, p)| {
            t.ends_with("/bundle/status")
                && serde_json::from_slice::<Value>(p).unwrap()["state"] == "rolled-back"
        })
        .count();
    assert_eq!(flips, 0, "a retained rollback ran");
    let (_c, fresh, _) = subscribe("127.0.0.1", rig.port, "maeday/dev/command");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        fresh.messages().iter().all(|(_, p)| p.is_empty()),
        "a retained command is still on the broker"
    );

    // Signed for this device by the workstation CLI: rolled back to v2.
    let key = rig.dir.path().join("ws.key");
    std::fs::write(&key, hex::encode(rig.ws.key.to_bytes())).unwrap();
    let from = rig.len();
    let out = Command::new(BIN)
        .args([
            "bundle",
            "command",
            "--key",
            key.to_str().unwrap(),
            "--device",
            "dev",
        ])
        .args([
            "--mqtt-url",
            &format!("mqtt://127.0.0.1:{}", rig.port),
            "rollback",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signed = out.stdout.trim_ascii().to_vec();
    rig.wait(from, "the rollback", |t, v| {
        bundle_status(t, v, "rolled-back")
    });
    rig.serves(15.0);
    // The same signed message again (captured and replayed): refused.
    let from = rig.len();
    rig.publish("command", false, signed);
    let v = rig.wait(from, "the replay refusal", |t, v| {
        bundle_status(t, v, "rejected")
    });
    assert!(v["detail"].as_str().unwrap().contains("replayed"), "{v}");
    assert_eq!(rig.serving_threshold(), 15.0);
    let log = stop(device);
    assert!(log.contains("ignoring a retained message"), "{log}");
}

/// Issue 16, attack 4: after a rollback, `enroll` staged into the slot of the newest bundle,
/// which the device then refused as a downgrade.
#[test]
fn enrollment_never_overwrites_the_newest_bundle_which_can_be_sent_again() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::new();
    let device = rig.start("");
    let v3 = rig.ws.pack(3, 30.0);
    assert_eq!(rig.send(&rig.ws.pack(2, 15.0))["state"], "installed");
    assert_eq!(rig.send(&v3)["state"], "installed");
    let from = rig.len();
    rig.publish(
        "command",
        false,
        rig.ws.command("dev", now_ms(), "rollback"),
    );
    rig.wait(from, "the rollback", |t, v| {
        bundle_status(t, v, "rolled-back")
    });
    rig.serves(15.0);

    let from = rig.len();
    rig.publish(
        "command",
        false,
        rig.ws.command("dev", now_ms(), "enroll 1"),
    );
    let v = rig.wait(from, "the enrollment verdict", |t, v| {
        t.ends_with("/enroll/status") && (v["state"] == "enrolled" || v["state"] == "rejected")
    });
    assert_eq!(v["state"], "rejected", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("newest"), "{v}");
    let active = std::fs::read_to_string(rig.state().join("active.toml")).unwrap();
    assert!(active.contains("previous_version = 3"), "{active}");

    // The newest bundle itself, sent again: not a downgrade.
    let v = rig.send(&v3);
    assert_eq!(v["state"], "installed", "{v}");
    rig.serves(30.0);
    // An older one still is.
    let v = rig.send(&rig.ws.pack(2, 40.0));
    assert_eq!(v["reason"], "downgrade", "{v}");
    stop(device);
}

fn forged(sha: &str, total: u64, index: u32, count: u32, data: Vec<u8>) -> Vec<u8> {
    Chunk {
        bundle_sha256: sha.to_string(),
        total_bytes: total,
        index,
        count,
        sha256: bundle::sha256_hex(&data),
        data,
    }
    .encode()
}

/// (folders, bytes) under the incoming area.
fn incoming(state: &Path) -> (usize, u64) {
    let mut folders = 0;
    let mut bytes = 0;
    if let Ok(rd) = std::fs::read_dir(state.join("incoming")) {
        for e in rd.flatten() {
            folders += 1;
            for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    (folders, bytes)
}

/// Issue 16, attack 5: anonymous chunks filled the disk without bound, a transfer stored
/// more than it declared, a forged first chunk locked out the real bundle, and late
/// chunks left folders behind.
#[test]
fn anonymous_chunks_are_bounded_and_cannot_lock_out_a_real_bundle() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::new();
    // The defaults bound it: 4 partial transfers.
    let device = rig.start("max_bundle_bytes = 1048576");
    // 60 transfers of 32 KiB, each claiming a 64 KiB bundle.
    let from = rig.len();
    for i in 0..60u32 {
        let sha = bundle::sha256_hex(&i.to_le_bytes());
        rig.publish(
            "bundle/chunk",
            false,
            forged(&sha, 65536, 0, 2, vec![i as u8; 32768]),
        );
    }
    let last = bundle::sha256_hex(&59u32.to_le_bytes());
    rig.wait(from, "the last flood chunk", |t, v| {
        t.ends_with("/bundle/status") && v["bundle_sha256"] == last.as_str()
    });
    let (folders, bytes) = incoming(&rig.state());
    assert!(folders <= 4, "{folders} transfers kept");
    assert!(bytes <= 4 * 32768, "{bytes} bytes kept");

    // A transfer that declares 1000 bytes never stores more.
    let small = bundle::sha256_hex(b"small");
    let from = rig.len();
    for i in 0..6 {
        rig.publish(
            "bundle/chunk",
            false,
            forged(&small, 1000, i, 6, vec![i as u8; 1000]),
        );
    }
    rig.wait(from, "the six verdicts", |_, _| {
        rig.inbox.messages()[from..]
            .iter()
            .filter(|(t, p)| {
                t.ends_with("/bundle/status")
                    && serde_json::from_slice::<Value>(p).unwrap()["bundle_sha256"]
                        == small.as_str()
            })
            .count()
            >= 6
    });
    let dir = std::fs::read_dir(rig.state().join("incoming"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&small))
        .expect("the small transfer is kept");
    let stored: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|f| f.metadata().unwrap().len())
        .filter(|n| *n > 100)
        .sum();
    assert!(
        stored <= 1000,
        "{stored} bytes stored for a 1000-byte transfer"
    );

    // A forged first chunk under the real bundle's sha (another shape, other bytes).
    let real = rig.ws.pack(2, 15.0);
    let sha = bundle::sha256_hex(&real);
    let from = rig.len();
    rig.publish(
        "bundle/chunk",
        false,
        forged(&sha, real.len() as u64 + 7, 0, 2, vec![1; 9]),
    );
    rig.wait(from, "the forged chunks taken", |t, v| {
        t.ends_with("/bundle/status") && v["bundle_sha256"] == sha.as_str()
    });
    assert_eq!(rig.send(&real)["state"], "installed");
    rig.serves(15.0);

    // Late duplicates of the installed bundle leave nothing behind.
    let marker = bundle::sha256_hex(b"marker");
    let from = rig.len();
    rig.publish("bundle/chunk", false, split(&real, 1024)[0].encode());
    rig.publish(
        "bundle/chunk",
        false,
        forged(&marker, 2000, 0, 2, vec![3; 1000]),
    );
    rig.wait(from, "the marker", |t, v| {
        t.ends_with("/bundle/status") && v["bundle_sha256"] == marker.as_str()
    });
    let left: Vec<String> = std::fs::read_dir(rig.state().join("incoming"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&sha))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    stop(device);
}

/// Issue 16: a retained command over the client's packet limit made the device reconnect
/// 77 times in 20 s (with duplicated results), and a 900 KB command was logged whole.
#[test]
fn an_oversized_retained_command_causes_no_reconnect_loop_and_logs_stay_short() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let port = super::common::broker(8 << 20);
    let (client, inbox, _) = subscribe("127.0.0.1", port, "maeday/dev/#");
    // Over the device's packet limit (1 MiB), retained before it connects.
    client
        .publish(
            "maeday/dev/command",
            QoS::AtLeastOnce,
            true,
            vec![b'x'; 2 << 20],
        )
        .unwrap();
    let gif = conveyor_gif();
    let cfg = config(
        tmp.path(),
        "dev",
        &replay_source(&gif, "fps = 8, loop = true"),
        &format!(
            "[output]\nformat = \"json\"\nmetrics_interval_s = 0\n{}",
            mqtt_section(
                &format!("mqtt://127.0.0.1:{port}"),
                &tmp.path().join("spool"),
                ""
            )
        ),
    );
    inbox.wait_for(
        "the retained command at the broker",
        Duration::from_secs(10),
        |m| m.iter().any(|(t, _)| t.ends_with("/command")),
    );
    let child = run_daemon(&["--config", cfg.to_str().unwrap(), "--max-frames", "40"]);
    inbox.wait_for("a first result", Duration::from_secs(60), |m| {
        m.iter().any(|(t, _)| t.ends_with("/result"))
    });
    // Under the limit, not retained: read, refused, logged short.
    client
        .publish(
            "maeday/dev/command",
            QoS::AtLeastOnce,
            false,
            vec![b'y'; 900_000],
        )
        .unwrap();
    let out = finish(child, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    let connects = s["mqtt"]["connects"].as_u64().unwrap();
    assert!(connects <= 2, "{connects} connects: {s}");
    // Every frame arrives (at least once, in order).
    assert_complete_in_order(&seqs(&inbox.results()), 40);
    let log = String::from_utf8_lossy(&out.stderr);
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1000, "a log line of {longest} characters");
    assert!(
        log.contains("yyyy"),
        "the big command was not logged at all"
    );
}

/// Issue 16: the embedded broker accepted anonymous clients. With users, only they connect.
#[test]
fn the_embedded_broker_with_users_refuses_anonymous_clients() {
    let port = free_port();
    let mut broker = Command::new(BIN)
        .args([
            "broker",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--user",
            "dev:s3cret",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let connect = |login: Option<(&str, &str)>, wait_s: u64| -> Result<(), String> {
        let mut opts = MqttOptions::new(format!("probe-{}", free_port()), "127.0.0.1", port);
        if let Some((u, p)) = login {
            opts.set_credentials(u, p);
        }
        let (_c, mut conn) = Client::new(opts, 4);
        let until = Instant::now() + Duration::from_secs(wait_s);
        let mut last = String::from("nothing");
        while Instant::now() < until {
            match conn.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(Event::Incoming(Incoming::ConnAck(a)))) => {
                    return if a.code == rumqttc::ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("{:?}", a.code))
                    }
                }
                Ok(Err(e)) => {
                    last = e.to_string();
                    // Refused, or not listening yet: try again until the deadline.
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {}
            }
        }
        Err(last)
    };
    // The first waits for the broker to listen.
    let ok = connect(Some(("dev", "s3cret")), 15);
    let anonymous = connect(None, 3);
    let wrong = connect(Some(("dev", "guess")), 3);
    let _ = broker.kill();
    let out = broker.wait_with_output().unwrap();
    assert_eq!(ok, Ok(()), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(anonymous.is_err(), "an anonymous client connected");
    assert!(wrong.is_err(), "a wrong password connected");
}
