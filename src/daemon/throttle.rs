//! Rate limits for warnings that repeat on every frame (a full disk, oversized pictures):
//! the first occurrence is logged at once, later ones at most once per interval together
//! with how many were not logged in between, so a broken disk cannot flood the journal
//! (which may sit on the same full disk).

use std::time::{Duration, Instant};

/// How often a repeating warning is logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(LOG_INTERVAL)
    }
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// One more occurrence: `Some(n)` when it should be logged now (`n` occurrences were
    /// not logged since the last time), `None` when it is to be counted only.
    pub fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// `" (N more since the last warning)"`, or nothing.
pub fn more(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more since the last warning)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_per_interval_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.ready(), Some(2));
        assert_eq!(t.ready(), None);
    }
}
