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

/// `held[i]` holds MAEDAY's and the bank's raw maps of shot `i`'s held-out view (the frame
/// itself with K >= 2, else its zoomed view); `held_z` MAEDAY's map of each of those views
/// normalised by statistics that did not see it ([`crate::enroll::pixel::PixelStats`]);
/// `norm` the statistics of all frames; `bank` the enrolled bank.
pub fn good_scores(
    detector: &mut Detector,
    shots: &[Shot],
    held: &[Vec<AnomalyMap>],
    held_z: &[AnomalyMap],
    norm: &PixelNorm,
    bank: &Arc<MemoryBank>,
    n: &PartNorms,
) -> Result<GoodScores> {
    let leave_one_out = shots.len() >= 2;
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
    let push = |g: &mut GoodScores, maeday: &AnomalyMap, z: &AnomalyMap, b: &AnomalyMap| {
        g.maeday.push(n.maeday.apply(maeday.max()));
        g.maeday_norm.push(n.maeday_norm.apply(z.max()));
        g.bank.push(n.bank.apply(b.max()));
    };
    for (raw, z) in held.iter().zip(held_z) {
        push(&mut g, &raw[0], z, &raw[1]);
    }
    if !leave_one_out {
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
                    push(&mut g, &raw[0], &z, &raw[1]);
                }
            }
        }
    }
    Ok(g)
}
