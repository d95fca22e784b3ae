//! The daemon ([`run`]): frames from a [`source`] through the detector to the outputs.
//!
//! ```text
//!  camera 0 ─capture─▶ [slot] ─┐
//!  camera 1 ─capture─▶ [slot] ─┼─▶ inference ─▶ ┌──────────────┐     console, files,
//!                              ┘  (one model)   │ sink events  │─▶ sink ─▶ MQTT
//!   MQTT connection ─(acks, commands)─────────▶ │ (one channel)│    │
//!   installer ─(status messages)──────────────▶ └──────────────┘    └─▶ installer,
//!                                                                      inference (enroll)
//! ```
//! - [`capture`]: one thread per camera, a newest-frame-wins slot each;
//! - [`infer`]: the inference thread (this one), model switches between frames,
//!   enrollment capture ([`enrollment`]);
//! - [`sink`]: the sink thread, blocked on its one [`events`] channel, feeding the
//!   [`outputs`] and routing [`control`] commands;
//! - [`installer`]: its own thread, loading bundles and enrollments, handing detectors to
//!   inference.
//!
//! Results are never dropped: inference waits for the sinks, and the MQTT output spools
//! to disk when the broker is away. SIGTERM/SIGINT (or `--max-frames`, or the end of the
//! sources) stop the daemon through one [`Shutdown`]: capture stops, the frame in flight
//! is finished and published, the outputs flush, the spool keeps what is left.
//!
//! This file only wires the threads together and stops them in order.

pub mod announce;
pub mod boot;
pub mod capture;
pub mod control;
pub mod discovery;
pub mod enrollment;
pub mod events;
pub mod http;
pub mod incidents;
pub mod infer;
pub mod installer;
pub mod mqtt;
pub mod operator;
pub mod outputs;
pub mod payload;
pub mod position;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod startup;
pub mod stats;
pub mod sweep;
pub mod throttle;
pub mod topics;
pub mod watchdog;

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Result;
use ed25519_dalek::VerifyingKey;

use crate::config::Config;
use crate::daemon::capture::{Camera, CaptureShared, FrameSlots};
use crate::daemon::control::Control;
use crate::daemon::enrollment::Enrollment;
use crate::daemon::events::{Events, SinkEvent};
use crate::daemon::http::feed::HttpFeed;
use crate::daemon::http::HttpServer;
use crate::daemon::infer::Inference;
use crate::daemon::installer::{Installer, InstallerInput, InstallerSettings, Swap};
use crate::daemon::operator::desk::Desk;
use crate::daemon::operator::state::Operator;
use crate::daemon::outputs::console::Console;
use crate::daemon::outputs::files::FileSink;
use crate::daemon::outputs::mqtt::{MqttOutput, MqttSetup};
use crate::daemon::outputs::status::StatusPayload;
use crate::daemon::outputs::Outputs;
use crate::daemon::payload::ServingModel;
use crate::daemon::position::Positions;
use crate::daemon::shutdown::Shutdown;
use crate::daemon::sink::{Routes, Sink};
use crate::daemon::source::FrameSource;
use crate::daemon::startup::Serving;
use crate::daemon::stats::{SinkStats, Stats};
use crate::daemon::sweep::Sweep;
use crate::daemon::topics::Topics;
use crate::daemon::watchdog::Liveness;

pub use crate::daemon::stats::{summary_line, MetricsPayload};

/// What `run` takes besides the config file.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Overrides `mqtt.url`.
    pub mqtt_url: Option<String>,
    /// Stop cleanly after this many scored frames (all cameras together).
    pub max_frames: Option<u64>,
    /// Set by SIGTERM/SIGINT (or a test) to stop cleanly.
    pub stop: Arc<AtomicBool>,
}

/// Run the daemon until the sources end, `max_frames` are scored, or `stop` is set.
/// Returns the final metrics.
pub fn run(config: Config, opts: RunOptions) -> Result<MetricsPayload> {
    // rustls needs one process-wide crypto provider; ring cross-compiles without cmake.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shutdown = Shutdown::new(opts.stop.clone());
    let mut serving = startup::serving(&config)?;
    let boot = startup::boot(&config);
    startup::embedded_broker(&config)?;
    let cameras = startup::cameras(&config, &shutdown)?;
    let trusted = startup::trusted_keys(&config)?;
    let (events, event_queue) = events::channel(config.pipeline.result_queue);
    let mut shared = Shared {
        operator: open_operator(&config, &serving),
        stats: Arc::new(Stats::new(cameras.stats)),
        slots: Arc::new(FrameSlots::new(config.cameras.len())),
        liveness: Arc::new(Liveness::default()),
        shutdown,
        events,
        http: None,
    };
    shared.shutdown.on_trigger({
        let slots = shared.slots.clone();
        move || slots.wake()
    });
    shared.liveness.sink_alive();
    let http = start_http(&config, &serving, &shared)?;
    shared.http = http.as_ref().map(|(f, _)| f.clone());

    // The installer: its own thread, fed chunks and commands by the sink thread, reporting
    // through the sink events, handing loaded detectors to the inference thread.
    let (swap_tx, swap_rx) = mpsc::channel::<Swap>();
    let installer = match trusted.clone() {
        Some(keys) => start_installer(&config, &mut serving, keys, swap_tx, &shared.events)?,
        None => None,
    };
    // `enroll` commands: sink -> inference thread (captures the frames) -> installer.
    let mut routes = Routes::default();
    let enrollment = installer.as_ref().map(|i| {
        let (tx, rx) = mpsc::channel();
        routes.enroll = Some(tx);
        routes.installer = Some(i.input.clone());
        Enrollment::new(rx, i.input.clone())
    });
    let sink =
        start_sink(&config, &opts, &serving, routes, trusted, &shared)?.spawn(event_queue)?;
    let captures = start_captures(&config, cameras.sources, &shared)?;
    let watchdog = watchdog::start(shared.liveness.clone(), shared.shutdown.flag());
    watchdog::ready(&format!(
        "serving {} on {} camera(s)",
        serving.detector.model.manifest.name,
        config.cameras.len()
    ));
    let result = Inference {
        config: &config,
        boot,
        detector: serving.detector,
        swaps: &swap_rx,
        enrollment,
        slots: shared.slots.clone(),
        stats: shared.stats.clone(),
        liveness: shared.liveness.clone(),
        events: shared.events.clone(),
        max_frames: opts.max_frames,
        shutdown: shared.shutdown.clone(),
        live: shared.http.as_ref().map(|f| f.live.watch.clone()),
        operator: shared.operator.clone(),
    }
    .run();
    let threads = Threads {
        captures,
        sink,
        watchdog,
        installer,
        http: http.map(|(_, server)| server),
    };
    let sink_stats = threads.stop(&shared, swap_rx)?;
    result?;
    Ok(shared
        .stats
        .snapshot(&config.device_id, shared.slots.counts(), sink_stats))
}

/// What every thread is started with.
struct Shared {
    /// What operators set (pause, thresholds) and the frames they asked for.
    operator: Arc<Operator>,
    stats: Arc<Stats>,
    slots: Arc<FrameSlots>,
    liveness: Arc<Liveness>,
    shutdown: Shutdown,
    /// The sink thread's event channel.
    events: Events,
    /// With `[http]`: what the HTTP server shows (the sink thread feeds it).
    http: Option<Arc<HttpFeed>>,
}

/// The threads besides inference (the caller's), to stop in order.
struct Threads {
    captures: Vec<JoinHandle<()>>,
    sink: JoinHandle<Result<SinkStats>>,
    watchdog: Option<JoinHandle<()>>,
    installer: Option<InstallerThreads>,
    http: Option<HttpServer>,
}

impl Threads {
    /// Once inference has ended, whatever happened: stop capture, let the sinks drain and
    /// flush, then let the installer end. `swaps` is kept until the sinks are done.
    fn stop(self, shared: &Shared, swaps: Receiver<Swap>) -> Result<SinkStats> {
        watchdog::stopping();
        shared.shutdown.trigger();
        if let Some(t) = self.watchdog {
            let _ = t.join();
        }
        shared.events.send(SinkEvent::Stop);
        for c in self.captures {
            let _ = c.join();
        }
        let sink_stats = self
            .sink
            .join()
            .map_err(|_| anyhow::anyhow!("the sink thread panicked"))??;
        // The sink thread held the installer's input: it ends once that is gone. An
        // install that is still loading is abandoned (nothing was persisted for it yet,
        // or all of it).
        drop(swaps);
        if let Some(i) = self.installer {
            i.join();
        }
        if let Some(h) = self.http {
            h.stop();
        }
        Ok(sink_stats)
    }
}

/// The sink thread's state: outputs, command parser and routes.
fn start_sink(
    config: &Config,
    opts: &RunOptions,
    serving: &Serving,
    routes: Routes,
    trusted: Option<Vec<VerifyingKey>>,
    shared: &Shared,
) -> Result<Sink> {
    let topics = topics(config);
    let now = ServingModel::of(&serving.detector, serving.bundle_version);
    let desk = Desk::new(config, shared.operator.clone(), topics.clone(), &now);
    let mut outputs = open_outputs(config, opts, serving, topics.clone(), &shared.events)?;
    if let Some(m) = outputs.mqtt.as_mut() {
        m.set_camera_state(desk.states())?;
    }
    if let Some(h) = &shared.http {
        h.camera_state(desk.states());
    }
    let incidents = announce::announce(config, serving, &topics, &mut outputs);
    Ok(Sink {
        incidents,
        outputs,
        control: Control::open(config, topics.clone(), trusted)?,
        routes,
        topics,
        format: config.output.format,
        stats: shared.stats.clone(),
        slots: shared.slots.clone(),
        liveness: shared.liveness.clone(),
        device_id: config.device_id.clone(),
        metrics_interval: config.output.metrics_interval(),
        http: shared.http.clone(),
        position: config.position.as_ref().map(Positions::new),
        desk,
    })
}

/// Every topic of this device.
fn topics(config: &Config) -> Topics {
    Topics::with_prefix(
        topic_prefix(config),
        &config.device_id,
        config.bundles.as_ref().map_or(&[][..], |b| &b.groups),
    )
}

/// `mqtt.topic_prefix`, or the default without `[mqtt]`.
fn topic_prefix(config: &Config) -> &str {
    config
        .mqtt
        .as_ref()
        .map_or(crate::daemon::topics::DEFAULT_PREFIX, |m| &m.topic_prefix)
}

/// What operators set, as saved in the state folder.
fn open_operator(config: &Config, serving: &Serving) -> Arc<Operator> {
    let now = ServingModel::of(&serving.detector, serving.bundle_version);
    let names = config.cameras.iter().map(|c| c.name.clone()).collect();
    Arc::new(Operator::open(startup::operator_file(config), names, &now))
}

/// With `[http]`: the server and the feed the sink thread fills (the serving model is
/// read here, before the detector moves to the inference thread).
fn start_http(
    config: &Config,
    serving: &Serving,
    shared: &Shared,
) -> Result<Option<(Arc<HttpFeed>, HttpServer)>> {
    http::start(
        config,
        ServingModel::of(&serving.detector, serving.bundle_version),
        serving.detector.model.manifest.input.size as u32,
        shared.stats.clone(),
        shared.slots.clone(),
    )
}

/// One capture thread per camera.
fn start_captures(
    config: &Config,
    sources: Vec<Box<dyn FrameSource>>,
    shared: &Shared,
) -> Result<Vec<JoinHandle<()>>> {
    let capture = CaptureShared {
        operator: shared.operator.clone(),
        slots: shared.slots.clone(),
        stats: shared.stats.clone(),
        shutdown: shared.shutdown.clone(),
    };
    let mut threads = Vec::new();
    for (index, source) in sources.into_iter().enumerate() {
        let roi = config.cameras[index].roi;
        let camera = Camera { source, index, roi };
        threads.push(capture::spawn(camera, capture.clone())?);
    }
    Ok(threads)
}

/// The running installer: its input and its thread (its statuses go out as sink events).
struct InstallerThreads {
    input: Sender<InstallerInput>,
    thread: JoinHandle<()>,
}

impl InstallerThreads {
    /// Wait for the thread (once every input sender is gone).
    fn join(self) {
        drop(self.input);
        let _ = self.thread.join();
    }
}

/// With `[bundles]`: start the installer (it takes the model slots from `serving`).
fn start_installer(
    config: &Config,
    serving: &mut Serving,
    trusted: Vec<VerifyingKey>,
    swaps: Sender<Swap>,
    events: &Events,
) -> Result<Option<InstallerThreads>> {
    let (Some(b), Some(model_slots)) = (&config.bundles, serving.slots.take()) else {
        return Ok(None);
    };
    let settings = InstallerSettings {
        device_id: config.device_id.clone(),
        topic_prefix: topic_prefix(config).to_string(),
        groups: b.groups.clone(),
        trusted,
        max_bundle_bytes: b.max_bundle_bytes,
        limits: crate::update::transfer::Limits {
            max_chunk_bytes: b.max_chunk_bytes,
            max_bundle_bytes: b.max_bundle_bytes,
            max_transfers: b.max_transfers,
            expiry: std::time::Duration::from_secs(b.transfer_expiry_s),
            max_incoming_bytes: b.max_incoming_bytes,
        },
        state_dir: b.state_dir.clone(),
        serving: serving.options.clone(),
        factory: serving.factory.clone(),
        format: config.output.format,
        enroll: config.enroll.settings()?,
    };
    let (in_tx, in_rx) = mpsc::channel::<InstallerInput>();
    let installer = Installer::new(
        settings,
        model_slots,
        serving.model.clone(),
        events.clone(),
        swaps,
    )?;
    let thread = std::thread::Builder::new()
        .name("installer".into())
        .spawn(move || installer.run(in_rx))?;
    Ok(Some(InstallerThreads {
        input: in_tx,
        thread,
    }))
}

/// The console, folder and MQTT outputs the config asks for.
fn open_outputs(
    config: &Config,
    opts: &RunOptions,
    serving: &Serving,
    topics: Topics,
    events: &Events,
) -> Result<Outputs> {
    let mut outputs = Outputs::new(config.output.clone());
    if config.console_lines(watchdog::stderr_is_journal()) {
        outputs.console = Some(Console);
    }
    outputs.files = config.files.as_ref().map(|f| FileSink::new(f.dir.clone()));
    if let Some(cfg) = &config.mqtt {
        let cameras = config.cameras.iter().map(|c| c.name.clone()).collect();
        let now = ServingModel::of(&serving.detector, serving.bundle_version);
        let ha = cfg
            .home_assistant
            .as_ref()
            .map(|h| h.discovery_prefix.as_str());
        let sweep = Sweep::new(&topics, &config.device_id, ha);
        let setup = MqttSetup {
            topics,
            status: StatusPayload::online(&config.device_id, cameras, now, config.output.format),
            bundles: config.bundles.is_some(),
            url: opts.mqtt_url.clone(),
            client_id: format!("maeday-{}", config.device_id),
            format: config.output.format,
            deliver: Arc::new(events.route(SinkEvent::Mqtt)),
            state_inputs: config.position.iter().map(|p| p.topic.clone()).collect(),
            sweep,
        };
        outputs.mqtt = Some(MqttOutput::open(cfg, setup)?);
    }
    Ok(outputs)
}
