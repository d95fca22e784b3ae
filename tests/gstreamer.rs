//! GStreamer sources end to end (feature `gstreamer`; `.ci/run` installs Debian's
//! GStreamer and runs `cargo test --features gstreamer --test gstreamer`): a real RTSP
//! server on loopback (`maeday-rtsp-test-server`, gst-rtsp-server) read by the real daemon
//! binary to the embedded broker, killed and restarted mid-run; the conveyor clip encoded
//! to H.264/MP4 and replayed frame by frame; corrupt and oversized streams counted.
#![cfg(feature = "gstreamer")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::daemon::*;
use common::free_port;

const SERVER: &str = env!("CARGO_BIN_EXE_maeday-rtsp-test-server");

/// The RTSP server process; killed when dropped.
struct RtspServer(Child);

impl RtspServer {
    fn start(port: u16) -> RtspServer {
        let mut child = Command::new(SERVER)
            .args(["serve", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the RTSP server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the RTSP server did not start");
        RtspServer(child)
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The daemon with its stderr read as it comes (so a test can wait for a log line).
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(args: &[&str]) -> Daemon {
        let mut child = Command::new(BIN)
            .arg("run")
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the daemon");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Daemon { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_log(&self, what: &str, timeout: Duration) {
        let until = Instant::now() + timeout;
        while !self.log().contains(what) {
            assert!(
                Instant::now() < until,
                "no {what:?} in the daemon's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (unless it already exited) and its output (stdout), within `timeout`.
    fn finish(mut self, term: bool, timeout: Duration) -> Output {
        if term {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
        let until = Instant::now() + timeout;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > until {
                let _ = self.child.kill();
                panic!("the daemon did not finish; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.wait_with_output().unwrap()
    }
}

fn result_count(inbox: &Inbox) -> usize {
    inbox
        .messages()
        .iter()
        .filter(|(t, _)| t.ends_with("/result"))
        .count()
}

/// The conveyor clip encoded to H.264 in an MP4 (37 frames, 480x270) by the helper.
fn conveyor_mp4(dir: &Path) -> PathBuf {
    let out = dir.join("conveyor.mp4");
    let status = Command::new(SERVER)
        .args([
            "encode",
            conveyor_gif().to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "encoding the conveyor clip failed");
    out
}

#[test]
fn rtsp_camera_reaches_mqtt_and_reconnects_when_the_server_restarts() {
    let mqtt = common::broker(4 << 20);
    let rtsp_port = free_port();
    let server = RtspServer::start(rtsp_port);
    let tmp = tempfile::tempdir().unwrap();
    let (_client, inbox, _) = subscribe("127.0.0.1", mqtt, "maeday/rtsp-cam/#");
    let source = format!(
        "{{ kind = \"gstreamer\", url = \"rtsp://127.0.0.1:{rtsp_port}/belt\", width = 320, \
         height = 240, latency_ms = 0, timeout_s = 3, reconnect_max_s = 0.5 }}"
    );
    let extra = mqtt_section(
        &format!("mqtt://127.0.0.1:{mqtt}"),
        &tmp.path().join("spool"),
        "",
    );
    let cfg = config(tmp.path(), "rtsp-cam", &source, &extra);
    let daemon = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    inbox.wait_for(
        "5 results from the RTSP camera",
        Duration::from_secs(120),
        |m| m.iter().filter(|(t, _)| t.ends_with("/result")).count() >= 5,
    );

    // The server goes away mid-stream: the source notices and retries with backoff.
    drop(server);
    daemon.wait_log("reconnecting", Duration::from_secs(30));
    let before = result_count(&inbox);
    // A retry against the dead port fails and backs off again (the daemon stays up).
    let tries = |log: &str| log.matches("reconnecting in").count();
    let first = tries(&daemon.log());
    let until = Instant::now() + Duration::from_secs(30);
    while tries(&daemon.log()) < first + 2 {
        assert!(Instant::now() < until, "no retry:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let _server = RtspServer::start(rtsp_port);
    inbox.wait_for(
        "5 results after the server restarted",
        Duration::from_secs(120),
        |m| m.iter().filter(|(t, _)| t.ends_with("/result")).count() >= before + 5,
    );
    let out = daemon.finish(true, Duration::from_secs(60));
    assert!(out.status.success());
    let s = summary(&out);
    let results = inbox.results();
    let seen = seqs(&results);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seen:?}"
    );
    for r in &results {
        assert_eq!(r["frame_size"], serde_json::json!([320, 240]));
        assert!(r["score"].as_f64().unwrap() > 0.0);
    }
    let cam = &s["cameras"][0];
    assert!(
        cam["scored"].as_u64().unwrap() >= (before + 5) as u64,
        "{s}"
    );
    assert!(cam["captured"].as_u64().unwrap() >= cam["scored"].as_u64().unwrap());
    eprintln!(
        "rtsp: {before} results before the restart, {} after; summary {cam}",
        results.len() - before
    );
}

#[test]
fn an_mp4_replay_scores_every_frame_in_order() {
    let mqtt = common::broker(4 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let mp4 = conveyor_mp4(tmp.path());
    let (_client, inbox, _) = subscribe("127.0.0.1", mqtt, "maeday/mp4-run/#");
    let extra = mqtt_section(
        &format!("mqtt://127.0.0.1:{mqtt}"),
        &tmp.path().join("spool"),
        "",
    );
    let cfg = config(tmp.path(), "mp4-run", &replay_source(&mp4, ""), &extra);
    let out = finish(
        run_daemon(&["--config", cfg.to_str().unwrap()]),
        Duration::from_secs(300),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("replay video"), "{stderr}");
    let s = summary(&out);
    assert_eq!(s["cameras"][0]["scored"], 37, "{s}");
    assert_eq!(s["cameras"][0]["dropped"], 0, "{s}");
    assert_eq!(s["cameras"][0]["corrupt"], 0, "{s}");
    inbox.wait_for("37 results", Duration::from_secs(30), |m| {
        m.iter().filter(|(t, _)| t.ends_with("/result")).count() >= 37
    });
    let results = inbox.results();
    assert_complete_in_order(&seqs(&results), 37);
    for r in &results {
        assert_eq!(r["frame_size"], serde_json::json!([480, 270]));
    }
}

#[test]
fn a_corrupt_video_is_counted_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let mp4 = conveyor_mp4(tmp.path());
    // Garbage over the middle of the media data: the frames there cannot be decoded.
    let mut bytes = std::fs::read(&mp4).unwrap();
    let n = bytes.len();
    for (i, b) in bytes[n / 3..n / 2].iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    let damaged = tmp.path().join("damaged.mp4");
    std::fs::write(&damaged, &bytes).unwrap();
    // Not a video at all.
    let junk = tmp.path().join("junk.mkv");
    std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
    for (path, min_scored) in [(&damaged, 1), (&junk, 0)] {
        let out_dir = tmp.path().join(format!("out-{min_scored}"));
        let extra = format!("[files]\ndir = \"{}\"\n", out_dir.display());
        let cfg = config(tmp.path(), "corrupt", &replay_source(path, ""), &extra);
        let out = finish(
            run_daemon(&["--config", cfg.to_str().unwrap()]),
            Duration::from_secs(300),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let s = summary(&out);
        let cam = &s["cameras"][0];
        assert!(cam["corrupt"].as_u64().unwrap() >= 1, "{s}\n{stderr}");
        assert!(
            cam["scored"].as_u64().unwrap() >= min_scored,
            "{s}\n{stderr}"
        );
        eprintln!("{}: {cam}", path.display());
    }
}

#[test]
fn a_stream_over_max_frame_pixels_is_refused_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    // A 1000x1000 stream with a 640x480 limit: refused from its caps, before a frame of
    // it is converted; the source retries with backoff until SIGTERM.
    let source = "{ kind = \"gstreamer\", pipeline = \"videotestsrc is-live=true ! \
                  video/x-raw,width=1000,height=1000,framerate=10/1\", reconnect_max_s = 0.2 }";
    let extra = format!(
        "[pipeline]\nmax_frame_pixels = 307200\n[files]\ndir = \"{}\"\n",
        tmp.path().join("out").display()
    );
    let cfg = config(tmp.path(), "big", source, &extra);
    let daemon = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    let until = Instant::now() + Duration::from_secs(60);
    while daemon
        .log()
        .matches("over pipeline.max_frame_pixels")
        .count()
        < 2
    {
        assert!(Instant::now() < until, "not refused:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = daemon.finish(true, Duration::from_secs(60));
    assert!(out.status.success());
    let s = summary(&out);
    // Refused while running: counted; refused again at a restart: logged and retried.
    assert!(s["cameras"][0]["corrupt"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["cameras"][0]["scored"], 0, "{s}");
}

#[test]
fn check_accepts_a_buildable_pipeline_and_refuses_a_missing_element() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |source: &str| {
        let cfg = config(tmp.path(), "chk", source, "");
        Command::new(BIN)
            .args(["run", "--check", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let ok = check(
        "{ kind = \"gstreamer\", url = \"rtsp://10.0.0.9/stream\", width = 640, height = 480 }",
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = check("{ kind = \"gstreamer\", pipeline = \"nvarguscamerasrc-not-here ! appsink\" }");
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && e.contains("camera[0].source"),
        "{e}"
    );
    let big =
        check("{ kind = \"gstreamer\", url = \"rtsp://x/y\", width = 30000, height = 30000 }");
    let e = String::from_utf8_lossy(&big.stderr);
    assert!(
        !big.status.success() && e.contains("max_frame_pixels"),
        "{e}"
    );
}
