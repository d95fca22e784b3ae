//! Every scorer's image score of held-out good views ([`GoodScores`], the fusion rules of
//! [`crate::detect::good_stats`]), in the units the fusion sees: the max of the map as
//! serving standardises it. With K >= 2 frames these are the leave-one-out views the
//! statistics already use (each frame against a bank of the others; few-shot MAEDAY
//! normalised by the statistics of the others). One frame has no other frame, so its
//! held-out views are its 5% zoomed view (the one the statistics use) and the enrollment's
//! brightness (x0.9, x1.1) and rotation (±5 degrees) views, scored against the bank and the
//! statistics of the frame itself: views a camera could plausibly see. Flips are left out:
//! a fixed camera never sees its scene mirrored, and per-pixel statistics would call every
//! mirrored frame anomalous.

use std::sync::Arc;

use anyhow::Result;
use image::DynamicImage;

use crate::bank::memory::MemoryBank;
use crate::bank::store::{Augmentation, Shot};
use crate::detect::detector::Detector;
use crate::detect::eq1::AnomalyMap;
use crate::detect::fuse::Normalisation;
use crate::detect::good_stats::GoodScores;
use crate::detect::pixel_norm::PixelNorm;
use crate::enroll::augment;

/// The standardisations serving applies to each scorer's map before fusing.
pub struct PartNorms {
    pub maeday: Normalisation,
    pub maeday_norm: Normalisation,
    pub bank: Normalisation,
}

/// One held-out view of a single good frame: MAEDAY's and the bank's raw maps, and
/// MAEDAY's map normalised by the frame's per-pixel statistics.
pub struct ExtraView {
    pub raw: Vec<AnomalyMap>,
    pub z: AnomalyMap,
}

/// With one good frame, the views besides its zoomed one that a camera could plausibly
/// see: the enrollment's brightness (x0.9, x1.1) and rotation (±5 degrees) views, scored
/// against the bank and the statistics of the frame itself (`norm`). Empty with K >= 2
/// frames (leave-one-out needs no extra views).
pub fn one_frame_views(
    detector: &mut Detector,
    shots: &[Shot],
    norm: &PixelNorm,
    bank: &Arc<MemoryBank>,
) -> Result<Vec<ExtraView>> {
    let mut out = Vec::new();
    if shots.len() >= 2 {
        return Ok(out);
    }
    for shot in shots {
        let rgb = shot.image.to_rgb8();
        for a in [Augmentation::Brightness, Augmentation::Rotate] {
            for v in augment::views(a, &rgb) {
                let (raw, _, _) = detector.raw_maps(
                    &DynamicImage::ImageRgb8(v),
                    true,
                    std::slice::from_ref(bank),
                )?;
                let mut z = raw[0].clone();
                norm.apply(&mut z);
                out.push(ExtraView { raw, z });
            }
        }
    }
    Ok(out)
}

/// `held[i]` holds MAEDAY's and the bank's raw maps of held-out view `i` and `held_z[i]`
/// MAEDAY's map of it normalised by statistics that did not see it: with K >= 2 frames
/// (`leave_one_out`) each frame itself, with one frame its zoomed view and then its
/// [`one_frame_views`] (the views calibration uses: `enroll::calibration_views`).
pub fn good_scores(
    held: &[Vec<AnomalyMap>],
    held_z: &[AnomalyMap],
    leave_one_out: bool,
    n: &PartNorms,
) -> GoodScores {
    let mut g = GoodScores {
        how: if leave_one_out {
            "leave-one-out"
        } else {
            "views"
        }
        .into(),
        maeday: Vec::new(),
        maeday_norm: Vec::new(),
        bank: Vec::new(),
    };
    for (raw, z) in held.iter().zip(held_z) {
        g.maeday.push(n.maeday.apply(raw[0].max()));
        g.maeday_norm.push(n.maeday_norm.apply(z.max()));
        g.bank.push(n.bank.apply(raw[1].max()));
    }
    g
}
