//! The sink thread's one input: a channel of [`SinkEvent`]s.
//!
//! Everything the sink thread reacts to arrives here, in the order it happened: scored
//! frames and serving-model changes from the inference thread, the installer's status
//! messages, the MQTT connection's events (acknowledgements, received commands, a lost
//! connection) and the final stop. The thread blocks on this channel alone.
//!
//! Results are never dropped, and inference must not run ahead of the sinks without bound:
//! [`Events::send_result`] waits while `pipeline.result_queue` results wait behind the one
//! the sinks are handling (what a bounded channel did before other events shared it).

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;

use crate::daemon::mqtt::connection::LinkEvent;
use crate::daemon::mqtt::spool::Message;
use crate::daemon::operator::state::FrameAsk;
use crate::daemon::payload::{FrameResult, ServingModel};

/// A scored frame on its way to the outputs, with its timings.
pub struct Scored {
    pub result: FrameResult,
    /// When the result was ready (the start of the publish stage).
    pub ready: Instant,
    pub captured_at: Instant,
    /// Operator requests (`trigger`, `snapshot`) this frame answers.
    pub asks: Vec<FrameAsk>,
    /// With a `snapshot` among them: the whole frame.
    pub snapshot: Option<RgbImage>,
    /// Its camera is paused: only the requests see this result, no output does.
    pub paused: bool,
}

/// What the sink thread reacts to.
pub enum SinkEvent {
    /// A scored frame (from the inference thread).
    Result(Box<Scored>),
    /// A bundle swap, rollback or enrollment switched the serving model: the results
    /// that follow come from it (from the inference thread).
    Serving(ServingModel),
    /// A status message of the installer to publish.
    Outbox(Message),
    /// An event of the MQTT connection.
    Mqtt(LinkEvent),
    /// No more results will come: flush and close.
    Stop,
}

/// How many results may wait for the sinks.
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct GateState {
    waiting: usize,
    /// The sink thread is gone: nobody will take results.
    closed: bool,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side (cheap to clone, one per producer).
#[derive(Clone)]
pub struct Events {
    tx: Sender<SinkEvent>,
    gate: Arc<Gate>,
}

impl Events {
    /// Send an event; false when the sink thread is gone.
    pub fn send(&self, event: SinkEvent) -> bool {
        self.tx.send(event).is_ok()
    }

    /// Send a result, first waiting while the queue of results is full; false when the
    /// sink thread is gone.
    pub fn send_result(&self, scored: Scored) -> bool {
        let mut s = self.gate.lock();
        while s.waiting >= self.gate.capacity && !s.closed {
            s = self
                .gate
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if s.closed {
            return false;
        }
        s.waiting += 1;
        drop(s);
        self.send(SinkEvent::Result(Box::new(scored)))
    }

    /// A function that sends into this channel, for a producer that must not know the
    /// event type (the MQTT connection thread).
    pub fn route<T>(&self, wrap: fn(T) -> SinkEvent) -> impl Fn(T) -> bool + Send + Sync {
        let tx = Mutex::new(self.tx.clone());
        move |t| {
            tx.lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(wrap(t))
                .is_ok()
        }
    }
}

/// The receiving side, owned by the sink thread.
pub struct EventQueue {
    rx: Receiver<SinkEvent>,
    gate: Arc<Gate>,
}

impl EventQueue {
    /// The next event, waiting up to `wait`.
    pub fn next(&self, wait: Duration) -> Result<SinkEvent, RecvTimeoutError> {
        self.rx.recv_timeout(wait)
    }

    /// A result taken by [`EventQueue::next`] has been handed to every output.
    pub fn result_done(&self) {
        let mut s = self.gate.lock();
        s.waiting = s.waiting.saturating_sub(1);
        self.gate.changed.notify_all();
    }
}

impl Drop for EventQueue {
    fn drop(&mut self) {
        self.gate.lock().closed = true;
        self.gate.changed.notify_all();
    }
}

/// A channel where up to `result_queue` results wait behind the one being handled.
pub fn channel(result_queue: usize) -> (Events, EventQueue) {
    let (tx, rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        state: Mutex::default(),
        changed: Condvar::new(),
        capacity: result_queue + 1,
    });
    (
        Events {
            tx,
            gate: gate.clone(),
        },
        EventQueue { rx, gate },
    )
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::daemon::payload::{FrameFacts, LatencyMs, ResultPayload};
    use crate::detect::eq1::AnomalyMap;

    fn scored() -> Scored {
        let map = AnomalyMap::zeros(2, 2);
        let payload = ResultPayload::new(FrameFacts {
            device_id: "d",
            camera: "c",
            boot: 1,
            seq: 1,
            captured: SystemTime::now(),
            frame_size: [2, 2],
            roi: [0, 0, 2, 2],
            score: 0.0,
            map: &map,
            windows: 1,
            thresholds: None,
            latency: LatencyMs::default(),
            model_sha256: "ab",
            schedule: "s",
            scorer: "maeday".into(),
        });
        Scored {
            result: FrameResult {
                payload,
                map,
                roi_image: None,
                full_frame: None,
            },
            ready: Instant::now(),
            captured_at: Instant::now(),
            asks: Vec::new(),
            snapshot: None,
            paused: false,
        }
    }

    #[test]
    fn results_wait_for_room_and_fail_once_the_sink_is_gone() {
        // `result_queue = 1`: one result in the sinks' hands, one waiting, the third waits.
        let (events, queue) = channel(1);
        assert!(events.send_result(scored()));
        assert!(events.send_result(scored()));
        let third = {
            let events = events.clone();
            std::thread::spawn(move || events.send_result(scored()))
        };
        std::thread::sleep(Duration::from_millis(150));
        assert!(!third.is_finished(), "the queue is full: the sender waits");
        assert!(matches!(
            queue.next(Duration::ZERO),
            Ok(SinkEvent::Result(_))
        ));
        queue.result_done();
        assert!(third.join().unwrap());
        drop(queue);
        assert!(
            !events.send_result(scored()),
            "nobody takes results any more"
        );
    }
}
