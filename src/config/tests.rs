//! The config's parser and validation, against TOML texts.

use super::*;
use std::time::Duration;

use crate::detect::engine::Backend;

const MINIMAL: &str = r#"
device_id = "line-3"
[[camera]]
name = "top"
source = { kind = "replay", path = "frames" }
"#;

#[test]
fn minimal_config_gets_defaults_and_resolved_paths() {
    let c = Config::parse(MINIMAL, Path::new("/etc/maeday")).unwrap();
    assert_eq!(c.cameras.len(), 1);
    match &c.cameras[0].source {
        SourceConfig::Replay { path, fps, looping } => {
            assert_eq!(path, Path::new("/etc/maeday/frames"));
            assert_eq!(*fps, 0.0);
            assert!(!looping);
        }
        other => panic!("wrong source {other:?}"),
    }
    assert_eq!(c.output.format, PayloadFormat::Json);
    // A line per frame in a terminal, none into the journal unless asked for.
    assert!(c.console_lines(false) && !c.console_lines(true));
}

#[test]
fn errors_name_the_key() {
    let bad = |text: &str| {
        format!(
            "{:#}",
            Config::parse(text, Path::new("/")).expect_err("must fail")
        )
    };
    let e = bad(&MINIMAL.replace("\"frames\"", "\"frames\", fps = -2"));
    assert!(e.contains("camera[0].source.fps"), "{e}");
    let e = bad(&MINIMAL.replace("line-3", "line/3"));
    assert!(e.contains("device_id"), "{e}");
    let e = bad(&format!("{MINIMAL}\n[mqtt]\nmax_packet_bytes = 10\n"));
    assert!(e.contains("mqtt.max_packet_bytes"), "{e}");
    let e = bad(&format!("{MINIMAL}\n[mqtt]\nurl = \"http://x\"\n"));
    assert!(e.contains("mqtt.url"), "{e}");
    let e = bad(&MINIMAL.replace("name = \"top\"", "name = \"top\"\nfsp = 3"));
    assert!(e.contains("fsp"), "{e}");
    let v4l = r#"
device_id = "d"
[[camera]]
name = "c"
source = { kind = "v4l2", format = "H264", width = 640, height = 480 }
"#;
    let e = bad(v4l);
    assert!(e.contains("camera[0].source.format"), "{e}");
}

#[test]
fn values_that_would_panic_at_run_time_are_refused_naming_their_key() {
    let bad = |text: &str| {
        format!(
            "{:#}",
            Config::parse(text, Path::new("/")).expect_err("must fail")
        )
    };
    let with = |section: &str| format!("{MINIMAL}\n{section}\n");
    for (text, key) in [
        (
            MINIMAL.replace("\"frames\"", "\"frames\", fps = 1e-300"),
            "camera[0].source.fps",
        ),
        (
            MINIMAL.replace("\"frames\"", "\"frames\", fps = nan"),
            "camera[0].source.fps",
        ),
        (
            with("[mqtt]\nshutdown_grace_s = 1e30"),
            "mqtt.shutdown_grace_s",
        ),
        (with("[mqtt]\nkeep_alive_s = 70000"), "mqtt.keep_alive_s"),
        (
            with("[mqtt]\nmax_packet_bytes = 300000000"),
            "mqtt.max_packet_bytes",
        ),
        (
            with("[output]\nmask_max_per_sec = 1e-30"),
            "output.mask_max_per_sec",
        ),
        (
            with("[output]\nmetrics_interval_s = 1e30"),
            "output.metrics_interval_s",
        ),
        (
            with("[output]\nmetrics_interval_s = 1e-300"),
            "output.metrics_interval_s",
        ),
        (
            with("[pipeline]\nresult_queue = 9000000000000000000"),
            "pipeline.result_queue",
        ),
        (
            with("[pipeline]\nreconnect_max_s = 1e30"),
            "pipeline.reconnect_max_s",
        ),
        (
            with("[pipeline]\nmax_frame_pixels = 0"),
            "pipeline.max_frame_pixels",
        ),
        (
            with("[pipeline]\nmax_frame_pixels = 1000000000000"),
            "pipeline.max_frame_pixels",
        ),
        (
            MINIMAL.replace("[[camera]]", "[model]\nmasks = 100000\n[[camera]]"),
            "model.masks",
        ),
        (
            MINIMAL.replace("[[camera]]", "[model]\nthreads = 100000\n[[camera]]"),
            "model.threads",
        ),
        (
            with("[enroll]\naugment = [\"hflip\", \"hflip\"]"),
            "enroll.augment: \"hflip\" is listed twice",
        ),
        (
            with("[enroll]\naugment = [\"dihedral\", \"vflip\"]"),
            "\"vflip\" is part of \"dihedral\"",
        ),
        (with("[enroll]\nbank_weight = inf"), "bank_weight"),
    ] {
        let e = bad(&text);
        assert!(e.contains(key), "{key}: {e}");
    }
    let v4l2 = |size: &str, extra: &str| {
        format!(
            "device_id = \"d\"\n[[camera]]\nname = \"c\"\n\
             source = {{ kind = \"v4l2\", {size} }}\n{extra}"
        )
    };
    let e = bad(&v4l2(
        "width = 640, height = 480",
        "roi = [600, 0, 100, 100]",
    ));
    assert!(e.contains("camera[0].roi") && e.contains("640x480"), "{e}");
    let e = bad(&v4l2("width = 100000, height = 100000", ""));
    assert!(e.contains("max_frame_pixels"), "{e}");
    let e = bad(&v4l2("width = 640, height = 480, fps = 100000", ""));
    assert!(e.contains("camera[0].source.fps"), "{e}");
    // The edges of each range are accepted and convert without a panic.
    let edges = format!(
        "{}\n[output]\nmask_max_per_sec = 0.001\nmetrics_interval_s = 86400\n\
         [mqtt]\nshutdown_grace_s = 3600\nkeep_alive_s = 65535\n\
         [pipeline]\nresult_queue = 4096\nreconnect_min_s = 0.01\nreconnect_max_s = 86400\n",
        MINIMAL
            .replace("\"frames\"", "\"frames\", fps = 0.001")
            .replace("[[camera]]", "[model]\nmasks = 256\n[[camera]]")
    );
    let c = Config::parse(&edges, Path::new("/")).unwrap();
    assert_eq!(
        c.cameras[0].source.replay_period(),
        Some(Duration::from_secs(1000))
    );
    assert_eq!(c.output.mask_interval(), Some(Duration::from_secs(1000)));
    assert_eq!(
        c.output.metrics_interval(),
        Some(Duration::from_secs(86400))
    );
    assert_eq!(c.mqtt.unwrap().shutdown_grace(), Duration::from_secs(3600));
    let v = v4l2("width = 640, height = 480", "roi = [540, 380, 100, 100]");
    Config::parse(&v, Path::new("/")).unwrap();
}

/// The deterministic cousin of the `config` fuzz target: every number in the shipped
/// configs replaced, one at a time, by extreme values; what validates must convert
/// into Durations, Instants and channel capacities without a panic.
#[test]
fn extreme_numbers_in_the_shipped_configs_are_refused_or_safe() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config");
    let values = [
        "0",
        "1e-300",
        "1e300",
        "-1",
        "nan",
        "inf",
        "0.001",
        "1000",
        "65536",
        "9000000000000000000",
        "18446744073709551615",
    ];
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b"._-/".contains(&b);
    let (mut tried, mut accepted) = (0, 0);
    for name in ["demo.toml", "conveyor.toml", "fod-cart.toml"] {
        let seed = std::fs::read_to_string(dir.join(name)).unwrap();
        let b = seed.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if !(b[i].is_ascii_digit() && (i == 0 || !is_word(b[i - 1]))) {
                i += 1;
                continue;
            }
            let j = i + b[i..].iter().take_while(|&&c| is_word(c)).count();
            for v in values {
                tried += 1;
                let text = format!("{}{v}{}", &seed[..i], &seed[j..]);
                let Ok(c) = Config::parse(&text, &dir) else {
                    continue;
                };
                accepted += 1;
                let now = std::time::Instant::now();
                let _ = c.cameras[0].source.replay_period().map(|p| now + p);
                let _ = c.output.mask_interval().map(|p| now + p);
                let _ = c.output.metrics_interval().map(|p| now + p);
                let _ = c.mqtt.as_ref().map(|m| now + m.shutdown_grace());
                let _ = std::sync::mpsc::sync_channel::<()>(c.pipeline.result_queue);
                assert!(c.model.masks.unwrap_or(1) <= 256, "{name}: {v}");
            }
            i = j;
        }
    }
    assert!(
        tried > 100 && accepted > 10,
        "{tried} tried, {accepted} accepted"
    );
}

#[test]
fn engine_and_ort_settings() {
    let c = Config::parse(MINIMAL, Path::new("/")).unwrap();
    assert_eq!(c.model.backend(), Backend::Tract);
    let text = MINIMAL.replace(
        "[[camera]]",
        "[model]\nengine = \"ort\"\n[model.ort]\nproviders = [\"tensorrt\", \"cuda\"]\n\
         tensorrt_cache_dir = \"trt\"\n[[camera]]",
    );
    let c = Config::parse(&text, Path::new("/var/lib/maeday")).unwrap();
    let Backend::Ort(o) = c.model.backend() else {
        panic!("not ort")
    };
    use crate::detect::engine::Provider;
    assert_eq!(o.providers, [Provider::TensorRt, Provider::Cuda]);
    assert!(!o.allow_fallback && o.tensorrt_fp16);
    assert_eq!(
        o.tensorrt_cache_dir.as_deref(),
        Some(Path::new("/var/lib/maeday/trt"))
    );
    // engine = "ort" without a [model.ort] table: the CPU provider.
    let text = MINIMAL.replace("[[camera]]", "[model]\nengine = \"ort\"\n[[camera]]");
    let Backend::Ort(o) = Config::parse(&text, Path::new("/"))
        .unwrap()
        .model
        .backend()
    else {
        panic!("not ort")
    };
    assert_eq!(o.providers, [Provider::Cpu]);
    for (bad, key) in [
        ("providers = [\"opencl\"]", "opencl"),
        ("providers = []", "model.ort.providers"),
        ("fp16 = true", "fp16"),
    ] {
        let text = MINIMAL.replace(
            "[[camera]]",
            &format!("[model]\nengine = \"ort\"\n[model.ort]\n{bad}\n[[camera]]"),
        );
        let e = format!("{:#}", Config::parse(&text, Path::new("/")).unwrap_err());
        assert!(e.contains(key), "{bad}: {e}");
    }
}

#[test]
fn enroll_and_scorer_settings() {
    let c = Config::parse(MINIMAL, Path::new("/")).unwrap();
    assert_eq!((c.enroll.frames, c.model.scorer), (4, None));
    let text = format!(
        "{}\n[enroll]\nframes = 8\naugment = [\"hflip\"]\nbank_weight = 2.0\n",
        MINIMAL.replace(
            "[[camera]]",
            "[model]\nscorer = \"bank\"\nextractor = \"ex\"\n[[camera]]"
        )
    );
    let c = Config::parse(&text, Path::new("/opt/m")).unwrap();
    assert_eq!(c.model.scorer, Some(crate::detect::fuse::ScorerKind::Bank));
    assert_eq!(c.model.extractor.as_deref(), Some(Path::new("/opt/m/ex")));
    let s = c.enroll.settings().unwrap();
    assert_eq!(s.augment, [crate::bank::store::Augmentation::Hflip]);
    assert_eq!((s.weights.maeday, s.weights.bank), (1.0, 2.0));
    for (bad, key) in [
        ("frames = 0", "enroll.frames"),
        ("coreset_fraction = 1.5", "enroll.coreset_fraction"),
        ("augment = [\"mirror\"]", "enroll.augment"),
        ("bank_weight = 0.0", "bank_weight"),
    ] {
        let text = format!("{MINIMAL}\n[enroll]\n{bad}\n");
        let e = format!("{:#}", Config::parse(&text, Path::new("/")).unwrap_err());
        assert!(e.contains(key), "{bad}: {e}");
    }
    let text = MINIMAL.replace("[[camera]]", "[model]\nscorer = \"patchcore\"\n[[camera]]");
    assert!(Config::parse(&text, Path::new("/")).is_err());
}

#[test]
fn shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config");
    for name in [
        "demo.toml",
        "conveyor.toml",
        "fod-cart.toml",
        "rtsp-camera.toml",
        "jetson-csi.toml",
        "gige.toml",
    ] {
        Config::load(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
    Config::demo().unwrap();
}

#[test]
fn gstreamer_sources_are_checked_key_by_key() {
    let with = |source: &str| {
        MINIMAL.replace(
            "{ kind = \"replay\", path = \"frames\" }",
            &format!("{{ kind = \"gstreamer\", {source} }}"),
        )
    };
    let ok = Config::parse(
        &with("url = \"clip.mp4\", width = 640, height = 480"),
        Path::new("/etc/m"),
    )
    .unwrap();
    match &ok.cameras[0].source {
        SourceConfig::Gstreamer { url, timeout_s, .. } => {
            assert_eq!(url.as_deref(), Some("/etc/m/clip.mp4"));
            assert_eq!(*timeout_s, 5.0);
        }
        other => panic!("wrong source {other:?}"),
    }
    let rtsp = Config::parse(&with("url = \"rtsp://cam/1\""), Path::new("/etc/m")).unwrap();
    assert!(
        matches!(&rtsp.cameras[0].source, SourceConfig::Gstreamer { url: Some(u), .. } if u == "rtsp://cam/1")
    );
    for (source, key) in [
        (
            "width = 640, height = 480",
            "camera[0].source: set exactly one",
        ),
        (
            "url = \"a\", pipeline = \"b\"",
            "camera[0].source: set exactly one",
        ),
        ("url = \"\"", "camera[0].source.url"),
        ("url = \"a\", width = 640", "both width and height"),
        (
            "url = \"a\", width = 99999, height = 99999",
            "camera[0].source",
        ),
        ("url = \"a\", format = \"NV12\"", "camera[0].source.format"),
        ("url = \"a\", fps = -1", "camera[0].source.fps"),
        (
            "url = \"a\", latency_ms = 100000",
            "camera[0].source.latency_ms",
        ),
        ("url = \"a\", timeout_s = 0", "camera[0].source.timeout_s"),
        (
            "url = \"a\", reconnect_max_s = nan",
            "camera[0].source.reconnect_max_s",
        ),
        ("url = \"a\", bogus = 1", "bogus"),
    ] {
        let e = format!(
            "{:#}",
            Config::parse(&with(source), Path::new("/")).expect_err(source)
        );
        assert!(e.contains(key), "{source}: {e}");
    }
    let roi = format!(
        "{}roi = [600, 0, 100, 100]\n",
        with("url = \"a\", width = 640, height = 480")
    );
    let e = format!("{:#}", Config::parse(&roi, Path::new("/")).unwrap_err());
    assert!(e.contains("camera[0].roi"), "{e}");
}
