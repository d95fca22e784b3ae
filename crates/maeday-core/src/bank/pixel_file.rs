//! Few-shot MAEDAY's per-pixel statistics ([`crate::detect::pixel_norm`]) kept with the
//! memory bank they were enrolled with: `maeday-pixel.f32` (the mean map, then the spread
//! map, little-endian f32) described in `bank.toml` by [`MaedayPixelMeta`] (its size and
//! sha256, how it was fitted, the standardisation of its maps for fusion, its thresholds).
//! They live with the bank because both come from the same good frames and go stale
//! together; a bank without them (older ones) simply has no `maeday-norm` scorer.

use std::fs;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::detect::fuse::{Normalisation, ProbeWeights};
use crate::detect::good_stats::GoodScores;
use crate::detect::pixel_norm::{PixelNorm, PixelNormParams, SceneCheck};
use crate::model::manifest::Thresholds;

pub const PIXEL_FILE: &str = "maeday-pixel.f32";
/// A map larger than this (pixels) is refused before its file is read.
pub const MAX_PIXELS: usize = 1 << 24;

/// `[maeday_pixel]` of `bank.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaedayPixelMeta {
    pub width: usize,
    pub height: usize,
    pub file: String,
    pub sha256: String,
    pub params: PixelNormParams,
    /// Standardises the normalised maps before they are fused with a bank's.
    pub z_norm: Normalisation,
    /// The `maeday-norm` scorer's thresholds (image score: the map's max).
    pub thresholds: Thresholds,
    /// The `ensemble-norm` scorer's thresholds: few-shot MAEDAY + the bank, standardised
    /// and weighted as serving fuses them (image score: the max). Banks from before it
    /// have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble_thresholds: Option<Thresholds>,
    /// What the enrollment's synthetic-defect probe measured (fusion weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeWeights>,
    /// Every scorer's image score of held-out good views (fusion from good frames only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub good: Option<GoodScores>,
    /// Whether the statistics are per pixel or pooled, and the held-out evidence (K >= 2;
    /// `params.model` is what is served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scene: Option<SceneCheck>,
}

/// The file's bytes: the means, then the spreads.
pub fn encode(n: &PixelNorm) -> Vec<u8> {
    let mut bytes = Vec::with_capacity((n.mean.len() + n.sigma.len()) * 4);
    for v in n.mean.iter().chain(&n.sigma) {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes
}

/// The meta describing `n` (its sha256 over [`encode`]).
pub fn meta_for(n: &PixelNorm, z_norm: Normalisation, thresholds: Thresholds) -> MaedayPixelMeta {
    MaedayPixelMeta {
        width: n.width,
        height: n.height,
        file: PIXEL_FILE.into(),
        sha256: crate::durable::sha256_hex(&encode(n)),
        params: n.params,
        z_norm,
        thresholds,
        ensemble_thresholds: None,
        probe: None,
        good: None,
        scene: None,
    }
}

/// Read and check the statistics of the bank in `dir`.
pub fn read(dir: &Path, meta: &MaedayPixelMeta) -> Result<PixelNorm> {
    if let Some(c) = &meta.scene {
        ensure!(
            c.model == meta.params.model,
            "bank.toml: maeday_pixel.scene chose {:?} but the statistics are {:?}",
            c.model,
            meta.params.model
        );
    }
    if let Some(g) = &meta.good {
        g.check()
            .map_err(|e| anyhow::anyhow!("bank.toml: maeday_pixel.{e}"))?;
    }
    ensure!(
        meta.file == PIXEL_FILE,
        "bank.toml: maeday_pixel.file must be {PIXEL_FILE:?} (got {:?})",
        meta.file
    );
    let pixels = meta.width.saturating_mul(meta.height);
    ensure!(
        pixels > 0 && pixels <= MAX_PIXELS,
        "bank.toml: maeday_pixel is {}x{}: must be 1 to {MAX_PIXELS} pixels",
        meta.width,
        meta.height
    );
    let path = dir.join(PIXEL_FILE);
    let len = fs::metadata(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    ensure!(
        len == pixels as u64 * 8,
        "{} holds {len} bytes, bank.toml says {}x{} means and spreads",
        path.display(),
        meta.width,
        meta.height
    );
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let sha = crate::durable::sha256_hex(&bytes);
    ensure!(
        sha == meta.sha256,
        "{} has sha256 {sha}, bank.toml says {}: corrupt",
        path.display(),
        meta.sha256
    );
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let (mean, sigma) = values.split_at(pixels);
    PixelNorm::from_parts(
        meta.width,
        meta.height,
        mean.to_vec(),
        sigma.to_vec(),
        meta.params,
    )
    .with_context(|| format!("{}", path.display()))
}
