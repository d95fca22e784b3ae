//! GStreamer sources (feature `gstreamer`): RTSP/IP cameras, video files, Jetson CSI and
//! GigE cameras through an operator's pipeline.
//!
//! Live sources (`kind = "gstreamer"`): the appsink keeps only the newest frame; a stream
//! that errors, ends or sends nothing for `timeout_s` is torn down and reopened with a
//! doubling backoff (with jitter, up to `reconnect_max_s`); frames carry the stream's
//! timestamps (when the pipeline clock saw them). Video-file replays (`kind = "replay"`
//! with an MP4/MKV/... path): every frame in order, `fps` paced like image replays,
//! `loop` starts the file again at its end. A sample that fails its checks (size, caps,
//! buffer length: see [`super::gst_pipeline::to_rgb`]) and a decoder's complaint (a
//! warning or error from the stream) are corrupt frames, counted, never fatal.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;

use super::gst_pipeline::{self, Built, Origin, Output};
use super::{sleep_until, FrameSource, Next};
use crate::config::{rate_period, PipelineConfig, SourceConfig};

const FIRST_BACKOFF: Duration = Duration::from_millis(250);

pub struct GstSource {
    what: String,
    origin: Origin,
    out: Output,
    /// Live: newest frame wins, reconnect on drops. Not live: a replay of a file.
    live: bool,
    looping: bool,
    /// A replay's frame period (None: as fast as scored).
    period: Option<Duration>,
    deadline: Instant,
    timeout: Duration,
    backoff: Duration,
    max_backoff: Duration,
    running: Option<Running>,
    frame_time: Option<SystemTime>,
    /// A replay whose file gave no frame in a whole pass ends instead of spinning.
    pass_frames: u64,
    ended: bool,
    /// A replay's last frame time (PTS) and frame duration: a gap is frames the decoder
    /// dropped (a damaged stream), `missing` of them still to be counted as corrupt.
    last_pts: Option<(u64, u64)>,
    missing: u64,
    stop: Arc<AtomicBool>,
}

struct Running {
    built: Built,
    bus: gst::Bus,
    /// The last frame (or the start): a live stream silent for `timeout` has dropped.
    last: Instant,
}

/// What the bus said since the last look.
enum BusNews {
    Nothing,
    /// A decoder's or element's complaint that did not stop the stream.
    Warning(String),
    /// The stream stopped with an error.
    Error(String),
    Eos,
}

impl GstSource {
    /// A `kind = "gstreamer"` source.
    pub fn live(cfg: &SourceConfig, p: &PipelineConfig, stop: Arc<AtomicBool>) -> Result<Self> {
        let SourceConfig::Gstreamer {
            url,
            pipeline,
            width,
            height,
            format,
            fps,
            latency_ms,
            timeout_s,
            reconnect_max_s,
        } = cfg
        else {
            anyhow::bail!("not a gstreamer source");
        };
        let origin = match (url, pipeline) {
            (Some(u), _) => Origin::from_url(u),
            (None, Some(d)) => Origin::Launch(d.clone()),
            (None, None) => anyhow::bail!("a gstreamer source needs url or pipeline"),
        };
        let out = Output {
            size: width.zip(*height),
            gray: format == "GRAY8",
            fps: (*fps > 0.0).then_some(*fps),
            max_pixels: p.max_frame_pixels,
            latency_ms: *latency_ms,
        };
        // Build once now: a pipeline that cannot be built (a missing element, a bad
        // description) is a config error, not something to retry forever.
        gst_pipeline::build(&origin, &out, true)?;
        let what = format!("gstreamer {} ({})", origin_text(&origin), out_text(&out));
        let mut s = Self::new(what, origin, out, true, stop);
        s.timeout = Duration::from_secs_f64(*timeout_s);
        s.max_backoff = Duration::from_secs_f64(*reconnect_max_s);
        Ok(s)
    }

    /// A video file replayed like image files: every frame, `fps` 0 = as fast as scored.
    pub fn replay(
        path: &Path,
        fps: f64,
        looping: bool,
        p: &PipelineConfig,
        stop: Arc<AtomicBool>,
    ) -> Result<Self> {
        anyhow::ensure!(path.is_file(), "video {} does not exist", path.display());
        let origin = Origin::File(path.to_path_buf());
        let out = Output {
            size: None,
            gray: false,
            fps: None,
            max_pixels: p.max_frame_pixels,
            latency_ms: 0,
        };
        gst_pipeline::build(&origin, &out, false)?;
        let what = format!(
            "replay video {} ({}, {})",
            path.display(),
            if fps > 0.0 {
                format!("{fps} fps")
            } else {
                "as fast as scored".into()
            },
            if looping { "looping" } else { "once" }
        );
        let mut s = Self::new(what, origin, out, false, stop);
        s.looping = looping;
        s.period = rate_period(fps);
        Ok(s)
    }

    fn new(what: String, origin: Origin, out: Output, live: bool, stop: Arc<AtomicBool>) -> Self {
        GstSource {
            what,
            origin,
            out,
            live,
            looping: false,
            period: None,
            deadline: Instant::now(),
            timeout: Duration::from_secs(5),
            backoff: FIRST_BACKOFF,
            max_backoff: Duration::from_secs(30),
            running: None,
            frame_time: None,
            pass_frames: 0,
            ended: false,
            last_pts: None,
            missing: 0,
            stop,
        }
    }

    fn start(&mut self) -> Result<()> {
        let built = gst_pipeline::build(&self.origin, &self.out, self.live)?;
        let bus = built
            .pipeline
            .bus()
            .ok_or_else(|| anyhow::anyhow!("no bus"))?;
        if let Err(e) = built.pipeline.set_state(gst::State::Playing) {
            let why = drain_error(&bus).unwrap_or_else(|| e.to_string());
            let _ = built.pipeline.set_state(gst::State::Null);
            anyhow::bail!("cannot start: {why}");
        }
        self.running = Some(Running {
            built,
            bus,
            last: Instant::now(),
        });
        Ok(())
    }

    fn teardown(&mut self) {
        self.last_pts = None;
        if let Some(r) = self.running.take() {
            let _ = r.built.pipeline.set_state(gst::State::Null);
        }
    }

    /// A live stream dropped: tear down, wait the backoff (with jitter), double it.
    fn reconnect(&mut self, why: &str) -> bool {
        self.teardown();
        let wait = jitter(self.backoff);
        log::warn!(
            "{}: {why}; reconnecting in {:.2} s",
            self.what,
            wait.as_secs_f64()
        );
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        sleep_until(Instant::now() + wait, &self.stop)
    }

    /// The end of a replayed file (or an error in it): the next step starts it again
    /// when looping (and the pass gave a frame), else the replay has ended.
    fn end_of_file(&mut self) {
        self.teardown();
        self.ended = !(self.looping && self.pass_frames > 0);
        self.pass_frames = 0;
    }

    fn pace(&mut self) -> bool {
        if let Some(period) = self.period {
            if !sleep_until(self.deadline, &self.stop) {
                return false;
            }
            self.deadline = (self.deadline + period).max(Instant::now());
        }
        true
    }

    fn frame(&mut self, sample: &gst::Sample) -> Next {
        let r = self.running.as_mut().expect("running");
        r.last = Instant::now();
        self.frame_time = self.live.then(|| stream_time(&r.built, sample)).flatten();
        if !self.live {
            self.missing += gap(&mut self.last_pts, sample);
        }
        match gst_pipeline::to_rgb(sample, &self.out) {
            Ok(img) => {
                self.backoff = FIRST_BACKOFF;
                self.pass_frames += 1;
                Next::Frame(img)
            }
            Err(e) => Next::Corrupt(e),
        }
    }

    /// One step: Some(next) to hand out, None to look again.
    fn step(&mut self) -> Option<Next> {
        if self.running.is_none() {
            if self.ended {
                return Some(Next::End);
            }
            if let Err(e) = self.start() {
                if !self.live {
                    // A file that cannot be played: one corrupt frame, then the end.
                    self.ended = true;
                    return Some(Next::Corrupt(e));
                }
                let why = format!("{e:#}");
                return (!self.reconnect(&why)).then_some(Next::End);
            }
        }
        let r = self.running.as_ref().expect("started");
        match bus_news(&r.bus) {
            BusNews::Nothing => {}
            BusNews::Warning(w) => return Some(Next::Corrupt(anyhow::anyhow!("{w}"))),
            BusNews::Error(e) if self.live => {
                let stop = !self.reconnect(&format!("stream error: {e}"));
                // Every error of a live stream (a decode error, or a lost connection) is counted
                // as one corrupt frame, then the stream is reopened.
                return Some(if stop {
                    Next::End
                } else {
                    Next::Corrupt(anyhow::anyhow!("{e}"))
                });
            }
            BusNews::Error(e) => {
                self.end_of_file();
                return Some(Next::Corrupt(anyhow::anyhow!("{e}")));
            }
            BusNews::Eos if self.live => {
                return (!self.reconnect("the stream ended")).then_some(Next::End)
            }
            BusNews::Eos => {
                self.end_of_file();
                return None;
            }
        }
        let r = self.running.as_ref().expect("started");
        if let Some(sample) = r
            .built
            .sink
            .try_pull_sample(gst::ClockTime::from_mseconds(100))
        {
            return Some(self.frame(&sample));
        }
        if r.built.sink.is_eos() {
            if self.live {
                return (!self.reconnect("the stream ended")).then_some(Next::End);
            }
            self.end_of_file();
            return None;
        }
        if self.live && r.last.elapsed() > self.timeout {
            let why = format!("no frame for {:.1} s", self.timeout.as_secs_f64());
            return (!self.reconnect(&why)).then_some(Next::End);
        }
        None
    }
}

impl FrameSource for GstSource {
    fn next_frame(&mut self) -> Next {
        if !self.live && !self.pace() {
            return Next::End;
        }
        loop {
            if self.stop.load(Ordering::Relaxed) {
                self.teardown();
                return Next::End;
            }
            if self.missing > 0 {
                self.missing -= 1;
                return Next::Corrupt(anyhow::anyhow!(
                    "a frame missing from the stream (the decoder dropped it: damaged data)"
                ));
            }
            if let Some(next) = self.step() {
                if matches!(next, Next::End) {
                    self.teardown();
                }
                return next;
            }
        }
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn wants_every_frame(&self) -> bool {
        !self.live && self.period.is_none()
    }

    fn frame_time(&self) -> Option<SystemTime> {
        self.frame_time
    }
}

impl Drop for GstSource {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The wall-clock time the pipeline's clock saw `sample` (its running time), for a live
/// stream: now minus how long ago that was.
fn stream_time(built: &Built, sample: &gst::Sample) -> Option<SystemTime> {
    let pts = sample.buffer()?.pts()?;
    let segment = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
    let running = segment.to_running_time(pts)?;
    let clock = built.pipeline.clock()?;
    let base = built.pipeline.base_time()?;
    let age = clock.time()?.checked_sub(base)?.checked_sub(running)?;
    SystemTime::now().checked_sub(Duration::from_nanos(age.nseconds()))
}

/// Frames missing between the last sample and this one, from their PTS and duration.
fn gap(last: &mut Option<(u64, u64)>, sample: &gst::Sample) -> u64 {
    let Some(buffer) = sample.buffer() else {
        return 0;
    };
    let (Some(pts), Some(dur)) = (buffer.pts(), buffer.duration()) else {
        return 0;
    };
    let (pts, dur) = (pts.nseconds(), dur.nseconds());
    let missing = match *last {
        Some((prev, prev_dur)) if prev_dur > 0 && pts > prev + prev_dur + prev_dur / 2 => {
            ((pts - prev) + prev_dur / 2) / prev_dur - 1
        }
        _ => 0,
    };
    *last = Some((pts, dur));
    missing.min(10_000)
}

fn bus_news(bus: &gst::Bus) -> BusNews {
    while let Some(msg) = bus.pop() {
        match msg.view() {
            gst::MessageView::Error(e) => return BusNews::Error(message_text(&msg, e.error())),
            gst::MessageView::Warning(w) => return BusNews::Warning(message_text(&msg, w.error())),
            gst::MessageView::Eos(_) => return BusNews::Eos,
            _ => {}
        }
    }
    BusNews::Nothing
}

fn drain_error(bus: &gst::Bus) -> Option<String> {
    while let Some(msg) = bus.pop() {
        if let gst::MessageView::Error(e) = msg.view() {
            return Some(message_text(&msg, e.error()));
        }
    }
    None
}

fn message_text(msg: &gst::Message, error: gst::glib::Error) -> String {
    let from = msg
        .src()
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "pipeline".into());
    format!("{from}: {error}")
}

/// `d` scaled by a factor in [0.5, 1.0): reconnecting cameras do not hammer a server in step.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    // A cheap hash of the clock's nanoseconds and the thread: enough to spread retries.
    let mut x = nanos as u64 ^ (std::process::id() as u64) << 32;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let f = 0.5 + (x % 1000) as f64 / 2000.0;
    d.mul_f64(f)
}

fn origin_text(o: &Origin) -> String {
    match o {
        Origin::Rtsp(u) | Origin::Uri(u) => u.clone(),
        Origin::File(p) => p.display().to_string(),
        Origin::Launch(d) => format!("pipeline {d:?}"),
    }
}

fn out_text(o: &Output) -> String {
    let size = o
        .size
        .map(|(w, h)| format!("{w}x{h}"))
        .unwrap_or_else(|| "as decoded".into());
    let rate = o.fps.map(|f| format!(", {f} fps")).unwrap_or_default();
    format!("{} {size}{rate}", if o.gray { "GRAY8" } else { "RGB" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_its_band_and_videos_are_recognised() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(
                j >= Duration::from_secs(1) && j < Duration::from_secs(2),
                "{j:?}"
            );
        }
        assert!(super::super::replay::is_video(Path::new("a/clip.MP4")));
        assert!(!super::super::replay::is_video(Path::new("a/clip.gif")));
    }

    #[test]
    fn a_test_pattern_gives_frames_of_the_configured_size() {
        let cfg: SourceConfig = toml::from_str(
            "kind = \"gstreamer\"\npipeline = \"videotestsrc is-live=true\"\nwidth = 64\nheight = 48\nformat = \"GRAY8\"",
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut s = GstSource::live(&cfg, &PipelineConfig::default(), stop.clone()).unwrap();
        for _ in 0..3 {
            match s.next_frame() {
                Next::Frame(f) => assert_eq!(f.dimensions(), (64, 48)),
                Next::Corrupt(e) => panic!("{e:#}"),
                Next::End => panic!("ended"),
            }
            assert!(s.frame_time().is_some());
        }
        stop.store(true, Ordering::Relaxed);
        assert!(matches!(s.next_frame(), Next::End));
    }

    #[test]
    fn a_pipeline_that_cannot_be_built_is_refused_at_open() {
        let cfg: SourceConfig =
            toml::from_str("kind = \"gstreamer\"\npipeline = \"nvarguscamerasrc-missing\"")
                .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        assert!(GstSource::live(&cfg, &PipelineConfig::default(), stop).is_err());
    }
}
