//! The daemon test harness: configs, a real MQTT subscriber, starting and finishing the
//! real binary. Shared by `tests/daemon.rs` and `tests/hostile.rs`.
#![allow(dead_code)] // each test crate uses a part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;

use super::{free_port, repo};

pub const BIN: &str = env!("CARGO_BIN_EXE_maeday-edge");

pub fn conveyor_gif() -> PathBuf {
    let p = repo().join("../shared/data/conveyor/bolt-multi-size-detection.gif");
    assert!(
        p.is_file(),
        "{} is missing: the tests need ../shared beside the repo",
        p.display()
    );
    p
}

/// A replay source table for a camera: `path` plus extra fields (`fps = 6, loop = true`).
pub fn replay_source(path: &Path, fields: &str) -> String {
    let sep = if fields.is_empty() { "" } else { ", " };
    format!(
        "{{ kind = \"replay\", path = \"{}\"{sep}{fields} }}",
        path.display()
    )
}

/// A daemon config for tests: one replay camera, N = 2 masks (fast), thresholds set so
/// that blobs and masks exist.
pub fn config(dir: &Path, device: &str, source: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"
device_id = "{device}"
[model]
masks = 2
threads = 1
[[camera]]
name = "belt"
source = {source}
thresholds = {{ image = 1.0, pixel = 2.0 }}
{extra}
"#
    );
    let path = dir.join("daemon.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn mqtt_section(url: &str, spool: &Path, extra: &str) -> String {
    format!(
        "[mqtt]\nurl = \"{url}\"\nspool = {{ dir = \"{}\" }}\nshutdown_grace_s = 15\n{extra}\n",
        spool.display()
    )
}

/// Everything a subscriber received: (topic, payload), in arrival order.
pub type Received = Vec<(String, Vec<u8>)>;

#[derive(Clone, Default)]
pub struct Inbox(pub Arc<Mutex<Received>>);

impl Inbox {
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.0.lock().unwrap().clone()
    }

    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[(String, Vec<u8>)]) -> bool,
    ) {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if done(&self.0.lock().unwrap()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}");
    }

    /// Result payloads (CBOR or JSON) of `topic_suffix` messages, decoded.
    pub fn results(&self) -> Vec<Value> {
        self.messages()
            .iter()
            .filter(|(t, _)| t.ends_with("/result"))
            .map(|(_, p)| decode(p))
            .collect()
    }
}

pub fn decode(payload: &[u8]) -> Value {
    serde_json::from_slice(payload)
        .or_else(|_| ciborium::from_reader::<Value, _>(payload))
        .expect("payload is JSON or CBOR")
}

/// A real MQTT subscriber on `port`, subscribed (SUBACK received) to `filter`.
pub fn subscribe(host: &str, port: u16, filter: &str) -> (Client, Inbox, Arc<AtomicBool>) {
    let id = format!("test-sub-{}", free_port());
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_max_packet_size(4 << 20, 4 << 20);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 64);
    client.subscribe(filter, QoS::AtLeastOnce).unwrap();
    let inbox = Inbox::default();
    let subscribed = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(AtomicBool::new(true));
    {
        let (inbox, subscribed, alive) = (inbox.clone(), subscribed.clone(), alive.clone());
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        subscribed.store(true, Ordering::SeqCst)
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => inbox
                        .0
                        .lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec())),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            alive.store(false, Ordering::SeqCst);
        });
    }
    let until = Instant::now() + Duration::from_secs(10);
    while !subscribed.load(Ordering::SeqCst) {
        assert!(Instant::now() < until, "subscriber got no SUBACK");
        std::thread::sleep(Duration::from_millis(10));
    }
    (client, inbox, alive)
}

pub fn run_daemon(args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("run")
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon")
}

pub fn finish(child: Child, timeout: Duration) -> Output {
    let until = Instant::now() + timeout;
    let mut child = child;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "daemon did not finish in {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The JSON summary `run` prints last.
pub fn summary(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no summary; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap()
}

pub fn seqs(results: &[Value]) -> Vec<u64> {
    results.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// At-least-once, in order: dropping repeats of already-seen frames leaves 1..=n.
pub fn assert_complete_in_order(seen: &[u64], n: u64) {
    let mut firsts = Vec::new();
    for &s in seen {
        if !firsts.contains(&s) {
            firsts.push(s);
        }
    }
    assert_eq!(firsts, (1..=n).collect::<Vec<_>>(), "received {seen:?}");
}

/// `mqtt_section` with its own shutdown grace (seconds): a run against an unreachable
/// broker then ends without waiting 15 s for it.
pub fn mqtt_section_grace(url: &str, spool: &Path, grace_s: f64, extra: &str) -> String {
    format!(
        "[mqtt]\nurl = \"{url}\"\nspool = {{ dir = \"{}\" }}\nshutdown_grace_s = {grace_s:?}\n{extra}\n",
        spool.display()
    )
}
