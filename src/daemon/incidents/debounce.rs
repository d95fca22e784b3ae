//! The debouncer: one camera's verdicts, frame by frame, in order -> the lifecycle of its
//! anomaly events (`start`, `update`, `end`). A pure state machine (no clock, no I/O: time
//! is the frames' capture time), so every transition is unit-tested.
//!
//! - **start**: `start_frames` anomalous frames in a row (the debounce); the event starts
//!   at the first of them, and its peak is the highest score among them;
//! - **update**: the peak rose, at most once per `update_interval` of frame time;
//! - **end**: `end_frames` normal frames in a row (the hysteresis: a gap of fewer normal
//!   frames keeps the event open). A frame without a verdict (no thresholds) is normal.

use std::time::Duration;

use crate::daemon::payload::Blob;

/// What the debouncer reads of a scored frame.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub anomalous: bool,
    pub score: f32,
    pub seq: u64,
    /// Capture time, ms since the Unix epoch.
    pub at_ms: u64,
    /// The frame's blobs, strongest first.
    pub blobs: &'a [Blob],
}

/// The frame where an event scored highest.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    pub score: f32,
    pub seq: u64,
    pub at_ms: u64,
    pub blobs: Vec<Blob>,
}

/// One anomaly event (open or just ended).
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// The seq of its first anomalous frame: with the camera and the boot, its id.
    pub first_seq: u64,
    pub start_ms: u64,
    /// The last anomalous frame's capture time.
    pub last_ms: u64,
    /// Anomalous frames so far.
    pub frames: u64,
    pub peak: Peak,
}

/// A message to publish for this frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Start,
    Update,
    End,
}

/// What one frame did.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// A lifecycle message is due (the incident is [`Debouncer::incident`], or for `End`
    /// the one returned here).
    pub step: Option<Step>,
    /// This frame is now the (candidate) event's peak: keep its picture for the evidence.
    pub new_peak: bool,
    /// The event that just ended.
    pub ended: Option<Incident>,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub start_frames: u32,
    pub end_frames: u32,
    pub update_interval: Duration,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    /// Anomalous frames in a row, fewer than `start_frames` so far.
    Pending(Incident),
    Active {
        incident: Incident,
        normal_streak: u32,
        /// Frame time of the last start/update message.
        reported_ms: u64,
        /// The peak rose since then.
        peak_unreported: bool,
    },
}

/// One camera's debouncer.
#[derive(Debug)]
pub struct Debouncer {
    settings: Settings,
    state: State,
}

impl Debouncer {
    pub fn new(settings: Settings) -> Debouncer {
        Debouncer {
            settings,
            state: State::Idle,
        }
    }

    /// The open event (after `start`), if any.
    pub fn incident(&self) -> Option<&Incident> {
        match &self.state {
            State::Active { incident, .. } => Some(incident),
            _ => None,
        }
    }

    /// Feed the next frame of this camera.
    pub fn observe(&mut self, f: Seen<'_>) -> Observed {
        let mut out = Observed {
            step: None,
            new_peak: false,
            ended: None,
        };
        self.state = match std::mem::take(&mut self.state) {
            State::Idle if f.anomalous => {
                out.new_peak = true;
                self.pending_or_start(begin(&f), &mut out)
            }
            State::Idle => State::Idle,
            State::Pending(mut inc) if f.anomalous => {
                out.new_peak = extend(&mut inc, &f);
                self.pending_or_start(inc, &mut out)
            }
            State::Pending(_) => State::Idle,
            State::Active {
                mut incident,
                normal_streak,
                reported_ms,
                peak_unreported,
            } => {
                if f.anomalous {
                    out.new_peak = extend(&mut incident, &f);
                    let unreported = peak_unreported || out.new_peak;
                    let due = f.at_ms.saturating_sub(reported_ms)
                        >= self.settings.update_interval.as_millis() as u64;
                    let update = unreported && due;
                    if update {
                        out.step = Some(Step::Update);
                    }
                    State::Active {
                        incident,
                        normal_streak: 0,
                        reported_ms: if update { f.at_ms } else { reported_ms },
                        peak_unreported: unreported && !update,
                    }
                } else if normal_streak + 1 >= self.settings.end_frames {
                    out.step = Some(Step::End);
                    out.ended = Some(incident);
                    State::Idle
                } else {
                    State::Active {
                        incident,
                        normal_streak: normal_streak + 1,
                        reported_ms,
                        peak_unreported,
                    }
                }
            }
        };
        out
    }

    fn pending_or_start(&self, inc: Incident, out: &mut Observed) -> State {
        if inc.frames >= self.settings.start_frames as u64 {
            out.step = Some(Step::Start);
            State::Active {
                reported_ms: inc.last_ms,
                incident: inc,
                normal_streak: 0,
                peak_unreported: false,
            }
        } else {
            State::Pending(inc)
        }
    }
}

fn peak_of(f: &Seen<'_>) -> Peak {
    Peak {
        score: f.score,
        seq: f.seq,
        at_ms: f.at_ms,
        blobs: f.blobs.to_vec(),
    }
}

fn begin(f: &Seen<'_>) -> Incident {
    Incident {
        first_seq: f.seq,
        start_ms: f.at_ms,
        last_ms: f.at_ms,
        frames: 1,
        peak: peak_of(f),
    }
}

/// Another anomalous frame; true when it is the new peak.
fn extend(inc: &mut Incident, f: &Seen<'_>) -> bool {
    inc.frames += 1;
    inc.last_ms = f.at_ms;
    let higher = f.score > inc.peak.score;
    if higher {
        inc.peak = peak_of(f);
    }
    higher
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(start: u32, end: u32, update_ms: u64) -> Settings {
        Settings {
            start_frames: start,
            end_frames: end,
            update_interval: Duration::from_millis(update_ms),
        }
    }

    /// Feed (anomalous, score) frames 100 ms apart (seq 1, 2, ...); the steps taken.
    fn run(d: &mut Debouncer, frames: &[(bool, f32)]) -> Vec<(u64, Step)> {
        let mut steps = Vec::new();
        for (i, &(anomalous, score)) in frames.iter().enumerate() {
            let seq = i as u64 + 1;
            let o = d.observe(Seen {
                anomalous,
                score,
                seq,
                at_ms: seq * 100,
                blobs: &[],
            });
            steps.extend(o.step.map(|s| (seq, s)));
        }
        steps
    }

    const A: (bool, f32) = (true, 5.0);
    const N: (bool, f32) = (false, 0.5);

    #[test]
    fn starts_after_n_anomalous_frames_and_ends_after_m_normal_ones() {
        let mut d = Debouncer::new(settings(2, 3, 1000));
        let steps = run(&mut d, &[N, A, A, A, N, N, N, N]);
        assert_eq!(steps, [(3, Step::Start), (7, Step::End)]);
        assert!(d.incident().is_none());
    }

    #[test]
    fn a_single_anomalous_frame_is_debounced() {
        let mut d = Debouncer::new(settings(2, 1, 0));
        assert_eq!(run(&mut d, &[A, N, A, N, N, A, N]), []);
    }

    #[test]
    fn a_short_normal_gap_keeps_the_event_open() {
        // Hysteresis: 2 normal frames < end_frames = 3 do not end it.
        let mut d = Debouncer::new(settings(1, 3, 1000));
        let steps = run(&mut d, &[A, N, N, A, N, N, N]);
        assert_eq!(steps, [(1, Step::Start), (7, Step::End)]);
    }

    #[test]
    fn updates_follow_a_rising_peak_at_most_once_per_interval() {
        let mut d = Debouncer::new(settings(1, 1, 250));
        let rising = [
            (true, 1.0),
            (true, 2.0), // 100 ms after the start: too soon
            (true, 3.0), // 200 ms: too soon
            (true, 2.5), // 300 ms: the unreported rise goes out now
            (true, 2.0), // nothing new
            (true, 9.0), // 500 ms, only 200 after the last: waits
            (true, 1.0), // 700 ms: reported
            (false, 0.0),
        ];
        let steps = run(&mut d, &rising);
        assert_eq!(
            steps,
            [
                (1, Step::Start),
                (4, Step::Update),
                (7, Step::Update),
                (8, Step::End)
            ]
        );
    }

    #[test]
    fn the_ended_event_carries_its_times_peak_and_frames() {
        let mut d = Debouncer::new(settings(2, 2, 0));
        let blob = Blob {
            bbox: [1, 2, 3, 4],
            area_px: 12,
            peak: 7.0,
        };
        let mut last = None;
        for (seq, (anomalous, score)) in [(1, (true, 3.0)), (2, (true, 7.0)), (3, (true, 4.0))]
            .into_iter()
            .chain([(4, (false, 0.0)), (5, (false, 0.0))])
        {
            let blobs = if score == 7.0 {
                vec![blob.clone()]
            } else {
                vec![]
            };
            let o = d.observe(Seen {
                anomalous,
                score,
                seq,
                at_ms: 1000 + seq,
                blobs: &blobs,
            });
            assert_eq!(o.new_peak, seq <= 2, "seq {seq}");
            if o.ended.is_some() {
                last = o.ended;
            }
        }
        let inc = last.expect("ended");
        assert_eq!(
            (inc.first_seq, inc.start_ms, inc.last_ms, inc.frames),
            (1, 1001, 1003, 3)
        );
        assert_eq!(inc.peak.seq, 2);
        assert_eq!(inc.peak.blobs, [blob]);
    }
}
