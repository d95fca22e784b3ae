//! Untrusted configs: any TOML text through the daemon's own parsing and validation. A
//! config that validates must then survive every conversion the daemon makes from it
//! before and while it runs (Durations, channel capacities, allocation sizes, Instants),
//! the ones that once panicked on values `run --check` accepted (`fps = 1e-300`,
//! `shutdown_grace_s = 1e30`, `result_queue = 9e18`, `masks = 100000`, ...). No model
//! is loaded and no file read: the paths point nowhere.
#![no_main]

use std::path::Path;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use maeday_edge::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Config::parse(text, Path::new("/nonexistent")) else {
        return;
    };
    let now = Instant::now();
    for cam in &c.cameras {
        if let Some(p) = cam.source.replay_period() {
            let _ = now + p; // the replay's next deadline
        }
        let _ = cam.fit();
    }
    if let Some(i) = c.output.mask_interval() {
        let _ = now + i;
    }
    if let Some(i) = c.output.metrics_interval() {
        let _ = now + i;
    }
    if let Some(m) = &c.mqtt {
        let _ = now + m.shutdown_grace();
        let _ = now + Duration::from_secs(m.keep_alive_s);
        let _ = std::sync::mpsc::sync_channel::<()>(m.max_inflight + 64);
    }
    let p = &c.pipeline;
    let _ = std::sync::mpsc::sync_channel::<()>(p.result_queue);
    let _ = now + Duration::from_secs_f64(p.reconnect_min_s);
    let _ = now + Duration::from_secs_f64(p.reconnect_max_s);
    // What a frame and a batch may allocate: both within a few GiB.
    let limits = p.decode_limits();
    assert!(limits.max_alloc() <= 4 << 30);
    if let Some(n) = c.model.masks {
        // N masked copies of a 3x224x224 f32 window (the default model's input).
        assert!(n * 3 * 224 * 224 * 4 <= 1 << 30, "masks = {n}");
    }
    let _ = c.enroll.settings().expect("validated");
    if let Some(h) = &c.http {
        let _ = h.addr().expect("validated");
        // The live page's picture and list stay small whatever the config says.
        assert!(h.frame_max_px <= 4096 && (1..=100).contains(&h.jpeg_quality));
        let _ = maeday_edge::daemon::http::recent::Recent::new(h.events, c.events.is_some());
    }
});
