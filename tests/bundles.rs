//! Retrain bundles end to end: the real daemon, a real broker (rumqttd), the real default
//! model, bundles signed with real ed25519 keys and sent in chunks over MQTT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use maeday_edge::model::manifest::Model;
use maeday_edge::update::bundle::{self, BundleManifest, GoldenFrame};
use maeday_edge::update::transfer::split;
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;

mod common;
use common::device::{device_config, settings_bundle, trusted_key, Device};
use common::{free_port, repo};

const BIN: &str = env!("CARGO_BIN_EXE_maeday-edge");

/// The two tests each run a device and load models repeatedly: on a 2-core machine, run
/// them one at a time so the frame-drop check measures the swap, not the other test.
static SERIAL: Mutex<()> = Mutex::new(());

/// The workstation side: a signing key and the model the bundles are made from.
struct Workstation {
    key: ed25519_dalek::SigningKey,
    model: Model,
    golden: Vec<u8>,
    golden_score: f32,
}

impl Workstation {
    fn new(dir: &Path) -> Workstation {
        let key = trusted_key(dir);
        let model = Model::open(repo().join("models/default")).unwrap();
        let golden_path = repo().join("models/samples/coffee-224.png");
        let golden = std::fs::read(&golden_path).unwrap();
        // The expected score comes from this runtime, as `bundle pack` computes it.
        let mut d =
            maeday_edge::detect::detector::Detector::new(model.clone(), &Default::default())
                .unwrap();
        let golden_score = d
            .detect(&image::load_from_memory(&golden).unwrap())
            .unwrap()
            .score;
        Workstation {
            key,
            model,
            golden,
            golden_score,
        }
    }

    /// A settings-only bundle that sets the image threshold (observable in every result).
    fn bundle(
        &self,
        version: u64,
        image_threshold: f32,
    ) -> (BundleManifest, BTreeMap<String, Vec<u8>>) {
        let (mut m, mut files) = settings_bundle(&self.model, version, image_threshold);
        files.insert("golden/coffee.png".to_string(), self.golden.clone());
        m.golden = vec![GoldenFrame {
            file: "golden/coffee.png".into(),
            score: self.golden_score,
        }];
        (m, files)
    }

    fn pack(&self, version: u64, image_threshold: f32) -> Vec<u8> {
        let (mut m, files) = self.bundle(version, image_threshold);
        bundle::sign_and_pack(&mut m, &files, &self.key).unwrap()
    }

    fn pack_with(
        &self,
        version: u64,
        edit: impl FnOnce(&mut BundleManifest, &mut BTreeMap<String, Vec<u8>>),
        key: &ed25519_dalek::SigningKey,
    ) -> Vec<u8> {
        let (mut m, mut files) = self.bundle(version, 50.0);
        edit(&mut m, &mut files);
        bundle::sign_and_pack(&mut m, &files, key).unwrap()
    }
}

type Inbox = Arc<Mutex<Vec<(Instant, String, Value)>>>;

/// A subscriber to everything the device says, decoded (JSON payloads).
fn watch(port: u16) -> (Client, Inbox) {
    let mut opts = MqttOptions::new(format!("watch-{}", free_port()), "127.0.0.1", port);
    opts.set_max_packet_size(8 << 20, 8 << 20);
    let (client, mut conn) = Client::new(opts, 256);
    client.subscribe("maeday/dev/#", QoS::AtLeastOnce).unwrap();
    let inbox: Inbox = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let inbox = inbox.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        if p.topic.ends_with("/chunk") {
                            continue;
                        }
                        let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        inbox
                            .lock()
                            .unwrap()
                            .push((Instant::now(), p.topic.clone(), v));
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
    }
    rx.recv_timeout(Duration::from_secs(10)).expect("SUBACK");
    (client, inbox)
}

fn start_device(cfg: &Path, crash_at: Option<&str>, extra: &[&str]) -> Device {
    let mut c = Command::new(BIN);
    c.args(["run", "--config", cfg.to_str().unwrap()])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(step) = crash_at {
        c.env("MAEDAY_CRASH_AT", step);
    }
    Device::spawn(&mut c)
}

fn wait_for(
    inbox: &Inbox,
    what: &str,
    timeout: Duration,
    f: impl Fn(&str, &Value) -> bool,
) -> Value {
    wait_for_from(inbox, 0, what, timeout, f)
}

/// Like `wait_for`, over the messages from index `from` on.
fn wait_for_from(
    inbox: &Inbox,
    from: usize,
    what: &str,
    timeout: Duration,
    f: impl Fn(&str, &Value) -> bool,
) -> Value {
    let until = Instant::now() + timeout;
    loop {
        if let Some((_, _, v)) = inbox.lock().unwrap()[from..]
            .iter()
            .find(|(_, t, v)| f(t, v))
        {
            return v.clone();
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Publish a command to the device, signed by the workstation key (`rollback` and
/// `enroll` must be); returns where the inbox stood, to wait from.
fn command(client: &Client, inbox: &Inbox, key: &ed25519_dalek::SigningKey, text: &str) -> usize {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let payload = maeday_edge::update::command::sign(key, "dev", seq, text).encode();
    let from = inbox.lock().unwrap().len();
    client
        .publish("maeday/dev/command", QoS::AtLeastOnce, false, payload)
        .unwrap();
    from
}

/// The memory bank of the model slot the device has active.
fn active_bank_toml(state: &Path) -> PathBuf {
    let active: toml::Table =
        toml::from_str(&std::fs::read_to_string(state.join("active.toml")).unwrap()).unwrap();
    state.join(format!(
        "slots/{}/bank/bank.toml",
        active["active"].as_str().unwrap()
    ))
}

/// Publish a bundle's chunks (optionally shuffled with duplicates) and wait for the verdict.
fn send(client: &Client, inbox: &Inbox, bytes: &[u8], messy: bool) -> Value {
    let mut chunks = split(bytes, 16 << 10);
    if messy {
        chunks.reverse();
        let dup = chunks[chunks.len() / 2].clone();
        chunks.insert(0, dup.clone());
        chunks.push(dup);
    }
    let sha = chunks[0].bundle_sha256.clone();
    let from = inbox.lock().unwrap().len();
    for c in &chunks {
        client
            .publish(
                "maeday/dev/bundle/chunk",
                QoS::AtLeastOnce,
                false,
                c.encode(),
            )
            .unwrap();
    }
    wait_for_from(
        inbox,
        from,
        "a bundle verdict",
        Duration::from_secs(120),
        |t, v| {
            t.ends_with("/bundle/status")
                && v["bundle_sha256"] == sha.as_str()
                && (v["state"] == "installed" || v["state"] == "rejected")
        },
    )
}

/// The image threshold in the first result that arrives from now on (what the serving
/// model says).
fn latest_threshold(inbox: &Inbox) -> Value {
    let n = inbox.lock().unwrap().len();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let g = inbox.lock().unwrap();
            if let Some((_, _, v)) = g[n..].iter().find(|(_, t, _)| t.ends_with("/result")) {
                return v["image_threshold"].clone();
            }
        }
        assert!(Instant::now() < until, "no new result");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until results come with `expected` as their image threshold (the frame in flight at
/// a swap still comes from the old model).
fn wait_threshold(inbox: &Inbox, expected: f64) {
    wait_for(
        inbox,
        &format!("results with threshold {expected}"),
        Duration::from_secs(30),
        |t, v| t.ends_with("/result") && v["image_threshold"] == expected,
    );
}

fn wait_threshold_after(inbox: &Inbox, n: usize, expected: f64) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let g = inbox.lock().unwrap();
            if g[n..]
                .iter()
                .any(|(_, t, v)| t.ends_with("/result") && v["image_threshold"] == expected)
            {
                return;
            }
        }
        assert!(
            Instant::now() < until,
            "no result with threshold {expected}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn good_bundles_swap_without_dropping_frames_bad_ones_are_rejected_with_their_reason() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workstation::new(tmp.path());
    let port = common::broker(8 << 20);
    let (client, inbox) = watch(port);
    let cfg = device_config(tmp.path(), port, 2.0, "");
    let device = start_device(&cfg, None, &[]);
    wait_for(
        &inbox,
        "the device online on its factory model",
        Duration::from_secs(60),
        |t, v| t.ends_with("dev/status") && v["state"] == "online" && v["bundle_version"].is_null(),
    );
    assert_eq!(
        latest_threshold(&inbox),
        Value::Null,
        "factory model is uncalibrated"
    );

    // A good bundle, its chunks reversed and duplicated: installed, and the next results
    // come from it.
    let v = send(&client, &inbox, &ws.pack(2, 15.0), true);
    assert_eq!(v["state"], "installed", "{v}");
    wait_threshold(&inbox, 15.0);

    let other = bundle::generate_key().unwrap();
    let key = &ws.key;
    let good = ws.pack(5, 30.0);
    let mut bad_sig = good.clone();
    {
        // Flip one hex digit of the signature in place (same length, still hex).
        let at = bad_sig
            .windows(128)
            .position(|w| w.iter().all(u8::is_ascii_hexdigit))
            .unwrap();
        bad_sig[at] = if bad_sig[at] == b'0' { b'1' } else { b'0' };
    }
    let mut tampered = good.clone();
    {
        // Change one byte of the golden PNG inside the archive (past its header block).
        let png = tampered
            .windows(8)
            .position(|w| w == b"\x89PNG\r\n\x1a\n")
            .unwrap();
        tampered[png + 100] ^= 0x55;
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("tampered", tampered),
        ("bad-signature", bad_sig),
        ("unknown-key", ws.pack_with(6, |_, _| {}, &other)),
        ("corrupt", good[..good.len() / 2].to_vec()),
        ("downgrade", ws.pack(2, 40.0)),
        ("wrong-abi", ws.pack_with(7, |m, _| m.abi.masks = 16, key)),
        (
            "golden-mismatch",
            ws.pack_with(8, |m, _| m.golden[0].score *= 1.5, key),
        ),
        (
            "not-for-this-device",
            ws.pack_with(9, |m, _| m.target.devices = vec!["other".into()], key),
        ),
        (
            "invalid-model",
            ws.pack_with(
                10,
                |_, f| {
                    f.insert(
                        "model/manifest.toml".into(),
                        b"format_version = 1\n".to_vec(),
                    );
                },
                key,
            ),
        ),
    ];
    for (reason, bytes) in cases {
        let v = send(&client, &inbox, &bytes, false);
        assert_eq!(v["state"], "rejected", "{reason}: {v}");
        assert_eq!(v["reason"], reason, "{v}");
        assert!(v["detail"].as_str().unwrap().len() > 5, "{v}");
        assert_eq!(
            latest_threshold(&inbox),
            15.0,
            "after {reason} the old model must serve"
        );
    }
    // A chunk that does not match its hash is refused on its own.
    let mut chunk = split(&good, 16 << 10).remove(0);
    chunk.data[0] ^= 1;
    client
        .publish(
            "maeday/dev/bundle/chunk",
            QoS::AtLeastOnce,
            false,
            chunk.encode(),
        )
        .unwrap();
    let v = wait_for(
        &inbox,
        "the corrupt-chunk verdict",
        Duration::from_secs(30),
        |t, v| {
            t.ends_with("/bundle/status")
                && v["state"] == "chunk-rejected"
                && v["reason"] == "corrupt"
                && v["bundle_sha256"] == chunk.bundle_sha256.as_str()
        },
    );
    assert!(v["detail"].as_str().unwrap().contains("hash"), "{v}");

    // A second good bundle, then roll back to the first.
    let v = send(&client, &inbox, &good, false);
    assert_eq!(v["state"], "installed", "{v}");
    wait_threshold(&inbox, 30.0);
    // The retained status follows the serving model.
    wait_for(
        &inbox,
        "the status naming bundle v5",
        Duration::from_secs(30),
        |t, v| t.ends_with("dev/status") && v["state"] == "online" && v["bundle_version"] == 5,
    );
    let n = command(&client, &inbox, &ws.key, "rollback");
    wait_for_from(
        &inbox,
        n,
        "the rollback",
        Duration::from_secs(60),
        |t, v| t.ends_with("/bundle/status") && v["state"] == "rolled-back",
    );
    let n = inbox.lock().unwrap().len();
    wait_threshold_after(&inbox, n, 15.0);
    wait_for_from(
        &inbox,
        n,
        "the status naming bundle v2 again",
        Duration::from_secs(30),
        |t, v| t.ends_with("dev/status") && v["state"] == "online" && v["bundle_version"] == 2,
    );

    let out = device.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    // No frame was dropped across three swaps and ten rejections, and none was lost.
    assert_eq!(summary["cameras"][0]["dropped"], 0, "{summary}");
    let g = inbox.lock().unwrap();
    let results: Vec<(Instant, u64)> = g
        .iter()
        .filter(|(_, t, _)| t.ends_with("/result"))
        .map(|(at, _, v)| (*at, v["seq"].as_u64().unwrap()))
        .collect();
    let seqs: Vec<u64> = results.iter().map(|r| r.1).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let gap = results.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap();
    eprintln!(
        "{} results at 2 fps across 3 swaps: 0 dropped, longest gap between results {:.0} ms",
        seqs.len(),
        gap.as_secs_f64() * 1e3
    );
}

#[test]
fn killed_at_each_install_step_the_device_restarts_on_a_valid_model() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let steps = [
        "verified",
        "staged",
        "renamed",
        "golden-checked",
        "switched",
        "before-activate",
    ];
    for step in steps {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workstation::new(tmp.path());
        let port = common::broker(8 << 20);
        let (client, inbox) = watch(port);
        let cfg = device_config(tmp.path(), port, 10.0, "");
        let mut device = start_device(&cfg, Some(step), &[]);
        wait_for(
            &inbox,
            "the device online",
            Duration::from_secs(60),
            |t, v| t.ends_with("/status") && v["state"] == "online",
        );
        let bytes = ws.pack(2, 15.0);
        for c in split(&bytes, 16 << 10) {
            client
                .publish(
                    "maeday/dev/bundle/chunk",
                    QoS::AtLeastOnce,
                    false,
                    c.encode(),
                )
                .unwrap();
        }
        let until = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = device.child().try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < until, "{step}: the device did not crash");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{step}: the crash hook did not fire");

        // Restart: it must come up on a valid model (the factory one: nothing was activated).
        let out = Command::new(BIN)
            .args([
                "run",
                "--config",
                cfg.to_str().unwrap(),
                "--max-frames",
                "2",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{step}: restart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap())
                .unwrap();
        assert_eq!(summary["cameras"][0]["scored"], 2, "{step}");
        let active =
            std::fs::read_to_string(tmp.path().join("state/active.toml")).unwrap_or_default();
        assert!(
            !active.contains("active = "),
            "{step}: nothing may be active yet: {active}"
        );

        if step == "renamed" {
            // The half-done install does not block a new one: re-send, it installs, and a
            // restart serves it.
            let from = inbox.lock().unwrap().len();
            let device = start_device(&cfg, None, &[]);
            wait_for_from(
                &inbox,
                from,
                "the device online again",
                Duration::from_secs(60),
                |t, v| t.ends_with("/status") && v["state"] == "online",
            );
            let v = send(&client, &inbox, &bytes, false);
            assert_eq!(v["state"], "installed", "{v}");
            let out = device.stop();
            assert!(out.status.success());
            let n = inbox.lock().unwrap().len();
            let out = Command::new(BIN)
                .args([
                    "run",
                    "--config",
                    cfg.to_str().unwrap(),
                    "--max-frames",
                    "2",
                ])
                .output()
                .unwrap();
            assert!(out.status.success());
            let g = inbox.lock().unwrap();
            let thresholds: Vec<Value> = g[n..]
                .iter()
                .filter(|(_, t, _)| t.ends_with("/result"))
                .map(|(_, _, v)| v["image_threshold"].clone())
                .collect();
            assert!(!thresholds.is_empty());
            assert!(thresholds.iter().all(|t| *t == 15.0), "{thresholds:?}");
            // After the restart the status names the installed bundle from the start.
            let online: Vec<Value> = g[n..]
                .iter()
                .filter(|(_, t, s)| t.ends_with("dev/status") && s["state"] == "online")
                .map(|(_, _, s)| s["bundle_version"].clone())
                .collect();
            assert!(!online.is_empty(), "no online status after the restart");
            assert!(
                online.iter().all(|b| *b == v["version"]),
                "{online:?} vs {v}"
            );
        }
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// The workstation CLI end to end: keygen, pack, verify, sign, send to a fleet group and
/// to one device (waiting for its verdict).
#[test]
fn workstation_cli_packs_verifies_and_sends_to_a_group_and_a_device() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    assert!(cli(&["bundle", "keygen", "--out", &p("ws")])
        .status
        .success());
    assert!(cli(&["bundle", "keygen", "--out", &p("rogue")])
        .status
        .success());
    assert!(
        !cli(&["bundle", "keygen", "--out", &p("ws")])
            .status
            .success(),
        "overwrote a key"
    );
    std::fs::copy(tmp.path().join("ws.pub"), tmp.path().join("trusted.pub")).unwrap();

    // A settings-only bundle for the fleet group.
    let model = tmp.path().join("m");
    std::fs::create_dir(&model).unwrap();
    let default = repo().join("models/default");
    for f in ["manifest.toml", "maeday-tiny-textures.onnx"] {
        std::fs::copy(default.join(f), model.join(f)).unwrap();
    }
    let mut text = std::fs::read_to_string(model.join("manifest.toml")).unwrap();
    text.push_str("\n[thresholds]\nimage = 12.0\npixel = 5.0\n");
    std::fs::write(model.join("manifest.toml"), &text).unwrap();
    let golden = repo().join("models/samples/coffee-224.png");
    let key = p("ws.key");
    let pack = |version: &str, target: &[&str], out: &str, settings_only: bool| {
        let mut args = vec![
            "bundle",
            "pack",
            "--model",
            model.to_str().unwrap(),
            "--key",
            &key,
            "--version",
            version,
            "--golden",
            golden.to_str().unwrap(),
            "--out",
            out,
        ];
        args.extend_from_slice(target);
        if settings_only {
            args.push("--settings-only");
        }
        let o = cli(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    pack("2", &["--group", "conveyors"], &p("v2.bundle"), true);
    let ok = cli(&[
        "bundle",
        "verify",
        "--bundle",
        &p("v2.bundle"),
        "--trusted",
        &p("ws.pub"),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = cli(&[
        "bundle",
        "verify",
        "--bundle",
        &p("v2.bundle"),
        "--trusted",
        &p("rogue.pub"),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown-key"));

    let port = common::broker(8 << 20);
    let (_client, inbox) = watch(port);
    let cfg = device_config(tmp.path(), port, 5.0, "groups = [\"conveyors\"]");
    let device = start_device(&cfg, None, &[]);
    wait_for(
        &inbox,
        "the device online",
        Duration::from_secs(60),
        |t, v| t.ends_with("/status") && v["state"] == "online",
    );
    let url = format!("mqtt://127.0.0.1:{port}");
    // Chunks above the device's limit (64 KiB here) are refused one by one...
    let o = cli(&[
        "bundle",
        "send",
        "--bundle",
        &p("v2.bundle"),
        "--mqtt-url",
        &url,
        "--group",
        "conveyors",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = wait_for(
        &inbox,
        "the chunk-size refusal",
        Duration::from_secs(60),
        |t, v| t.ends_with("/bundle/status") && v["state"] == "chunk-rejected",
    );
    assert_eq!(v["reason"], "too-large", "{v}");
    // ...and accepted when they fit.
    let o = cli(&[
        "bundle",
        "send",
        "--bundle",
        &p("v2.bundle"),
        "--mqtt-url",
        &url,
        "--group",
        "conveyors",
        "--chunk-bytes",
        "32768",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = wait_for(
        &inbox,
        "the fleet bundle verdict",
        Duration::from_secs(120),
        |t, v| {
            t.ends_with("/bundle/status") && (v["state"] == "installed" || v["state"] == "rejected")
        },
    );
    assert_eq!(v["state"], "installed", "{v}");
    assert_eq!(v["version"], 2);
    wait_threshold(&inbox, 12.0);

    // A full bundle (graph included) to the device, many chunks; `send` waits for the verdict.
    pack("3", &["--device", "dev"], &p("v3.bundle"), false);
    let o = cli(&[
        "bundle",
        "send",
        "--bundle",
        &p("v3.bundle"),
        "--mqtt-url",
        &url,
        "--device",
        "dev",
        "--chunk-bytes",
        "65536",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let verdict: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(verdict["state"], "installed", "{verdict}");
    assert_eq!(verdict["version"], 3);

    // Re-signed by a key the device does not trust: `send` reports the refusal, exit 1.
    let o = cli(&[
        "bundle",
        "sign",
        "--bundle",
        &p("v3.bundle"),
        "--key",
        &p("rogue.key"),
        "--out",
        &p("v4.bundle"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli(&[
        "bundle",
        "send",
        "--bundle",
        &p("v4.bundle"),
        "--mqtt-url",
        &url,
        "--device",
        "dev",
        "--chunk-bytes",
        "65536",
    ]);
    assert!(!o.status.success());
    let verdict: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(verdict["reason"], "unknown-key", "{verdict}");
    let out = device.stop();
    assert!(out.status.success());
}

/// Results (topic `/result`) in the inbox from index `from` to `to`.
fn results_between(inbox: &Inbox, from: usize, to: usize) -> Vec<Value> {
    inbox.lock().unwrap()[from..to]
        .iter()
        .filter(|(_, t, _)| t.ends_with("/result"))
        .map(|(_, _, v)| v.clone())
        .collect()
}

fn index_of(inbox: &Inbox, f: impl Fn(&str, &Value) -> bool) -> usize {
    inbox
        .lock()
        .unwrap()
        .iter()
        .position(|(_, t, v)| f(t, v))
        .expect("message seen")
}

#[test]
fn enrollment_over_mqtt_keeps_serving_then_swaps_to_the_ensemble_and_rolls_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workstation::new(tmp.path());
    let port = common::broker(8 << 20);
    let (client, inbox) = watch(port);
    let cfg = device_config(tmp.path(), port, 4.0, "");
    let device = start_device(&cfg, None, &[]);
    wait_for(
        &inbox,
        "results from MAEDAY alone",
        Duration::from_secs(60),
        |t, v| t.ends_with("/result") && v["scorer"] == "maeday",
    );

    // Unusable requests are refused without disturbing anything.
    for bad in ["enroll 0", "enroll 3 nosuchcamera", "enroll many"] {
        command(&client, &inbox, &ws.key, bad);
    }
    // Each is answered on enroll/status.
    let until = Instant::now() + Duration::from_secs(30);
    while inbox
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, t, v)| t.ends_with("/enroll/status") && v["state"] == "rejected")
        .count()
        < 3
    {
        assert!(Instant::now() < until, "the three refusals did not come");
        std::thread::sleep(Duration::from_millis(20));
    }
    let details: Vec<String> = inbox
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, t, _)| t.ends_with("/enroll/status"))
        .map(|(_, _, v)| v["detail"].as_str().unwrap_or("").to_string())
        .collect();
    for (d, want) in details.iter().zip([
        "frames must be 1 to 64",
        "no camera \"nosuchcamera\"",
        "is not a frame count",
    ]) {
        assert!(d.contains(want), "{d:?} should say {want:?}");
    }
    let from = command(&client, &inbox, &ws.key, "enroll 3");
    let done = wait_for_from(
        &inbox,
        from,
        "the enrollment's verdict",
        Duration::from_secs(120),
        |t, v| {
            t.ends_with("/enroll/status") && (v["state"] == "enrolled" || v["state"] == "rejected")
        },
    );
    assert_eq!(done["state"], "enrolled", "{done}");
    assert_eq!(done["frames"], 3);
    let rows = done["rows"].as_u64().unwrap();
    // 3 frames x 784 patches, a quarter kept by the coreset.
    assert_eq!(done["rows_before_coreset"], 3 * 784);
    assert_eq!(rows, (3 * 784u64).div_ceil(4));
    let threshold = done["image_threshold"].as_f64().unwrap();

    // The serving model kept scoring frames while the bank was built.
    let building = index_of(&inbox, |t, v| {
        t.ends_with("/enroll/status") && v["state"] == "building"
    });
    let enrolled = index_of(&inbox, |t, v| {
        t.ends_with("/enroll/status") && v["state"] == "enrolled"
    });
    let during = results_between(&inbox, building, enrolled);
    assert!(
        !during.is_empty() && during.iter().all(|v| v["scorer"] == "maeday"),
        "results during the enrollment: {during:?}"
    );
    // Then the ensemble serves, with the thresholds calibrated at enrollment.
    let after = wait_for_from(
        &inbox,
        enrolled,
        "results from the ensemble",
        Duration::from_secs(30),
        |t, v| t.ends_with("/result") && v["scorer"] == "ensemble",
    );
    assert_eq!(after["image_threshold"].as_f64().unwrap(), threshold);
    wait_for(
        &inbox,
        "a retained status naming the bank",
        Duration::from_secs(30),
        |t, v| {
            t.ends_with("dev/status")
                && v["scorer"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("ensemble (bank "))
        },
    );
    assert!(active_bank_toml(&tmp.path().join("state")).is_file());

    // `rollback` after an enrollment on the factory model returns to it: MAEDAY alone.
    let from = command(&client, &inbox, &ws.key, "rollback");
    wait_for_from(
        &inbox,
        from,
        "MAEDAY alone after the rollback",
        Duration::from_secs(60),
        |t, v| t.ends_with("/result") && v["scorer"] == "maeday",
    );
    // Enroll again (same frames, same seed: the same bank).
    let from = command(&client, &inbox, &ws.key, "enroll 3");
    let again = wait_for_from(
        &inbox,
        from,
        "the second enrollment",
        Duration::from_secs(120),
        |t, v| t.ends_with("/enroll/status") && v["state"] != "building",
    );
    assert_eq!(again["state"], "enrolled", "{again}");
    assert_eq!(again["rows"].as_u64(), Some(rows));
    wait_for_from(
        &inbox,
        from,
        "the ensemble again",
        Duration::from_secs(30),
        |t, v| t.ends_with("/result") && v["scorer"] == "ensemble",
    );

    // A bundle with a new schedule (seed 7) carries the bank over and enrolls it again for
    // that schedule: the ensemble stays calibrated for what serves.
    let golden_7 = {
        let opts = maeday_edge::detect::detector::DetectorOptions {
            seed: Some(7),
            ..Default::default()
        };
        let mut d = maeday_edge::detect::detector::Detector::new(ws.model.clone(), &opts).unwrap();
        d.detect(&image::load_from_memory(&ws.golden).unwrap())
            .unwrap()
            .score
    };
    let reseeded = ws.pack_with(
        2,
        |m, files| {
            let text = String::from_utf8(files["model/manifest.toml"].clone()).unwrap();
            assert!(text.contains("keep = 49\nseed = 0"));
            files.insert(
                "model/manifest.toml".into(),
                text.replace("keep = 49\nseed = 0", "keep = 49\nseed = 7")
                    .into_bytes(),
            );
            m.golden[0].score = golden_7;
        },
        &ws.key,
    );
    let v = send(&client, &inbox, &reseeded, false);
    assert_eq!(v["state"], "installed", "{v}");
    let from = inbox.lock().unwrap().len();
    let r = wait_for_from(
        &inbox,
        from,
        "a result on seed 7",
        Duration::from_secs(30),
        |t, v| t.ends_with("/result") && v["schedule"].as_str().is_some_and(|s| s.contains("-s7-")),
    );
    assert_eq!(r["scorer"], "ensemble");
    let bank_toml = active_bank_toml(&tmp.path().join("state"));
    let bank: toml::Table = toml::from_str(&std::fs::read_to_string(bank_toml).unwrap()).unwrap();
    assert_eq!(
        bank["maeday"]["schedule"].as_str(),
        r["schedule"].as_str(),
        "the carried bank was not enrolled again"
    );
    assert_eq!(
        bank["rows"].as_integer(),
        Some(rows as i64),
        "same frames, same seed"
    );

    // A restart serves the bundle and its bank again; a rollback returns to the enrollment.
    let out = device.stop();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    for refusal in [
        "frames must be 1 to 64",
        "no camera",
        "is not a frame count",
    ] {
        assert!(log.contains(refusal), "no {refusal:?} in the log:\n{log}");
    }
    let from = inbox.lock().unwrap().len();
    let device = start_device(&cfg, None, &[]);
    wait_for_from(
        &inbox,
        from,
        "the bundle's ensemble after a restart",
        Duration::from_secs(60),
        |t, v| {
            t.ends_with("/result")
                && v["scorer"] == "ensemble"
                && v["schedule"].as_str().is_some_and(|s| s.contains("-s7-"))
        },
    );
    let from = command(&client, &inbox, &ws.key, "rollback");
    wait_for_from(
        &inbox,
        from,
        "the enrollment's seed-0 ensemble after a rollback",
        Duration::from_secs(60),
        |t, v| {
            t.ends_with("/result")
                && v["scorer"] == "ensemble"
                && v["schedule"].as_str().is_some_and(|s| s.contains("-s0-"))
        },
    );
    let out = device.stop();
    assert!(out.status.success());
}
