//! The HTTP server (`[http]`) end to end: the real daemon on the built-in demo config
//! (demo/conveyor.gif, the bundled model and demo bank, the embedded broker) with an
//! `[http]` section. `/metrics` is read by a Prometheus text parser, `/api/status` is
//! compared with the retained MQTT status, and the live page is opened in headless
//! Chromium (Debian's `chromium`): the overlay image loaded and the score is shown.
//! Without chromium the browser test is skipped, unless `MAEDAY_REQUIRE_CHROMIUM=1`
//! (set by `.ci/run`) makes that a failure.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::daemon::{decode, subscribe, BIN};
use common::device::Device;
use common::{free_port, repo};

/// A response: status code, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// One HTTP/1.0 request on loopback, bounded in time.
fn request(port: u16, method: &str, path: &str) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

fn get(port: u16, path: &str) -> Reply {
    request(port, "GET", path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Poll `check` until it returns something, within `timeout`.
fn wait<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + timeout;
    loop {
        if let Some(t) = check() {
            return t;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The built-in demo config (`firmware-config/demo.toml`) with its ports and folders
/// moved into `dir`, N = 8 masks on one thread (fast), and `[http]` on `http_port`.
fn demo_config(dir: &Path, mqtt_port: u16, http_port: u16, extra: &str) -> PathBuf {
    let demo = std::fs::read_to_string(repo().join("firmware-config/demo.toml")).unwrap();
    let text = demo
        .replace("../demo/", &format!("{}/demo/", repo().display()))
        .replace("/tmp/maeday-edge-demo", &dir.display().to_string())
        .replace("18830", &mqtt_port.to_string())
        .replace("fps = 2.0", "fps = 8.0")
        .replace("[model]\n", "[model]\nthreads = 1\n");
    assert!(text.contains("masks = 8") && text.contains(&dir.display().to_string()));
    let text = format!("{text}\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n{extra}\n");
    let path = dir.join("demo-http.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The daemon on `config`, its log in `dir/daemon.log`; waits until HTTP answers.
fn start(config: &Path, dir: &Path, http_port: u16) -> Device {
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    let device = Device::spawn(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log),
    );
    wait("the HTTP server", Duration::from_secs(60), || {
        request(http_port, "GET", "/api/live").ok()
    });
    device
}

/// `/api/live`'s newest seq of camera 0, once there is one.
fn newest_seq(port: u16) -> Option<u64> {
    get(port, "/api/live").json()["cameras"][0]["latest"]["seq"].as_u64()
}

/// `/metrics`, checked for its content type and parsed by a Prometheus text parser.
fn metrics(port: u16) -> (String, prometheus_parse::Scrape) {
    let m = get(port, "/metrics");
    assert_eq!(m.status, 200);
    let kind = m.header("content-type").unwrap();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = String::from_utf8(m.body).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    (text, scrape)
}

/// A counter's value, by one label.
fn counter(s: &prometheus_parse::Scrape, name: &str, (k, v): (&str, &str)) -> Option<f64> {
    let sample = s
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get(k) == Some(v))?;
    // OpenMetrics types the family (`# TYPE x counter`), its sample is `x_total`: the
    // parser (written for the Prometheus format) leaves such samples untyped.
    match sample.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => Some(v),
        ref other => panic!("{name} is not a counter: {other:?}"),
    }
}

#[test]
fn metrics_parse_and_status_matches_the_retained_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, http) = (free_port(), free_port());
    let config = demo_config(dir.path(), mqtt, http, "");
    let device = start(&config, dir.path(), http);
    // Frames are scored while we scrape: wait until three are counted.
    let (text, scrape, scored) = wait("three scored frames", Duration::from_secs(120), || {
        let (text, scrape) = metrics(http);
        let scored = counter(&scrape, "maeday_frames_scored_total", ("camera", "belt"))?;
        (scored >= 3.0).then_some((text, scrape, scored))
    });
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert!(
        text.contains("# TYPE maeday_frames_scored counter\n"),
        "{text}"
    );
    let sample = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    // The inference latency histogram: cumulative buckets, every frame counted in +Inf.
    let inference = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "maeday_frame_latency_seconds" && s.labels.get("stage") == Some("inference")
        })
        .unwrap_or_else(|| panic!("no inference histogram in\n{text}"));
    let prometheus_parse::Value::Histogram(buckets) = &inference.value else {
        panic!("not a histogram: {:?}", inference.value)
    };
    let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
    assert!(
        inf.count >= 3.0 && inf.count <= scored + 2.0,
        "{inf:?} vs {scored}"
    );
    assert!(buckets.iter().any(|b| b.count > 0.0 && b.less_than < 10.0));
    for g in ["maeday_spool_messages", "maeday_mqtt_connected"] {
        sample(g);
    }

    // /api/status is the retained status, field for field; the model info names its graph.
    let (_client, inbox, _) = subscribe("127.0.0.1", mqtt, "maeday/demo/status");
    inbox.wait_for("the retained status", Duration::from_secs(20), |m| {
        !m.is_empty()
    });
    let retained = decode(&inbox.messages()[0].1);
    let status = get(http, "/api/status");
    assert_eq!(status.header("content-type"), Some("application/json"));
    assert_eq!(status.json(), retained);
    let info = sample("maeday_model_info");
    assert_eq!(
        info.labels.get("model_sha256"),
        retained["model_sha256"].as_str()
    );
    assert!(info
        .labels
        .get("scorer")
        .unwrap()
        .starts_with("ensemble (bank"));

    // Nothing changes the device over HTTP; unknown paths and long URLs are refused.
    assert_eq!(request(http, "POST", "/api/status").unwrap().status, 405);
    assert_eq!(get(http, "/nope").status, 404);
    assert_eq!(get(http, "/frame/7.jpg").status, 404);
    assert_eq!(get(http, &format!("/{}", "a".repeat(600))).status, 414);

    // A flood of idle connections holds the workers and the waiting room, nothing more:
    // frames are scored and published all along, and the server answers once it ends.
    let (_c, results, _) = subscribe("127.0.0.1", mqtt, "maeday/demo/belt/result");
    let flood: Vec<TcpStream> = (0..64)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", http)).ok())
        .collect();
    results.wait_for("results during the flood", Duration::from_secs(60), |m| {
        m.len() >= 3
    });
    drop(flood);
    wait(
        "the server after the flood",
        Duration::from_secs(30),
        || {
            request(http, "GET", "/api/live")
                .ok()
                .filter(|r| r.status == 200)
        },
    );
    let out = device.stop();
    assert!(out.status.success());
}

/// Frames are kept only once a client asked: the first request finds none, a later one
/// gets the newest frame's overlay, a JPEG of the frame's size.
#[test]
fn the_overlay_is_rendered_once_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, http) = (free_port(), free_port());
    // Without the heatmap output the daemon keeps no pixels unless the page watches.
    let config = demo_config(dir.path(), mqtt, http, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("heatmap = true", "heatmap = false");
    std::fs::write(&config, text).unwrap();
    let device = start(&config, dir.path(), http);
    let first = wait("a scored frame", Duration::from_secs(120), || {
        newest_seq(http)
    });
    assert_eq!(
        get(http, "/frame/0.jpg").status,
        404,
        "nobody watched: no pixels"
    );
    let jpeg = wait("the overlay", Duration::from_secs(60), || {
        let r = get(http, "/frame/0.jpg");
        (r.status == 200).then_some(r)
    });
    assert_eq!(jpeg.header("content-type"), Some("image/jpeg"));
    let img = image::load_from_memory(&jpeg.body).expect("a JPEG");
    let live = get(http, "/api/live").json();
    let size = &live["cameras"][0]["latest"]["frame_size"];
    assert_eq!(img.width() as u64, size[0].as_u64().unwrap());
    assert!(newest_seq(http).unwrap() > first);
    drop(device);
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Headless Chromium on `url` with `args`, bounded in time; its stdout.
fn browse(chromium: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new("timeout")
        .args(["60", chromium.to_str().unwrap()])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=4000", "--window-size=1100,900"])
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The page's DOM as headless Chromium leaves it, from the first camera `<section>` on.
fn first_camera_section(chromium: &Path, dir: &Path, url: &str) -> String {
    let dom = browse(chromium, &dir.join("profile"), &["--dump-dom"], url);
    dom.split("<section")
        .nth(1)
        .unwrap_or_else(|| panic!("no camera section:\n{dom}"))
        .to_string()
}

#[test]
fn the_live_page_shows_the_overlay_and_the_score_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var("MAEDAY_REQUIRE_CHROMIUM").is_err(),
            "MAEDAY_REQUIRE_CHROMIUM is set but chromium is not installed"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium; CI runs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, http) = (free_port(), free_port());
    let config = demo_config(dir.path(), mqtt, http, "");
    let device = start(&config, dir.path(), http);
    // The page's first frame request starts the watch; a frame is there once a result
    // after it went out (real time, which the browser's virtual time does not wait for).
    wait("the first overlay", Duration::from_secs(120), || {
        (get(http, "/frame/0.jpg").status == 200).then_some(())
    });
    let url = format!("http://127.0.0.1:{http}/");
    let section = first_camera_section(&chromium, dir.path(), &url);
    let section = section.as_str();
    let image = section
        .split("data-image=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("the overlay never loaded:\n{section}"));
    let (w, h) = image.split_once('x').unwrap();
    assert!(
        w.parse::<u32>().unwrap() > 0 && h.parse::<u32>().unwrap() > 0,
        "{image}"
    );
    assert!(section.contains("data-camera=\"belt\""), "{section}");
    assert!(
        section.contains("score ") && section.contains(" / threshold "),
        "{section}"
    );

    let shot = std::env::var_os("MAEDAY_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().to_path_buf())
        .join("http-live.png");
    let arg = format!("--screenshot={}", shot.display());
    browse(&chromium, &dir.path().join("profile2"), &[&arg], &url);
    let png = image::open(&shot).expect("a screenshot").to_rgb8();
    assert_eq!(png.dimensions(), (1100, 900));
    // The overlay is a photo (JPEG) of whichever frame is newest: an empty-belt frame has
    // no bright heatmap colours, so count distinct colours rather than saturated ones. The
    // page without its image (dark background, text) has a few hundred at most.
    let distinct: std::collections::HashSet<[u8; 3]> = png.pixels().map(|p| p.0).collect();
    assert!(
        distinct.len() > 2000,
        "{} distinct colours in {}",
        distinct.len(),
        shot.display()
    );
    drop(device);
}

/// With `[events]` the page's "Last events" are the anomaly events MQTT subscribers get:
/// the bolt riding through the demo clip is one event, listed with its id, start, peak
/// and duration as its `end` message says, in the camera's section of the page.
#[test]
fn the_live_page_lists_the_bolts_anomaly_event() {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, http) = (free_port(), free_port());
    let events = "events = 8\n[events]\nstart_frames = 1\nend_frames = 3\nevidence = false\n";
    let config = demo_config(dir.path(), mqtt, http, events);
    let device = start(&config, dir.path(), http);
    let (_c, inbox, _) = subscribe("127.0.0.1", mqtt, "maeday/demo/belt/event");
    let ended = wait(
        "an ended event on the page",
        Duration::from_secs(300),
        || {
            let live = get(http, "/api/live").json();
            let list = live["events"].as_array().unwrap().clone();
            list.into_iter().find(|e| e["kind"] == "ended")
        },
    );
    let id = ended["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("belt-"), "{ended}");
    assert_eq!(ended["camera"], "belt");
    assert!(
        ended["peak_score"].as_f64() > ended["threshold"].as_f64(),
        "{ended}"
    );
    // The page says what the `end` message said.
    inbox.wait_for("its end message", Duration::from_secs(20), |m| {
        m.iter()
            .any(|(_, p)| decode(p)["event_id"] == id.as_str() && decode(p)["type"] == "end")
    });
    let end = inbox
        .messages()
        .iter()
        .map(|(_, p)| decode(p))
        .find(|e| e["event_id"] == id.as_str() && e["type"] == "end")
        .unwrap();
    assert_eq!(ended["start_unix_ms"], end["start_unix_ms"]);
    assert_eq!(ended["peak_score"], end["peak"]["score"]);
    assert_eq!(ended["peak_seq"], end["peak"]["seq"]);
    assert_eq!(ended["frames"], end["frames"]);
    assert_eq!(
        ended["duration_ms"].as_u64().unwrap(),
        end["end_unix_ms"].as_u64().unwrap() - end["start_unix_ms"].as_u64().unwrap()
    );
    // One line per event, not one per frame.
    let live = get(http, "/api/live").json();
    let ids: Vec<&str> = live["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.iter().filter(|i| **i == id).count(), 1, "{ids:?}");

    let Some(chromium) = chromium() else {
        assert!(
            std::env::var("MAEDAY_REQUIRE_CHROMIUM").is_err(),
            "MAEDAY_REQUIRE_CHROMIUM is set but chromium is not installed"
        );
        eprintln!("SKIPPED (the browser half): chromium is not installed");
        return;
    };
    let url = format!("http://127.0.0.1:{http}/");
    let section = first_camera_section(&chromium, dir.path(), &url);
    let section = section.as_str();
    let row = section
        .split("<tr")
        .find(|r| r.contains(&format!("data-id=\"{id}\"")))
        .unwrap_or_else(|| panic!("event {id} not on the page:\n{section}"));
    assert!(row.contains("event ended") && row.contains(&id), "{row}");
    drop(device);
}

#[test]
fn check_names_the_http_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path(), free_port(), free_port(), "jpeg_quality = 0");
    let out = Command::new(BIN)
        .args(["run", "--check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("http.jpeg_quality: must be 1 to 100 (got 0)"),
        "{stderr}"
    );
}
