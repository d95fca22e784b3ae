//! `maeday-edge`: score frames, evaluate on datasets, calibrate thresholds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use maeday_edge::calibration::CalibrationRule;
use maeday_edge::commands::{self, EvalOptions};
use maeday_edge::detector::DetectorOptions;
use maeday_edge::engine::{EngineOptions, Precision};
use maeday_edge::manifest::Model;
use maeday_edge::preprocess::Fit;
use maeday_edge::schedule::ScheduleKind;

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
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// With f16, also convert LayerNorm and Softmax to f16.
    #[arg(long)]
    f16_norms: bool,
}

impl Common {
    fn load(&self) -> Result<(Model, DetectorOptions)> {
        let dir = self
            .model
            .clone()
            .unwrap_or_else(commands::default_model_dir);
        let model = Model::open(&dir)?;
        let mut engine = EngineOptions {
            precision: self.precision,
            f32_norms: !self.f16_norms,
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
        };
        Ok((model, opts))
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Score {
            common,
            out,
            images,
        } => {
            let (model, opts) = common.load()?;
            let failed = commands::score(model, &opts, &images, out.as_deref())?;
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
        } => {
            let (model, opts) = common.load()?;
            let eo = EvalOptions {
                limit,
                seed,
                report,
                pixel_budget: pixel_budget.max(1),
            };
            let r = commands::eval(model, &opts, &dataset, &eo)?;
            print!("{}", commands::eval_table(&r));
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
            let r = commands::calibrate_model(model, &opts, &good, limit, &rule)?;
            println!("{r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
