//! Bounds shared by the sections' checks. Upper bounds of numeric keys: each keeps a
//! Duration, a capacity or an allocation the value drives sane (an unbounded
//! `fps = 1e-300` or `result_queue = 9e18` panics at run time).

use anyhow::{ensure, Result};

/// Frames per second (replays, V4L2) and masks per second.
pub(super) const MAX_FPS: f64 = 1000.0;

/// The slowest rate (one per 1000 s): a smaller one overflows `Duration` as a period.
pub(super) const MIN_RATE: f64 = 0.001;

/// Metrics interval and reconnect backoff: a day.
pub(super) const MAX_INTERVAL_S: f64 = 86_400.0;

pub(super) const MAX_GRACE_S: f64 = 3600.0;

pub(super) const MAX_RESULT_QUEUE: usize = 4096;

pub(super) const MAX_MASKS: usize = 256;

pub(super) const MAX_THREADS: usize = 256;

/// MQTT's largest packet (remaining length 268,435,455).
pub(super) const MAX_PACKET_BYTES: usize = 268_435_455;

pub(super) const MAX_BUNDLE_BYTES: u64 = 4 << 30;

/// `value` is 0 (meaning `zero_means`) or finite and in `range`; the error names `key`.
pub(super) fn zero_or_range(
    key: &str,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
    zero_means: &str,
) -> Result<()> {
    ensure!(
        value == 0.0 || (value.is_finite() && range.contains(&value)),
        "{key}: must be 0 ({zero_means}) or {} to {} (got {value})",
        range.start(),
        range.end()
    );
    Ok(())
}

/// A name used as one MQTT topic level: no wildcards, no separators, not empty.
pub(super) fn topic_level(key: &str, value: &str) -> Result<()> {
    ensure!(
        !value.is_empty()
            && value.len() <= 64
            && !value.contains(['/', '+', '#', '\0'])
            && !value.chars().any(char::is_whitespace),
        "{key}: {value:?} must be 1-64 characters without '/', '+', '#' or spaces (it is an MQTT topic level)"
    );
    Ok(())
}
