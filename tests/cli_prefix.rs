//! `bundle send|command --topic-prefix`: the workstation CLI reaches a device whose
//! `mqtt.topic_prefix` is not the default. The real daemon (`plant/line3` prefix) and the
//! real CLI against a real broker (rumqttd in the test): a settings bundle installs (the
//! CLI waits for the verdict on the prefixed status topic), the same bundle sent under the
//! default prefix reaches nobody, a signed `rollback` under the prefix rolls back.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::daemon::{decode, subscribe, BIN};
use common::device::{device_config, Device};
use common::repo;

fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A settings-only bundle for device `dev` (image threshold 12) signed by `key`.
fn pack(dir: &Path, key: &str, out: &str) {
    let model = dir.join("m");
    std::fs::create_dir(&model).unwrap();
    let default = repo().join("models/default");
    for f in ["manifest.toml", "maeday-tiny-textures.onnx"] {
        std::fs::copy(default.join(f), model.join(f)).unwrap();
    }
    let mut text = std::fs::read_to_string(model.join("manifest.toml")).unwrap();
    text.push_str("\n[thresholds]\nimage = 12.0\npixel = 5.0\n");
    std::fs::write(model.join("manifest.toml"), &text).unwrap();
    let golden = repo().join("models/samples/coffee-224.png");
    ok(&cli(&[
        "bundle",
        "pack",
        "--model",
        model.to_str().unwrap(),
        "--key",
        key,
        "--version",
        "2",
        "--device",
        "dev",
        "--golden",
        golden.to_str().unwrap(),
        "--settings-only",
        "--out",
        out,
    ]));
}

#[test]
fn send_and_command_reach_a_device_under_a_custom_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    ok(&cli(&["bundle", "keygen", "--out", &p("ws")]));
    std::fs::copy(tmp.path().join("ws.pub"), tmp.path().join("trusted.pub")).unwrap();
    pack(tmp.path(), &p("ws.key"), &p("v2.bundle"));

    let port = common::broker(8 << 20);
    let cfg = device_config(tmp.path(), port, 5.0, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[bundles]", "topic_prefix = \"plant/line3\"\n[bundles]");
    std::fs::write(&cfg, text).unwrap();
    let (_c, inbox, _) = subscribe("127.0.0.1", port, "plant/line3/dev/#");
    let device = Device::spawn(
        Command::new(BIN)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    inbox.wait_for("the device online", Duration::from_secs(60), |m| {
        m.iter()
            .any(|(t, p)| t == "plant/line3/dev/status" && decode(p)["state"] == "online")
    });
    let url = format!("mqtt://127.0.0.1:{port}");
    let bundle = p("v2.bundle");
    let send = |extra: &[&str]| {
        let mut args = vec![
            "bundle",
            "send",
            "--bundle",
            &bundle,
            "--mqtt-url",
            &url,
            "--device",
            "dev",
            "--chunk-bytes",
            "32768",
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    // The default prefix reaches nobody: no verdict within the wait.
    let o = send(&["--wait-s", "3"]);
    assert!(!o.status.success());
    // Under the device's prefix: installed, the verdict read from its status topic.
    let o = send(&["--topic-prefix", "plant/line3"]);
    ok(&o);
    let verdict: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (verdict["state"].as_str(), verdict["version"].as_u64()),
        (Some("installed"), Some(2)),
        "{verdict}"
    );
    // A signed rollback under the prefix.
    ok(&cli(&[
        "bundle",
        "command",
        "--key",
        &p("ws.key"),
        "--device",
        "dev",
        "--mqtt-url",
        &url,
        "--topic-prefix",
        "plant/line3",
        "rollback",
    ]));
    inbox.wait_for("the rollback", Duration::from_secs(60), |m| {
        m.iter().any(|(t, p)| {
            t == "plant/line3/dev/bundle/status" && decode(p)["state"] == "rolled-back"
        })
    });
    // A prefix that is not topic levels is refused, naming the option.
    for bad in ["plant/+/x", "a b", ""] {
        let o = send(&["--topic-prefix", bad]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--topic-prefix"), "{bad:?}: {err}");
    }
    drop(device);
}
