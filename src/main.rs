//! `maeday-edge`: the daemon (`run`), plus scoring, evaluation and calibration tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use maeday_edge::cli::tools::{self, EvalOptions};
use maeday_edge::config::Config;
use maeday_edge::config::EngineName;
use maeday_edge::daemon::{self, RunOptions};
use maeday_edge::detect::calibration::CalibrationRule;
use maeday_edge::detect::detector::DetectorOptions;
use maeday_edge::detect::engine::{Backend, EngineOptions, OrtSettings, Precision, Provider};
use maeday_edge::detect::preprocess::Fit;
use maeday_edge::model::manifest::Model;
use maeday_edge::model::schedule::ScheduleKind;

#[derive(Parser)]
#[command(
    name = "maeday-edge",
    version,
    about = "MAEDAY anomaly detection at the edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The daemon: cameras -> MAEDAY -> MQTT / files / console, until the sources end,
    /// --max-frames, or SIGTERM/SIGINT. Without --config: the built-in demo
    /// (firmware-config/demo.toml: replayed sample frames, embedded broker, console).
    Run {
        /// Site config (TOML), e.g. firmware-config/conveyor.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Broker URL, overriding mqtt.url (mqtt://host:port or mqtts://host:port).
        #[arg(long)]
        mqtt_url: Option<String>,
        /// Stop cleanly after this many scored frames.
        #[arg(long)]
        max_frames: Option<u64>,
        /// Only check the config and exit.
        #[arg(long)]
        check: bool,
        /// Inference engine, overriding model.engine: tract or ort (ONNX Runtime, set up
        /// by [model.ort]).
        #[arg(long)]
        engine: Option<EngineChoice>,
        /// maeday, bank or ensemble, overriding model.scorer (bank and ensemble need an
        /// enrolled memory bank in the serving model folder).
        #[arg(long)]
        scorer: Option<maeday_edge::detect::fuse::ScorerKind>,
    },
    /// Retrain bundles: keys, packing, signing, verifying, sending to devices.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// A standalone MQTT broker (the embedded one), until SIGTERM/SIGINT.
    #[cfg(feature = "embedded-broker")]
    Broker {
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 1 << 20)]
        max_payload_bytes: usize,
        /// Only accept clients that log in as USER:PASSWORD (repeatable); without it the
        /// broker is anonymous.
        #[arg(long = "user", value_name = "USER:PASSWORD")]
        users: Vec<String>,
    },
    /// Score images: one JSON line per image on stdout.
    Score {
        #[command(flatten)]
        common: Common,
        /// Write `<stem>.heatmap.png` (and `<stem>.mask.png` once calibrated) here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Image and pixel AUROC on a dataset (MVTec AD, magnetic-tile or image-level folders).
    Eval {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        dataset: PathBuf,
        /// At most this many normal and this many anomalous images (seeded pick).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// At most this many pixels per image count in the pixel AUROC.
        #[arg(long, default_value_t = 65536)]
        pixel_budget: usize,
        /// Few-shot: enroll memory banks from this many normal images that are not
        /// evaluated; the report then compares MAEDAY, each bank and their combinations.
        #[arg(long, default_value_t = 0)]
        shots: usize,
        /// Picks the shots.
        #[arg(long, default_value_t = 0)]
        shot_seed: u64,
        /// One bank per coreset seed (comma-separated), all from the same shots.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        bank_seeds: Vec<u64>,
        #[command(flatten)]
        bank: BankArgs,
    },
    /// Build a memory bank (PatchCore-style) from good images for the bank and ensemble
    /// scorers; written to the model's `bank/` unless --out says otherwise.
    Enroll {
        #[command(flatten)]
        common: Common,
        /// Folder of good (normal) images.
        #[arg(long)]
        good: PathBuf,
        /// Use at most this many of them.
        #[arg(long)]
        limit: Option<usize>,
        /// Where the bank goes (default: <model>/bank).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Coreset seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        bank: BankArgs,
    },
    /// Set image and pixel thresholds from good images; writes them into the manifest.
    Calibrate {
        #[command(flatten)]
        common: Common,
        /// Folder of good (normal) images.
        #[arg(long)]
        good: PathBuf,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 0.99)]
        image_quantile: f64,
        #[arg(long, default_value_t = 0.999)]
        pixel_quantile: f64,
        /// Threshold = Q + margin * (Q - median).
        #[arg(long, default_value_t = 0.1)]
        margin: f64,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Make an ed25519 signing key: OUT.key (secret) and OUT.pub (for devices).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Pack a model (or only its settings) with golden frames into a signed bundle.
    Pack {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Monotonic version: devices refuse anything at or below what they installed.
        #[arg(long)]
        version: u64,
        /// Target device ids (repeatable).
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Target fleet groups (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Frames the device must score like this runtime does here (repeatable).
        #[arg(long)]
        golden: Vec<PathBuf>,
        /// Relative tolerance on golden scores.
        #[arg(long, default_value_t = 0.01)]
        tolerance: f32,
        /// Leave the graph out: the device keeps its graph, takes the new manifest
        /// (thresholds, schedule seed).
        #[arg(long)]
        settings_only: bool,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-sign a bundle with another key.
    Sign {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle's signature and files against public keys.
    Verify {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long = "trusted", required = true)]
        trusted: Vec<PathBuf>,
    },
    /// Sign a command that changes what a device serves (`rollback`, `enroll [frames]
    /// [camera]`) and publish it (or, without --mqtt-url, print it).
    Command {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        device: String,
        #[arg(long)]
        mqtt_url: Option<String>,
        /// Replay protection: above the last one the device accepted (default: now in ms).
        #[arg(long)]
        seq: Option<u64>,
        #[arg(required = true, trailing_var_arg = true)]
        words: Vec<String>,
    },
    /// Send a bundle over MQTT in chunks; with --device, wait for its verdict.
    Send {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        mqtt_url: String,
        #[arg(long, conflicts_with = "group")]
        device: Option<String>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value_t = 128 << 10)]
        chunk_bytes: usize,
        /// Seconds to wait for the device's verdict.
        #[arg(long, default_value_t = 120)]
        wait_s: u64,
    },
}

fn bundle_command(c: BundleCommand) -> Result<ExitCode> {
    use maeday_edge::cli::bundle as cli;
    match c {
        BundleCommand::Keygen { out } => cli::keygen(&out)?,
        BundleCommand::Pack {
            model,
            key,
            version,
            devices,
            groups,
            golden,
            tolerance,
            settings_only,
            description,
            out,
        } => cli::pack(&cli::PackOptions {
            model,
            key,
            version,
            devices,
            groups,
            golden,
            tolerance,
            settings_only,
            description,
            out,
        })?,
        BundleCommand::Sign { bundle, key, out } => cli::sign(&bundle, &key, &out)?,
        BundleCommand::Verify { bundle, trusted } => cli::verify(&bundle, &trusted)?,
        BundleCommand::Command {
            key,
            device,
            mqtt_url,
            seq,
            words,
        } => cli::command(&cli::CommandOptions {
            key,
            device,
            mqtt_url,
            seq,
            words,
        })?,
        BundleCommand::Send {
            bundle,
            mqtt_url,
            device,
            group,
            chunk_bytes,
            wait_s,
        } => {
            anyhow::ensure!(chunk_bytes >= 1024, "--chunk-bytes must be at least 1024");
            let verdict = cli::send(&cli::SendOptions {
                bundle,
                mqtt_url,
                device,
                group,
                chunk_bytes,
                wait: std::time::Duration::from_secs(wait_s),
            })?;
            if let Some(v) = verdict {
                println!("{v}");
                if v["state"] != "installed" {
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How banks are built.
#[derive(Args)]
struct BankArgs {
    /// The fraction of patch features the coreset keeps.
    #[arg(long, default_value_t = 0.25)]
    coreset_fraction: f64,
    /// Extra views of each good image (repeatable): hflip, vflip, rotate, brightness.
    #[arg(long)]
    augment: Vec<maeday_edge::enroll::Augmentation>,
    /// Weight of MAEDAY's standardised map in the ensemble.
    #[arg(long, default_value_t = 1.0)]
    maeday_weight: f32,
    /// Weight of each bank's standardised map in the ensemble.
    #[arg(long, default_value_t = 1.0)]
    bank_weight: f32,
}

impl BankArgs {
    fn settings(&self, seed: u64) -> maeday_edge::enroll::EnrollSettings {
        maeday_edge::enroll::EnrollSettings {
            seed,
            coreset_fraction: self.coreset_fraction,
            augment: self.augment.clone(),
            weights: maeday_edge::detect::fuse::Weights {
                maeday: self.maeday_weight,
                bank: self.bank_weight,
            },
            ..Default::default()
        }
    }
}

#[derive(Args)]
struct Common {
    /// Model folder (`<name>.onnx` + `manifest.toml`); default: the bundled model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// squash (the paper), letterbox, or tile (aspect-preserving overlapping windows).
    #[arg(long, default_value = "squash")]
    fit: Fit,
    /// Override the manifest's mask count N.
    #[arg(long)]
    masks: Option<usize>,
    /// Override the manifest's schedule kind (random or balanced).
    #[arg(long)]
    schedule: Option<ScheduleKind>,
    /// Override the manifest's schedule seed.
    #[arg(long)]
    schedule_seed: Option<u64>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// auto (f16 on CPUs with native fp16, else f32), f32 or f16.
    #[arg(long, default_value = "auto")]
    precision: Precision,
    /// With f16, also convert LayerNorm and Softmax to f16.
    #[arg(long)]
    f16_norms: bool,
    /// Inference engine: tract (built in) or ort (ONNX Runtime; builds with `--features
    /// ort` or `cuda`).
    #[arg(long, value_enum, default_value = "tract")]
    engine: EngineChoice,
    /// ort: libonnxruntime.so (default: $ORT_DYLIB_PATH).
    #[arg(long)]
    ort_library: Option<PathBuf>,
    /// ort: execution providers, most preferred first (repeatable): cpu, cuda, tensorrt.
    #[arg(long = "ort-provider", default_value = "cpu")]
    ort_providers: Vec<Provider>,
    /// ort: go on without a provider that fails to register.
    #[arg(long)]
    ort_allow_fallback: bool,
    /// ort: TensorRT engine cache folder.
    #[arg(long)]
    tensorrt_cache: Option<PathBuf>,
    /// maeday, bank or ensemble (default: the ensemble when the model has a memory bank,
    /// else MAEDAY alone).
    #[arg(long)]
    scorer: Option<maeday_edge::detect::fuse::ScorerKind>,
    /// Memory bank folders from `enroll` (repeatable; default: the model's bank/).
    #[arg(long = "bank")]
    banks: Vec<PathBuf>,
    /// The banks' feature extractor (default: models/efficientnet-lite0).
    #[arg(long)]
    extractor: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EngineChoice {
    Tract,
    Ort,
}

impl Common {
    fn load(&self) -> Result<(Model, DetectorOptions)> {
        let dir = self.model.clone().unwrap_or_else(tools::default_model_dir);
        let model = Model::open(&dir)?;
        let backend = match self.engine {
            EngineChoice::Tract => Backend::Tract,
            EngineChoice::Ort => Backend::Ort(OrtSettings {
                library: self.ort_library.clone(),
                providers: self.ort_providers.clone(),
                allow_fallback: self.ort_allow_fallback,
                tensorrt_cache_dir: self.tensorrt_cache.clone(),
                ..Default::default()
            }),
        };
        let mut engine = EngineOptions {
            precision: self.precision,
            f32_norms: !self.f16_norms,
            backend,
            ..Default::default()
        };
        if let Some(t) = self.threads {
            anyhow::ensure!(t > 0, "--threads must be at least 1");
            engine.threads = t;
        }
        let opts = DetectorOptions {
            fit: self.fit,
            engine,
            masks: self.masks,
            schedule: self.schedule,
            seed: self.schedule_seed,
            scorer: self.scorer,
            banks: self.banks.clone(),
            extractor: self.extractor.clone(),
            keep_parts: false,
        };
        Ok((model, opts))
    }
}

/// SIGTERM and SIGINT set this flag; the pipeline stops cleanly when it sees it.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            mqtt_url,
            max_frames,
            check,
            engine,
            scorer,
        } => {
            let mut config = match &config {
                Some(path) => Config::load(path)?,
                None => Config::demo()?,
            };
            match engine {
                Some(EngineChoice::Tract) => config.model.engine = EngineName::Tract,
                Some(EngineChoice::Ort) => config.model.engine = EngineName::Ort,
                None => {}
            }
            if scorer.is_some() {
                config.model.scorer = scorer;
            }
            if check {
                config.check_sources()?;
                println!("config ok: {} camera(s)", config.cameras.len());
                return Ok(ExitCode::SUCCESS);
            }
            let opts = RunOptions {
                mqtt_url,
                max_frames,
                stop: stop_flag()?,
            };
            let summary = daemon::run(config, opts)?;
            println!("{}", daemon::summary_line(&summary));
        }
        Command::Bundle { command } => return bundle_command(command),
        #[cfg(feature = "embedded-broker")]
        Command::Broker {
            listen,
            max_payload_bytes,
            users,
        } => {
            let stop = stop_flag()?;
            let users = users
                .iter()
                .map(|u| match u.split_once(':') {
                    Some((n, p)) if !n.is_empty() && !p.is_empty() => {
                        Ok((n.to_string(), p.to_string()))
                    }
                    _ => anyhow::bail!("--user {u:?}: expected USER:PASSWORD"),
                })
                .collect::<Result<_>>()?;
            maeday_edge::daemon::mqtt::broker::start_with_users(listen, max_payload_bytes, &users)?;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Command::Score {
            common,
            out,
            images,
        } => {
            let (model, opts) = common.load()?;
            let failed = tools::score(model, &opts, &images, out.as_deref())?;
            if failed > 0 {
                eprintln!(
                    "error: {failed} of {} images could not be scored",
                    images.len()
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Eval {
            common,
            dataset,
            limit,
            seed,
            report,
            pixel_budget,
            shots,
            shot_seed,
            bank_seeds,
            bank,
        } => {
            let (model, opts) = common.load()?;
            let eo = EvalOptions {
                limit,
                seed,
                report,
                pixel_budget: pixel_budget.max(1),
                shots,
                shot_seed,
                bank_seeds,
                enroll: bank.settings(0),
            };
            let r = tools::eval(model, &opts, &dataset, &eo)?;
            print!("{}", tools::eval_table(&r));
        }
        Command::Enroll {
            common,
            good,
            limit,
            out,
            seed,
            bank,
        } => {
            let (model, opts) = common.load()?;
            let out = out.unwrap_or_else(|| model.dir.join("bank"));
            let r = tools::enroll_bank(model, &opts, &good, limit, &out, &bank.settings(seed))?;
            println!("{r}");
        }
        Command::Calibrate {
            common,
            good,
            limit,
            image_quantile,
            pixel_quantile,
            margin,
        } => {
            let (model, opts) = common.load()?;
            let rule = CalibrationRule {
                image_quantile,
                pixel_quantile,
                margin,
            };
            let r = tools::calibrate_model(model, &opts, &good, limit, &rule)?;
            println!("{r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(
        // rumqttd logs routine broker traffic at ERROR level through `tracing`: keep it
        // quiet unless asked for (RUST_LOG=rumqttd=info).
        env_logger::Env::default().default_filter_or("info,rumqttd=off,tracing=off"),
    )
    .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
