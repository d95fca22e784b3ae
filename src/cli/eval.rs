//! `eval`: image and pixel AUROC (and PRO) on a labelled dataset; the work is in
//! [`crate::eval::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::cli::model_args::{BankArgs, ModelArgs};
use crate::eval::run::{evaluate, EvalOptions};
use crate::eval::table::eval_table;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
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
    /// Also measure few-shot MAEDAY (`maeday-norm`, per-pixel normalised) and every
    /// fusion of it with MAEDAY and the banks (sums and pixel-wise maxima), each with the
    /// map's max and its top-1% mean as image score.
    #[arg(long)]
    compare_fusions: bool,
    #[command(flatten)]
    bank: BankArgs,
}

pub fn run(a: EvalArgs) -> Result<ExitCode> {
    let (model, opts) = a.model.load()?;
    let eo = EvalOptions {
        limit: a.limit,
        seed: a.seed,
        report: a.report,
        pixel_budget: a.pixel_budget.max(1),
        shots: a.shots,
        shot_seed: a.shot_seed,
        bank_seeds: a.bank_seeds,
        enroll: a.bank.settings(0),
        compare_fusions: a.compare_fusions,
    };
    let r = evaluate(model, &opts, &a.dataset, &eo)?;
    print!("{}", eval_table(&r));
    Ok(ExitCode::SUCCESS)
}
