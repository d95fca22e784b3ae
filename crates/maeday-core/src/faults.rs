//! Fault injection for the test suite: crash at a named install step, stall one frame's
//! inference. Compiled in only with the `test-hooks` feature, which maeday-edge's `cargo test`
//! enables (its Cargo.toml's dev-dependency on itself) and no shipped build has: without it every
//! hook is an empty function and no environment variable is read.

#[cfg(feature = "test-hooks")]
mod hooks {
    use std::time::Duration;

    /// `MAEDAY_CRASH_AT=<step>`: abort the process at that install step, to check that a
    /// `kill -9` there leaves a device that restarts on a valid model.
    pub fn crash_point(step: &str) {
        if std::env::var("MAEDAY_CRASH_AT").is_ok_and(|s| s == step) {
            log::error!("MAEDAY_CRASH_AT={step}: aborting (test hook)");
            std::process::abort();
        }
    }

    /// `MAEDAY_STALL_AT=<seq>,<ms>`: frame `seq`'s inference stalls for `ms`, to check that
    /// the systemd watchdog stops pinging while the pipeline is stuck.
    pub fn inference_stall(seq: u64) {
        static AT: std::sync::OnceLock<Option<(u64, Duration)>> = std::sync::OnceLock::new();
        let at = AT.get_or_init(|| {
            let v = std::env::var("MAEDAY_STALL_AT").ok()?;
            let (seq, ms) = v.split_once(',')?;
            Some((seq.parse().ok()?, Duration::from_millis(ms.parse().ok()?)))
        });
        if let Some((at, pause)) = at.filter(|(at, _)| *at == seq) {
            log::warn!("MAEDAY_STALL_AT: frame {at} stalls for {pause:?} (test hook)");
            std::thread::sleep(pause);
        }
    }
}

#[cfg(not(feature = "test-hooks"))]
mod hooks {
    #[inline(always)]
    pub fn crash_point(_step: &str) {}

    #[inline(always)]
    pub fn inference_stall(_seq: u64) {}
}

pub use hooks::{crash_point, inference_stall};
