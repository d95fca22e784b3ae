//! Enrollment: a few good frames -> a memory bank on disk, with what scoring needs.
//!
//! 1. Every good frame (and, optionally, flipped / slightly rotated / brightened copies of
//!    it) is placed like any frame and cut into windows; the extractor turns each window
//!    into a 28 x 28 grid of patch features.
//! 2. Greedy coreset selection (seeded random projection) keeps a fraction of the rows.
//! 3. Statistics for standardising the maps come from maps of good frames the bank has
//!    not memorised: with K >= 2 frames each frame is scored against a bank of the others
//!    (leave one out); with one frame, a 5% zoom of it is scored against the bank. MAEDAY's
//!    maps of the same views give its statistics.
//! 4. Thresholds for the bank alone and for the ensemble are calibrated on those maps.
//!
//! On disk, a bank is a folder: `bank.toml` (the [`BankMeta`]), `features.f32` (rows of
//! little-endian f32, their sha256 in the meta) and `shots/` (the good frames, PNG, so a
//! bank can be audited or rebuilt). [`StoredBank::save`] writes a temporary folder and
//! renames it into place; [`StoredBank::load`] refuses a bank whose features do not match
//! their hash or whose extractor differs from the one in use.

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bank::features::FeatureExtractor;
use crate::bank::memory::{coreset, Features, MemoryBank};
use crate::detect::calibration::{calibrate, CalibrationRule};
use crate::detect::detector::Detector;
use crate::detect::fuse::{BankScorer, BankThresholds, Normalisation, Weights};
use crate::detect::preprocess::load_image;
use crate::eval::dataset::list_images;
use crate::model::manifest::{Standardise, Thresholds};

pub const BANK_FORMAT: u32 = 1;
/// Below this a frame cannot hold a meaningful patch grid.
pub const MIN_SIDE: u32 = 32;
const FEATURES_FILE: &str = "features.f32";

/// Extra views of each good frame added to the bank.
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
}

impl FromStr for Augmentation {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "hflip" => Augmentation::Hflip,
            "vflip" => Augmentation::Vflip,
            "rotate" => Augmentation::Rotate,
            "brightness" => Augmentation::Brightness,
            _ => bail!("unknown augmentation {s:?} (hflip, vflip, rotate, brightness)"),
        })
    }
}

impl Augmentation {
    fn views(self, img: &RgbImage) -> Vec<RgbImage> {
        match self {
            Augmentation::Hflip => vec![image::imageops::flip_horizontal(img)],
            Augmentation::Vflip => vec![image::imageops::flip_vertical(img)],
            Augmentation::Rotate => vec![rotate(img, -5.0), rotate(img, 5.0)],
            Augmentation::Brightness => {
                vec![scale_brightness(img, 0.9), scale_brightness(img, 1.1)]
            }
        }
    }
}

/// Rotation about the centre by `degrees`, bilinear, edges clamped (no black corners).
fn rotate(img: &RgbImage, degrees: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let (sin, cos) = degrees.to_radians().sin_cos();
    let px = |x: i64, y: i64| {
        img.get_pixel(
            x.clamp(0, w as i64 - 1) as u32,
            y.clamp(0, h as i64 - 1) as u32,
        )
    };
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        let sx = cos * dx + sin * dy + cx;
        let sy = -sin * dx + cos * dy + cy;
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let mut out = [0u8; 3];
        for (c, o) in out.iter_mut().enumerate() {
            let v = px(x0, y0)[c] as f32 * (1.0 - fx) * (1.0 - fy)
                + px(x0 + 1, y0)[c] as f32 * fx * (1.0 - fy)
                + px(x0, y0 + 1)[c] as f32 * (1.0 - fx) * fy
                + px(x0 + 1, y0 + 1)[c] as f32 * fx * fy;
            *o = v.round().clamp(0.0, 255.0) as u8;
        }
        image::Rgb(out)
    })
}

fn scale_brightness(img: &RgbImage, f: f32) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for c in &mut p.0 {
            *c = (*c as f32 * f).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// A 5% zoom into the centre: a view of a good frame that no bank row equals.
fn zoom(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let (zw, zh) = (
        ((w as f32 * 1.05).round() as u32).max(w + 1),
        ((h as f32 * 1.05).round() as u32).max(h + 1),
    );
    let big = image::imageops::resize(img, zw, zh, image::imageops::FilterType::Triangle);
    image::imageops::crop_imm(&big, (zw - w) / 2, (zh - h) / 2, w, h).to_image()
}

/// How a bank is built.
#[derive(Debug, Clone)]
pub struct EnrollSettings {
    /// Seeds the coreset's random projection and starting row.
    pub seed: u64,
    /// The fraction of patch rows the coreset keeps.
    pub coreset_fraction: f64,
    /// Coreset distances are measured after a random projection to this many features.
    pub projection_dim: usize,
    pub augment: Vec<Augmentation>,
    pub weights: Weights,
    pub rule: CalibrationRule,
}

impl Default for EnrollSettings {
    fn default() -> Self {
        EnrollSettings {
            seed: 0,
            coreset_fraction: 0.25,
            projection_dim: 128,
            augment: Vec::new(),
            weights: Weights::default(),
            rule: CalibrationRule::default(),
        }
    }
}

/// One good frame.
#[derive(Debug, Clone)]
pub struct Shot {
    /// Where it came from (a file name, or `camera/seq`).
    pub name: String,
    pub image: DynamicImage,
}

/// The good frames in `dir` (at most `limit`, in path order). Every file must decode: a
/// corrupt good frame is an error, not something to skip silently.
pub fn load_shots(dir: &Path, limit: Option<usize>) -> Result<Vec<Shot>> {
    let mut paths = list_images(dir)?;
    ensure!(
        !paths.is_empty(),
        "no images in {}: enrollment needs at least one good frame",
        dir.display()
    );
    if let Some(l) = limit {
        paths.truncate(l);
    }
    paths
        .iter()
        .map(|p| {
            Ok(Shot {
                name: p.display().to_string(),
                image: load_image(p).context("cannot use it as a good frame")?,
            })
        })
        .collect()
}

/// Refuse input no bank can be built from: no frames, frames too small for a patch grid,
/// or (with `expect`, a camera's frame size) frames of another size.
pub fn check_shots(shots: &[Shot], expect: Option<(u32, u32)>) -> Result<()> {
    ensure!(
        !shots.is_empty(),
        "no good frames: enrollment needs at least one"
    );
    for s in shots {
        let (w, h) = (s.image.width(), s.image.height());
        ensure!(
            w >= MIN_SIDE && h >= MIN_SIDE,
            "good frame {} is {w}x{h}: too small (at least {MIN_SIDE}x{MIN_SIDE})",
            s.name
        );
        if let Some((ew, eh)) = expect {
            ensure!(
                (w, h) == (ew, eh),
                "good frame {} is {w}x{h}, the camera's frames are {ew}x{eh}",
                s.name
            );
        }
    }
    Ok(())
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
}

/// A memory bank with its meta, in memory; `dir` is where it was loaded from or saved to.
#[derive(Debug, Clone)]
pub struct StoredBank {
    pub dir: PathBuf,
    pub meta: BankMeta,
    pub bank: Arc<MemoryBank>,
}

fn features_sha(f: &Features) -> String {
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
        let meta: BankMeta =
            toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
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
        Ok(StoredBank {
            dir: dir.to_path_buf(),
            meta,
            bank: Arc::new(MemoryBank::new(features)?),
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
        Ok(())
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

fn concat(parts: &[Features], dim: usize) -> Features {
    Features {
        dim,
        data: parts.iter().flat_map(|f| f.data.iter().copied()).collect(),
    }
}

/// Build a bank from good frames. `detector` places the frames (its fit) and gives
/// MAEDAY's maps for the ensemble statistics; it gets `extractor` if it has none.
pub fn enroll(
    detector: &mut Detector,
    extractor: Arc<FeatureExtractor>,
    shots: &[Shot],
    s: &EnrollSettings,
) -> Result<StoredBank> {
    check_shots(shots, None)?;
    ensure!(
        s.coreset_fraction > 0.0 && s.coreset_fraction <= 1.0,
        "coreset fraction must be in (0, 1], got {}",
        s.coreset_fraction
    );
    if detector
        .extractor()
        .map(|e| e.manifest.graph_sha256.clone())
        != Some(extractor.manifest.graph_sha256.clone())
    {
        detector.set_extractor(extractor.clone())?;
    }
    let dim = extractor.manifest.feature_dim;
    // Every view's window features, grouped per good frame.
    let mut per_shot = Vec::with_capacity(shots.len());
    for shot in shots {
        let rgb = shot.image.to_rgb8();
        let mut views = vec![rgb.clone()];
        for a in &s.augment {
            views.extend(a.views(&rgb));
        }
        let mut feats = Vec::new();
        for v in views {
            feats.extend(
                detector
                    .window_features(&DynamicImage::ImageRgb8(v))
                    .with_context(|| format!("good frame {}", shot.name))?,
            );
        }
        per_shot.push(concat(&feats, dim));
    }
    let all = concat(&per_shot, dim);
    let chosen = coreset(&all, s.coreset_fraction, s.projection_dim, s.seed);
    let bank = Arc::new(MemoryBank::new(all.select(&chosen))?);

    // Good maps the bank has not memorised, with MAEDAY's maps of the same views.
    let (mut maeday_px, mut bank_px) = (Vec::new(), Vec::new());
    let mut maps = Vec::with_capacity(shots.len());
    let held_out = if shots.len() >= 2 {
        "leave-one-out"
    } else {
        "zoomed-view"
    };
    for (i, shot) in shots.iter().enumerate() {
        let (view, against) = if shots.len() >= 2 {
            let others: Vec<Features> = per_shot
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, f)| f.clone())
                .collect();
            (
                shot.image.clone(),
                Arc::new(MemoryBank::new(concat(&others, dim))?),
            )
        } else {
            (
                DynamicImage::ImageRgb8(zoom(&shot.image.to_rgb8())),
                bank.clone(),
            )
        };
        let (raw, _, _) = detector.raw_maps(&view, true, &[against])?;
        maeday_px.extend_from_slice(&raw[0].data);
        bank_px.extend_from_slice(&raw[1].data);
        maps.push(raw);
    }
    let maeday_norm = Normalisation::of(&maeday_px);
    let bank_norm = Normalisation::of(&bank_px);
    let w = s.weights;
    let calibrated = |fuse: &dyn Fn(f32, f32) -> f32| -> Result<Thresholds> {
        let (mut scores, mut pixels) = (Vec::new(), Vec::new());
        for raw in &maps {
            let fused: Vec<f32> = raw[0]
                .data
                .iter()
                .zip(&raw[1].data)
                .map(|(m, b)| fuse(maeday_norm.apply(*m), bank_norm.apply(*b)))
                .collect();
            scores.push(fused.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            pixels.extend(fused);
        }
        Ok(calibrate(&mut scores, &mut pixels, &s.rule)?.thresholds)
    };
    let thresholds = BankThresholds {
        bank: calibrated(&|_, b| w.bank * b)?,
        ensemble: calibrated(&|m, b| w.maeday * m + w.bank * b)?,
    };
    let created_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let meta = BankMeta {
        format: BANK_FORMAT,
        created_unix_ms,
        extractor: extractor.manifest.name.clone(),
        extractor_sha256: extractor.manifest.graph_sha256.clone(),
        dim,
        rows: bank.len(),
        rows_before_coreset: all.rows(),
        features_sha256: features_sha(bank.features()),
        seed: s.seed,
        coreset_fraction: s.coreset_fraction,
        projection_dim: s.projection_dim,
        augment: s.augment.clone(),
        fit: detector.fit().to_string(),
        held_out: held_out.into(),
        bank_norm,
        weights: w,
        maeday: MaedayStats {
            model_sha256: detector.model.manifest.graph_sha256.clone(),
            schedule: detector.schedule.id(),
            standardise: detector.model.manifest.input.standardise,
            norm: maeday_norm,
        },
        thresholds,
        shots: shots
            .iter()
            .map(|s| ShotRecord {
                name: s.name.clone(),
                width: s.image.width(),
                height: s.image.height(),
                file: None,
                sha256: None,
            })
            .collect(),
    };
    Ok(StoredBank {
        dir: PathBuf::new(),
        meta,
        bank,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shot(w: u32, h: u32) -> Shot {
        Shot {
            name: format!("{w}x{h}"),
            image: DynamicImage::ImageRgb8(RgbImage::new(w, h)),
        }
    }

    #[test]
    fn unusable_shots_are_refused_with_the_reason() {
        let e = check_shots(&[], None).unwrap_err().to_string();
        assert!(e.contains("no good frames"), "{e}");
        let e = check_shots(&[shot(64, 64), shot(20, 64)], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("20x64") && e.contains("too small"), "{e}");
        let e = check_shots(&[shot(64, 48)], Some((64, 64)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("camera's frames are 64x64"), "{e}");
        assert!(check_shots(&[shot(64, 64)], Some((64, 64))).is_ok());
    }

    #[test]
    fn views_keep_the_size_and_change_the_pixels() {
        let img = RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, 77])
        });
        for a in [
            Augmentation::Hflip,
            Augmentation::Vflip,
            Augmentation::Rotate,
            Augmentation::Brightness,
        ] {
            for v in a.views(&img) {
                assert_eq!(v.dimensions(), (40, 30));
                assert_ne!(v, img, "{a:?}");
            }
        }
        assert_eq!(rotate(&img, 0.0), img);
        assert_eq!(zoom(&img).dimensions(), (40, 30));
        assert!("mirror".parse::<Augmentation>().is_err());
    }
}
