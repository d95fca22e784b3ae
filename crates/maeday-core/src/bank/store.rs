//! A memory bank on disk: a folder with `bank.toml` (the [`BankMeta`]), `features.f32` (rows
//! of little-endian f32, their sha256 in the meta) and `shots/` (the good frames, PNG, so a
//! bank can be audited or rebuilt). [`StoredBank::save`] writes a temporary folder and
//! renames it into place; [`StoredBank::load`] refuses a bank whose features do not match
//! their hash or whose extractor differs from the one in use.

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use image::DynamicImage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bank::features::{Distance, FeatureExtractor};
use crate::bank::memory::{Features, MemoryBank};
use crate::bank::pixel_file::{self, MaedayPixelMeta};
use crate::bank::scoring::{BankScorer, BankThresholds};
use crate::detect::fuse::{Normalisation, Weights};
use crate::detect::pixel_norm::{PixelNorm, PixelScorer};
use crate::model::manifest::Standardise;

pub const BANK_FORMAT: u32 = 1;

const FEATURES_FILE: &str = "features.f32";

/// The dotted key of the first NaN or infinite float under `value`, if any.
fn first_non_finite(value: &toml::Value, key: &str) -> Option<String> {
    let child = |k: &str| {
        if key.is_empty() {
            k.to_string()
        } else {
            format!("{key}.{k}")
        }
    };
    match value {
        toml::Value::Float(f) if !f.is_finite() => Some(key.to_string()),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| first_non_finite(v, &child(k))),
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| first_non_finite(v, &format!("{key}[{i}]"))),
        _ => None,
    }
}

/// One good frame.
#[derive(Debug, Clone)]
pub struct Shot {
    /// Where it came from (a file name, or `camera/seq`).
    pub name: String,
    pub image: DynamicImage,
}

/// Extra views of each good frame added to the bank (recorded in its meta).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Augmentation {
    /// Mirrored left-right.
    Hflip,
    /// Mirrored top-bottom.
    Vflip,
    /// Rotated by -5 and +5 degrees.
    Rotate,
    /// 10% darker and 10% brighter.
    Brightness,
    /// The 7 other flips and quarter turns (a part or surface seen in any orientation).
    Dihedral,
}

impl FromStr for Augmentation {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "hflip" => Augmentation::Hflip,
            "vflip" => Augmentation::Vflip,
            "rotate" => Augmentation::Rotate,
            "brightness" => Augmentation::Brightness,
            "dihedral" => Augmentation::Dihedral,
            _ => bail!("unknown augmentation {s:?} (hflip, vflip, rotate, brightness, dihedral)"),
        })
    }
}

/// MAEDAY's statistics on the enrollment frames (valid for this model, schedule and input
/// standardisation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaedayStats {
    pub model_sha256: String,
    pub schedule: String,
    /// The manifest's input standardisation the statistics were taken with (it changes
    /// MAEDAY's maps as much as the graph does). Absent in banks from before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standardise: Option<Standardise>,
    pub norm: Normalisation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShotRecord {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// `shots/NN.png` inside the bank folder (none for banks kept in memory).
    pub file: Option<String>,
    pub sha256: Option<String>,
}

/// `bank.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankMeta {
    pub format: u32,
    pub created_unix_ms: u64,
    pub extractor: String,
    pub extractor_sha256: String,
    /// The image score rule its thresholds were calibrated under (the extractor's
    /// [`crate::bank::features::ExtractorManifest::image_score_rule`]); banks from before
    /// it was recorded have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_score: Option<String>,
    pub dim: usize,
    pub rows: usize,
    /// Patch rows before the coreset.
    pub rows_before_coreset: usize,
    pub features_sha256: String,
    pub seed: u64,
    pub coreset_fraction: f64,
    pub projection_dim: usize,
    pub augment: Vec<Augmentation>,
    pub fit: String,
    /// How the statistics' good maps were made: `leave-one-out` or `zoomed-view`.
    pub held_out: String,
    pub bank_norm: Normalisation,
    pub weights: Weights,
    pub maeday: MaedayStats,
    pub thresholds: BankThresholds,
    pub shots: Vec<ShotRecord>,
    /// Few-shot MAEDAY's per-pixel statistics (banks from before them have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maeday_pixel: Option<MaedayPixelMeta>,
}

/// A memory bank with its meta, in memory; `dir` is where it was loaded from or saved to.
#[derive(Debug, Clone)]
pub struct StoredBank {
    pub dir: PathBuf,
    pub meta: BankMeta,
    pub bank: Arc<MemoryBank>,
    /// The statistics `meta.maeday_pixel` describes.
    pub pixel: Option<Arc<PixelNorm>>,
}

pub fn features_sha(f: &Features) -> String {
    let mut h = Sha256::new();
    for v in &f.data {
        h.update(v.to_le_bytes());
    }
    hex::encode(h.finalize())
}

impl StoredBank {
    /// Read and check a bank folder.
    pub fn load(dir: &Path) -> Result<StoredBank> {
        let path = dir.join("bank.toml");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read memory bank {}", path.display()))?;
        let invalid = || format!("invalid {}", path.display());
        let tree: toml::Value = toml::from_str(&text).with_context(invalid)?;
        // Every number in bank.toml is a statistic, a weight or a threshold: a NaN
        // threshold would never flag anything, silently.
        if let Some(key) = first_non_finite(&tree, "") {
            bail!(
                "{}: {key} is not a finite number: the bank is corrupt, enroll again",
                path.display()
            );
        }
        let meta: BankMeta = tree.try_into().with_context(invalid)?;
        ensure!(
            meta.format == BANK_FORMAT,
            "{}: bank format {} (this runtime reads {BANK_FORMAT})",
            path.display(),
            meta.format
        );
        let fpath = dir.join(FEATURES_FILE);
        let bytes = fs::read(&fpath).with_context(|| format!("cannot read {}", fpath.display()))?;
        ensure!(
            bytes.len() == meta.rows * meta.dim * 4,
            "{} holds {} bytes, the bank says {} rows of {} features: truncated or foreign",
            fpath.display(),
            bytes.len(),
            meta.rows,
            meta.dim
        );
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let features = Features::new(meta.dim, data)?;
        let sha = features_sha(&features);
        ensure!(
            sha == meta.features_sha256,
            "{} has sha256 {sha}, bank.toml says {}: the bank is corrupt",
            fpath.display(),
            meta.features_sha256
        );
        let pixel = match &meta.maeday_pixel {
            Some(p) => Some(Arc::new(pixel_file::read(dir, p)?)),
            None => None,
        };
        Ok(StoredBank {
            dir: dir.to_path_buf(),
            meta,
            bank: Arc::new(MemoryBank::new(features)?),
            pixel,
        })
    }

    /// Write the bank (and its good frames) to `dir`, replacing what is there: built in a
    /// temporary folder beside it, then renamed into place.
    pub fn save(&mut self, dir: &Path, shots: &[Shot]) -> Result<()> {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bank".into());
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(tmp.join("shots"))
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut meta = self.meta.clone();
        ensure!(
            shots.len() == meta.shots.len(),
            "{} good frames for a bank made from {}",
            shots.len(),
            meta.shots.len()
        );
        for (i, (shot, rec)) in shots.iter().zip(&mut meta.shots).enumerate() {
            let file = format!("shots/{i:02}.png");
            let mut png = Vec::new();
            shot.image
                .to_rgb8()
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .context("cannot encode a good frame")?;
            crate::durable::write_synced(&tmp.join(&file), &png)?;
            rec.sha256 = Some(crate::durable::sha256_hex(&png));
            rec.file = Some(file);
        }
        let mut bytes = Vec::with_capacity(self.bank.features().data.len() * 4);
        for v in &self.bank.features().data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        crate::durable::write_synced(&tmp.join(FEATURES_FILE), &bytes)?;
        if let Some(p) = &self.pixel {
            crate::durable::write_synced(
                &tmp.join(pixel_file::PIXEL_FILE),
                &pixel_file::encode(p),
            )?;
        }
        crate::durable::write_synced(&tmp.join("bank.toml"), toml::to_string(&meta)?.as_bytes())?;
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        let _ = fs::remove_dir_all(&old);
        if dir.exists() {
            fs::rename(dir, &old).with_context(|| format!("cannot replace {}", dir.display()))?;
        }
        fs::rename(&tmp, dir).with_context(|| format!("cannot write {}", dir.display()))?;
        let _ = fs::remove_dir_all(&old);
        crate::durable::sync_dir(parent);
        self.meta = meta;
        self.dir = dir.to_path_buf();
        Ok(())
    }

    /// Refuse a bank made with another extractor: its features mean something else.
    pub fn check_extractor(&self, extractor: &FeatureExtractor) -> Result<()> {
        let want = &extractor.manifest.graph_sha256;
        ensure!(
            &self.meta.extractor_sha256 == want,
            "memory bank {} was built with extractor {} ({}), this runtime has {} ({want}): \
             enroll again",
            self.dir.display(),
            self.meta.extractor,
            self.meta.extractor_sha256,
            extractor.manifest.name
        );
        // The thresholds hold only under the image score rule they were calibrated with.
        // Banks from before the rule was recorded: euclidean extractors (Lite0) have only
        // ever used the maximum; a cosine one (DINOv2) used the top 1% until 2026-12-02.
        let rule = extractor.manifest.image_score_rule();
        let was = match &self.meta.image_score {
            Some(was) => was.clone(),
            None if extractor.manifest.distance == Distance::Euclidean => "max".into(),
            None => "not recorded".into(),
        };
        ensure!(
            was == rule,
            "memory bank {} was calibrated with image score {was:?}, extractor {} scores \
             images by {rule:?}: enroll again",
            self.dir.display(),
            extractor.manifest.name
        );
        Ok(())
    }

    /// Few-shot MAEDAY from this bank's statistics, when it has them.
    pub fn pixel_scorer(&self) -> Option<PixelScorer> {
        let (norm, meta) = (self.pixel.as_ref()?, self.meta.maeday_pixel.as_ref()?);
        Some(PixelScorer {
            norm: norm.clone(),
            z_norm: meta.z_norm,
            thresholds: meta.thresholds,
            ensemble_thresholds: meta.ensemble_thresholds,
            probe: meta.probe,
            good: meta.good.clone(),
            scene: meta.scene,
        })
    }

    pub fn scorer(&self) -> BankScorer {
        let name = if self.dir.as_os_str().is_empty() {
            format!("bank{}", self.meta.seed)
        } else {
            self.dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "bank".into())
        };
        BankScorer {
            name,
            bank: self.bank.clone(),
            norm: self.meta.bank_norm,
        }
    }
}
