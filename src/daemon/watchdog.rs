//! systemd integration: `READY=1` once the model is loaded and the cameras are open,
//! `STOPPING=1` on the way out, and a watchdog that pings only while the pipeline makes
//! progress, so a hung inference or sink thread gets the daemon restarted (`WatchdogSec=`
//! in `cross/maeday-edge.service`).
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd) every call here does nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Heartbeats of the threads whose progress the watchdog vouches for.
///
/// The sink thread wakes at least every `sink::HEARTBEAT` (100 ms) whatever happens
/// (broker down or not), so a stale beat means it is stuck. The inference thread may legitimately wait for frames
/// for ever (camera unplugged): only a frame that has been in inference for longer than the
/// watchdog period counts against it.
pub struct Liveness {
    start: Instant,
    /// Milliseconds since `start` of the sink thread's last loop.
    sink_beat_ms: AtomicU64,
    /// Milliseconds since `start` + 1 when the frame now in inference started; 0 when idle.
    busy_since_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            start: Instant::now(),
            sink_beat_ms: AtomicU64::new(0),
            busy_since_ms: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn sink_alive(&self) {
        self.sink_beat_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn inference_started(&self) {
        self.busy_since_ms
            .store(self.now_ms() + 1, Ordering::Relaxed);
    }

    pub fn inference_done(&self) {
        self.busy_since_ms.store(0, Ordering::Relaxed);
    }

    /// `Err` names the stuck thread when a beat is older than `limit`.
    pub fn check(&self, limit: Duration) -> Result<(), String> {
        let now = self.now_ms();
        let limit = limit.as_millis() as u64;
        let sink_age = now.saturating_sub(self.sink_beat_ms.load(Ordering::Relaxed));
        if sink_age > limit {
            return Err(format!("the sink thread has not looped for {sink_age} ms"));
        }
        let busy = self.busy_since_ms.load(Ordering::Relaxed);
        if busy > 0 {
            let age = now.saturating_sub(busy - 1);
            if age > limit {
                return Err(format!("one frame has been in inference for {age} ms"));
            }
        }
        Ok(())
    }
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        log::warn!("systemd notification failed: {e}");
    }
}

pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Starts the watchdog thread when systemd asked for one (`$WATCHDOG_USEC`): it pings at
/// a third of the period while [`Liveness::check`] passes, and stops pinging (so systemd
/// restarts the service) when it does not.
pub fn start(liveness: Arc<Liveness>, stop: Arc<AtomicBool>) -> Option<JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    log::info!("systemd watchdog: {} ms", period.as_millis());
    let tick = (period / 3).max(Duration::from_millis(10));
    let handle = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut healthy = true;
            while !stop.load(Ordering::Relaxed) {
                match liveness.check(period) {
                    Ok(()) => {
                        if !healthy {
                            log::info!("watchdog: the pipeline is making progress again");
                        }
                        healthy = true;
                        notify(&[NotifyState::Watchdog]);
                    }
                    Err(why) => {
                        if healthy {
                            log::error!("watchdog: {why}; no longer pinging systemd");
                        }
                        healthy = false;
                    }
                }
                std::thread::sleep(tick);
            }
        })
        .ok()?;
    Some(handle)
}

/// Whether stderr is the journal: systemd sets `$JOURNAL_STREAM` to `<device>:<inode>` of the
/// stream it connected, and a child that inherited the variable but writes elsewhere (a
/// shell redirect) must not get priority prefixes, so the pair is compared with stderr's.
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    journal_stream_matches(&value)
}

#[cfg(unix)]
fn journal_stream_matches(value: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2")
        .or_else(|_| std::fs::metadata("/dev/stderr"))
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

#[cfg(not(unix))]
fn journal_stream_matches(_value: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_sink_or_long_inference_fails_the_check() {
        let l = Liveness::default();
        l.sink_alive();
        assert!(l.check(Duration::from_millis(200)).is_ok());
        l.inference_started();
        std::thread::sleep(Duration::from_millis(60));
        l.sink_alive();
        assert!(l.check(Duration::from_millis(200)).is_ok());
        let err = l.check(Duration::from_millis(20)).unwrap_err();
        assert!(err.contains("inference"), "{err}");
        l.inference_done();
        l.sink_alive();
        assert!(l.check(Duration::from_millis(20)).is_ok());
        std::thread::sleep(Duration::from_millis(40));
        let err = l.check(Duration::from_millis(20)).unwrap_err();
        assert!(err.contains("sink"), "{err}");
    }

    #[test]
    fn only_a_matching_journal_stream_counts() {
        assert!(!journal_stream_matches("not-a-pair"));
        assert!(!journal_stream_matches("0:0"));
    }
}
