//! "The last events" on the live page: a bounded list of the newest anomalous frames.
//!
//! Fed from results today ([`Recent::result`]: every frame over its image threshold); the
//! anomaly events (start/update/end) can feed the same list through [`Recent::push`]
//! without the page changing.

use std::collections::VecDeque;

use serde::Serialize;

use crate::daemon::payload::ResultPayload;

/// One line of the page's list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecentEvent {
    pub camera: String,
    pub boot: u64,
    pub seq: u64,
    pub score: f32,
    pub threshold: Option<f32>,
    pub captured_unix_ms: u64,
    /// What happened: `anomalous` for a frame over its threshold.
    pub kind: &'static str,
}

/// The newest `capacity` events, newest first.
#[derive(Debug)]
pub struct Recent {
    capacity: usize,
    events: VecDeque<RecentEvent>,
}

impl Recent {
    pub fn new(capacity: usize) -> Recent {
        Recent {
            capacity: capacity.max(1),
            events: VecDeque::new(),
        }
    }

    pub fn push(&mut self, e: RecentEvent) {
        if self.events.len() == self.capacity {
            self.events.pop_back();
        }
        self.events.push_front(e);
    }

    /// A scored frame: listed when it is anomalous.
    pub fn result(&mut self, p: &ResultPayload) {
        if p.anomalous == Some(true) {
            self.push(RecentEvent {
                camera: p.camera.clone(),
                boot: p.boot,
                seq: p.seq,
                score: p.score,
                threshold: p.image_threshold,
                captured_unix_ms: p.captured_unix_ms,
                kind: "anomalous",
            });
        }
    }

    /// Newest first.
    pub fn list(&self) -> Vec<RecentEvent> {
        self.events.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> RecentEvent {
        RecentEvent {
            camera: "c".into(),
            boot: 1,
            seq,
            score: 2.0,
            threshold: Some(1.0),
            captured_unix_ms: 0,
            kind: "anomalous",
        }
    }

    #[test]
    fn keeps_the_newest_first_and_no_more_than_its_capacity() {
        let mut r = Recent::new(3);
        for s in 1..=5 {
            r.push(event(s));
        }
        let seqs: Vec<u64> = r.list().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [5, 4, 3]);
    }
}
