//! "The last events" on the live page: a bounded list, newest first.
//!
//! With `[events]` it lists the anomaly events of `daemon::incidents` ([`Recent::event`]):
//! one line per event, updated in place as its `start`, `update`s and `end` go out (start
//! time, peak score, duration, id, open or ended), so the page shows what MQTT subscribers
//! were told. Without `[events]` there are no events, and each anomalous frame is a line of
//! its own ([`Recent::result`], kind `frame`).

use std::collections::VecDeque;

use serde::Serialize;

use crate::daemon::incidents::EventSummary;
use crate::daemon::payload::ResultPayload;

/// One line of the page's list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecentEvent {
    pub camera: String,
    /// The event's `event_id` (`<camera>-<boot>-<seq of its first frame>`); for a single
    /// frame, `<camera>-<boot>-<seq>`.
    pub id: String,
    /// `open` or `ended` (an anomaly event), `frame` (one anomalous frame, without
    /// `[events]`).
    pub kind: &'static str,
    pub boot: u64,
    /// Capture time of its first anomalous frame (ms since the Unix epoch).
    pub start_unix_ms: u64,
    /// From its first to its last anomalous frame so far (ms).
    pub duration_ms: u64,
    /// Anomalous frames so far.
    pub frames: u64,
    pub peak_score: f32,
    /// The frame where it peaked.
    pub peak_seq: u64,
    pub threshold: Option<f32>,
}

/// The newest `capacity` lines, newest first.
#[derive(Debug)]
pub struct Recent {
    capacity: usize,
    /// Fed by anomaly events (`[events]` is on), not by single frames.
    from_events: bool,
    events: VecDeque<RecentEvent>,
}

impl Recent {
    pub fn new(capacity: usize, from_events: bool) -> Recent {
        Recent {
            capacity: capacity.max(1),
            from_events,
            events: VecDeque::new(),
        }
    }

    /// A new line (or, with the id of a listed one, that line updated in place).
    pub fn push(&mut self, e: RecentEvent) {
        if let Some(old) = self.events.iter_mut().find(|o| o.id == e.id) {
            *old = e;
            return;
        }
        if self.events.len() == self.capacity {
            self.events.pop_back();
        }
        self.events.push_front(e);
    }

    /// A scored frame: listed when it is anomalous and there are no events.
    pub fn result(&mut self, p: &ResultPayload) {
        if self.from_events || p.anomalous != Some(true) {
            return;
        }
        self.push(RecentEvent {
            camera: p.camera.clone(),
            id: format!("{}-{}-{}", p.camera, p.boot, p.seq),
            kind: "frame",
            boot: p.boot,
            start_unix_ms: p.captured_unix_ms,
            duration_ms: 0,
            frames: 1,
            peak_score: p.score,
            peak_seq: p.seq,
            threshold: p.image_threshold,
        });
    }

    /// An anomaly event's message went out (`start`, `update` or `end`).
    pub fn event(&mut self, e: &EventSummary) {
        self.push(RecentEvent {
            camera: e.camera.clone(),
            id: e.event_id.clone(),
            kind: if e.ended { "ended" } else { "open" },
            boot: e.boot,
            start_unix_ms: e.start_unix_ms,
            duration_ms: e.last_unix_ms.saturating_sub(e.start_unix_ms),
            frames: e.frames,
            peak_score: e.peak_score,
            peak_seq: e.peak_seq,
            threshold: e.image_threshold,
        });
    }

    /// Newest first.
    pub fn list(&self) -> Vec<RecentEvent> {
        self.events.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(first: u64, last_ms: u64, ended: bool) -> EventSummary {
        EventSummary {
            event_id: format!("c-1-{first}"),
            camera: "c".into(),
            boot: 1,
            start_unix_ms: 1_000,
            last_unix_ms: last_ms,
            frames: 3,
            peak_score: 2.5,
            peak_seq: first + 1,
            image_threshold: Some(1.0),
            ended,
        }
    }

    #[test]
    fn keeps_the_newest_first_and_no_more_than_its_capacity() {
        let mut r = Recent::new(3, true);
        for s in 1..=5 {
            r.event(&summary(s, 1_000, false));
        }
        let ids: Vec<String> = r.list().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["c-1-5", "c-1-4", "c-1-3"]);
    }

    #[test]
    fn an_event_is_one_line_updated_until_it_ends() {
        let mut r = Recent::new(8, true);
        r.event(&summary(7, 1_000, false));
        r.event(&summary(20, 1_100, false));
        r.event(&summary(7, 1_750, true));
        let list = r.list();
        assert_eq!(list.len(), 2);
        let ended = list.iter().find(|e| e.id == "c-1-7").unwrap();
        assert_eq!((ended.kind, ended.duration_ms), ("ended", 750));
        assert_eq!(list[0].id, "c-1-20", "updating keeps the order");
    }
}
