//! Enrollment: a few good frames -> a memory bank on disk, with what scoring needs.
//!
//! 1. Every good frame (and, optionally, flipped / slightly rotated / brightened copies of
//!    it) is placed like any frame and cut into windows; the extractor turns each window
//!    into a 28 x 28 grid of patch features.
//! 2. Greedy coreset selection (seeded random projection) keeps a fraction of the rows.
//! 3. Statistics for standardising the maps come from maps of good frames the bank has
//!    not memorised: with K >= 2 frames each frame is scored against a bank of the others
//!    (leave one out); with one frame, a 5% zoom of it and its brightness (x0.9, x1.1) and
//!    ±5 degree rotated views are scored against the bank (a single view made thresholds
//!    that most new good frames crossed). MAEDAY's maps of the same views give its
//!    statistics.
//! 4. Thresholds for the bank alone and for both ensembles (zero-shot or few-shot MAEDAY
//!    plus the bank) are calibrated on those maps.
//! 5. Few-shot MAEDAY's per-pixel statistics come from the good frames' MAEDAY maps
//!    ([`pixel`]); a synthetic defect pasted into the held-out views measures how well it
//!    and the bank find it ([`probe`]: the fusion weights).
//!
//! The bank is stored by [`crate::bank::store`]; [`augment`] makes the extra views;
//! [`request`] holds what an enrollment asked for over MQTT carries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use image::DynamicImage;

use crate::bank::features::FeatureExtractor;
use crate::bank::memory::{coreset, Features, MemoryBank};
use crate::bank::scoring::BankThresholds;
use crate::bank::store::{
    features_sha, Augmentation, BankMeta, MaedayStats, Shot, ShotRecord, StoredBank, BANK_FORMAT,
};
use crate::detect::calibration::{calibrate, CalibrationRule};
use crate::detect::detector::Detector;
use crate::detect::eq1::AnomalyMap;
use crate::detect::fuse::{self, Normalisation, Weights};
use crate::detect::preprocess::load_image;
use crate::eval::dataset::list_images;
use crate::model::manifest::Thresholds;

pub mod augment;
pub mod good;
pub mod pixel;
pub mod probe;
pub mod request;

/// Below this a frame cannot hold a meaningful patch grid.
pub const MIN_SIDE: u32 = 32;

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

fn check_settings(s: &EnrollSettings) -> Result<()> {
    ensure!(
        s.coreset_fraction > 0.0 && s.coreset_fraction <= 1.0,
        "coreset fraction must be in (0, 1], got {}",
        s.coreset_fraction
    );
    augment::check(&s.augment)
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
    check_settings(s)?;
    use_extractor(detector, &extractor)?;
    let dim = extractor.manifest.feature_dim;
    let per_shot = shot_features(detector, shots, &s.augment, dim)?;
    let all = concat(&per_shot, dim);
    let chosen = coreset(&all, s.coreset_fraction, s.projection_dim, s.seed);
    let bank = Arc::new(MemoryBank::new(all.select(&chosen))?);
    let held_out = held_out_maps(detector, shots, &per_shot, &bank, dim)?;
    let leave_one_out = held_out.how == "leave-one-out";
    let px = pixel::pixel_stats(detector, shots, &held_out.maps, leave_one_out, &s.rule)?;
    let mut pixel_meta = px.meta;
    let probes = probe::probe_views(detector, shots, &per_shot, &bank, dim, s.seed)?;
    let extra = good::one_frame_views(detector, shots, &px.norm, &bank)?;
    let (maps, zs) = calibration_views(&held_out.maps, &px.held_z, extra);
    let top = extractor.manifest.image_score_top;
    let stats = statistics(maps.clone(), (&zs, pixel_meta.z_norm), s, top)?;
    pixel_meta.ensemble_thresholds = Some(stats.ensemble_norm);
    pixel_meta.probe = Some(probe::probe_weights(
        &probes,
        &px.own,
        pixel_meta.z_norm,
        stats.bank_norm,
    )?);
    let norms = good::PartNorms {
        maeday: stats.maeday_norm,
        maeday_norm: pixel_meta.z_norm,
        bank: stats.bank_norm,
    };
    pixel_meta.good = Some(good::good_scores(&maps, &zs, leave_one_out, &norms));
    let meta = BankMeta {
        format: BANK_FORMAT,
        created_unix_ms: unix_ms_now(),
        extractor: extractor.manifest.name.clone(),
        extractor_sha256: extractor.manifest.graph_sha256.clone(),
        image_score: Some(extractor.manifest.image_score_rule()),
        dim,
        rows: bank.len(),
        rows_before_coreset: all.rows(),
        features_sha256: features_sha(bank.features()),
        seed: s.seed,
        coreset_fraction: s.coreset_fraction,
        projection_dim: s.projection_dim,
        augment: s.augment.clone(),
        fit: detector.fit().to_string(),
        held_out: if leave_one_out {
            held_out.how
        } else {
            ONE_FRAME_VIEWS
        }
        .into(),
        bank_norm: stats.bank_norm,
        weights: s.weights,
        maeday: MaedayStats {
            model_sha256: detector.model.manifest.graph_sha256.clone(),
            schedule: detector.schedule.id(),
            standardise: detector.model.manifest.input.standardise,
            norm: stats.maeday_norm,
        },
        thresholds: stats.thresholds,
        shots: shots.iter().map(shot_record).collect(),
        maeday_pixel: Some(pixel_meta),
    };
    Ok(StoredBank {
        dir: PathBuf::new(),
        meta,
        bank,
        pixel: Some(Arc::new(px.norm)),
    })
}

/// Give the detector `extractor` unless it already has it.
fn use_extractor(detector: &mut Detector, extractor: &Arc<FeatureExtractor>) -> Result<()> {
    let sha = &extractor.manifest.graph_sha256;
    if detector.extractor().map(|e| &e.manifest.graph_sha256) != Some(sha) {
        detector.set_extractor(extractor.clone())?;
    }
    Ok(())
}

/// Every view's window features, grouped per good frame.
fn shot_features(
    detector: &mut Detector,
    shots: &[Shot],
    augment: &[Augmentation],
    dim: usize,
) -> Result<Vec<Features>> {
    let mut per_shot = Vec::with_capacity(shots.len());
    for shot in shots {
        let rgb = shot.image.to_rgb8();
        let mut views = vec![rgb.clone()];
        for a in augment {
            views.extend(augment::views(*a, &rgb));
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
    Ok(per_shot)
}

/// Raw maps (MAEDAY, bank) of good frames the bank has not memorised, and how they were
/// held out.
struct HeldOut {
    maps: Vec<Vec<AnomalyMap>>,
    /// `leave-one-out` (K >= 2 frames: each against a bank of the others) or `zoomed-view`
    /// (one frame: a 5% zoom of it against the bank).
    how: &'static str,
}

fn held_out_maps(
    detector: &mut Detector,
    shots: &[Shot],
    per_shot: &[Features],
    bank: &Arc<MemoryBank>,
    dim: usize,
) -> Result<HeldOut> {
    let leave_one_out = shots.len() >= 2;
    let mut maps = Vec::with_capacity(shots.len());
    for (i, shot) in shots.iter().enumerate() {
        let (view, against) = if leave_one_out {
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
                DynamicImage::ImageRgb8(augment::zoom(&shot.image.to_rgb8())),
                bank.clone(),
            )
        };
        let (raw, _, _) = detector.raw_maps(&view, true, &[against])?;
        maps.push(raw);
    }
    let how = if leave_one_out {
        "leave-one-out"
    } else {
        "zoomed-view"
    };
    Ok(HeldOut { maps, how })
}

/// `held_out` of a bank enrolled from one frame: its zoomed view, then its brightness and
/// rotation views ([`good::one_frame_views`]).
const ONE_FRAME_VIEWS: &str = "zoomed-brightness-rotated-views";

/// The held-out views the standardisation and thresholds are calibrated on: every frame's
/// (raw maps; few-shot MAEDAY map), then a single frame's extra views. One view of one
/// frame gave thresholds that most new good frames crossed (`models/README.md`).
/// The same views give the held-out good scores ([`good::good_scores`]).
fn calibration_views(
    held: &[Vec<AnomalyMap>],
    held_z: &[AnomalyMap],
    extra: Vec<good::ExtraView>,
) -> (Vec<Vec<AnomalyMap>>, Vec<AnomalyMap>) {
    let mut maps = held.to_vec();
    let mut zs = held_z.to_vec();
    for v in extra {
        maps.push(v.raw);
        zs.push(v.z);
    }
    (maps, zs)
}

/// What scoring needs from the held-out good maps.
struct Statistics {
    maeday_norm: Normalisation,
    bank_norm: Normalisation,
    thresholds: BankThresholds,
    /// The `ensemble-norm` scorer's (few-shot MAEDAY + bank).
    ensemble_norm: Thresholds,
}

/// Standardise MAEDAY's and the bank's held-out maps by their own pixels, then calibrate
/// the bank alone (image score: the extractor's, `bank_top`) and both ensembles (the
/// maximum) on maps fused exactly as serving fuses and scores them. `few_shot` holds each
/// held-out view's few-shot MAEDAY map (statistics that did not see it) and their
/// standardisation.
fn statistics(
    mut maps: Vec<Vec<AnomalyMap>>,
    few_shot: (&[AnomalyMap], Normalisation),
    s: &EnrollSettings,
    bank_top: Option<f64>,
) -> Result<Statistics> {
    let pixels = |k: usize| -> Vec<f32> {
        maps.iter()
            .flat_map(|raw| raw[k].data.iter().copied())
            .collect()
    };
    let maeday_norm = Normalisation::of(&pixels(0));
    let bank_norm = Normalisation::of(&pixels(1));
    let (held_z, z_norm) = few_shot;
    ensure!(
        held_z.len() == maps.len(),
        "one few-shot map per held-out view"
    );
    for (raw, z) in maps.iter_mut().zip(held_z) {
        fuse::standardise(&mut raw[0].data, maeday_norm);
        fuse::standardise(&mut raw[1].data, bank_norm);
        let mut z = z.clone();
        fuse::standardise(&mut z.data, z_norm);
        raw.push(z);
    }
    let w = s.weights;
    // `maeday`: the index of the MAEDAY map summed with the bank's (0 zero-shot, 2
    // few-shot), or none for the bank alone.
    let calibrated = |maeday: Option<usize>| -> Result<Thresholds> {
        let (mut scores, mut pixels) = (Vec::new(), Vec::new());
        for raw in &maps {
            let bank = (&raw[1].data[..], w.bank);
            let fused = match maeday {
                Some(k) => fuse::weighted_sum([(&raw[k].data[..], w.maeday), bank]),
                None => fuse::weighted_sum([bank]),
            };
            let top = if maeday.is_some() { None } else { bank_top };
            scores.push(crate::bank::scoring::image_score(&fused, top));
            pixels.extend(fused);
        }
        Ok(calibrate(&mut scores, &mut pixels, &s.rule)?.thresholds)
    };
    Ok(Statistics {
        maeday_norm,
        bank_norm,
        thresholds: BankThresholds {
            bank: calibrated(None)?,
            ensemble: calibrated(Some(0))?,
        },
        ensemble_norm: calibrated(Some(2))?,
    })
}

fn shot_record(s: &Shot) -> ShotRecord {
    ShotRecord {
        name: s.name.clone(),
        width: s.image.width(),
        height: s.image.height(),
        file: None,
        sha256: None,
    }
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

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
}
