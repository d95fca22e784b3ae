//! `enroll`: build a memory bank from good images, written to the model's `bank/` or
//! `--out`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::bank::features::open_extractor;
use crate::cli::model_args::{BankArgs, ModelArgs};
use crate::detect::detector::{Detector, DetectorOptions};
use crate::enroll::{enroll, load_shots, EnrollSettings};
use crate::model::manifest::Model;

#[derive(Args)]
pub struct EnrollArgs {
    #[command(flatten)]
    model: ModelArgs,
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
}

pub fn run(a: EnrollArgs) -> Result<ExitCode> {
    let (model, opts) = a.model.load()?;
    let out = a.out.unwrap_or_else(|| model.dir.join("bank"));
    let r = enroll_bank(
        model,
        &opts,
        &a.good,
        a.limit,
        &out,
        &a.bank.settings(a.seed),
    )?;
    println!("{r}");
    Ok(ExitCode::SUCCESS)
}

/// `enroll`: build a memory bank from good images and write it to `out`.
pub fn enroll_bank(
    model: Model,
    opts: &DetectorOptions,
    good: &Path,
    limit: Option<usize>,
    out: &Path,
    settings: &EnrollSettings,
) -> Result<serde_json::Value> {
    let started = Instant::now();
    let shots = load_shots(good, limit)?;
    let extractor = Arc::new(open_extractor(opts.extractor.as_ref())?);
    let mut detector = Detector::new(model, &opts.maeday_only())?;
    let mut bank = enroll(&mut detector, extractor, &shots, settings)?;
    bank.save(out, &shots)?;
    let m = &bank.meta;
    Ok(json!({
        "bank": out.display().to_string(),
        "good_images": shots.len(),
        "rows": m.rows,
        "rows_before_coreset": m.rows_before_coreset,
        "features_sha256": m.features_sha256,
        "seed": m.seed,
        "extractor_sha256": m.extractor_sha256,
        "thresholds": {"bank": m.thresholds.bank.image, "ensemble": m.thresholds.ensemble.image},
        "seconds": started.elapsed().as_secs_f64(),
    }))
}
