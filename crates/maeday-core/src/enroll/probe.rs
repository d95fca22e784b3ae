//! Which scorer to trust, decided from good frames only (issue 20, part 3). A sum or a
//! maximum of standardised maps lands between its members when one of them is weak on a
//! surface (MAEDAY on a part's edges, the bank on a texture); nothing in a good frame says
//! which one is weak, unless the frame is given a defect. So each held-out view of a good
//! frame (the views the statistics use: the frame against a bank of the others, or the 5%
//! zoomed view of a single frame) gets a synthetic one: a square of the same view (15% of
//! its short side) from elsewhere, mirrored both ways, pasted at a seeded place (CutPaste,
//! Li et al. 2021). Each scorer's standardised map then separates the pasted square from
//! the rest with some pixel AUROC, and [`ProbeWeights`] keeps those AUROCs: the fusion gives
//! each scorer a weight by how far above chance it did.

use std::sync::Arc;

use anyhow::Result;
use image::{DynamicImage, RgbImage};

use crate::bank::memory::{Features, MemoryBank};
use crate::bank::store::Shot;
use crate::detect::detector::Detector;
use crate::detect::eq1::AnomalyMap;
use crate::detect::fuse::{self, Normalisation, ProbeWeights};
use crate::detect::pixel_norm::PixelNorm;
use crate::enroll::augment;
use crate::eval::roc::auroc;

/// One probe view: MAEDAY's and the bank's raw maps, and where the pasted square is.
pub struct ProbeView {
    pub maeday: AnomalyMap,
    pub bank: AnomalyMap,
    pub mask: Vec<bool>,
}

/// Raw maps of every shot's probe view (leave one out with K >= 2, else the zoomed view).
pub fn probe_views(
    detector: &mut Detector,
    shots: &[Shot],
    per_shot: &[Features],
    bank: &Arc<MemoryBank>,
    dim: usize,
    seed: u64,
) -> Result<Vec<ProbeView>> {
    let leave_one_out = shots.len() >= 2;
    let mut out = Vec::with_capacity(shots.len());
    for (i, shot) in shots.iter().enumerate() {
        let rgb = shot.image.to_rgb8();
        let (view, against) = if leave_one_out {
            let others: Vec<f32> = per_shot
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, f)| f.data.iter().copied())
                .collect();
            (rgb, Arc::new(MemoryBank::new(Features::new(dim, others)?)?))
        } else {
            (augment::zoom(&rgb), bank.clone())
        };
        let (pasted, rect) = cut_paste(&view, seed.wrapping_add(i as u64));
        let (mut raw, _, _) =
            detector.raw_maps(&DynamicImage::ImageRgb8(pasted), true, &[against])?;
        let bank_map = raw.pop().expect("the bank map");
        let maeday = raw.pop().expect("the MAEDAY map");
        let mask = rect_mask(rect, view.dimensions(), maeday.width, maeday.height);
        out.push(ProbeView {
            maeday,
            bank: bank_map,
            mask,
        });
    }
    Ok(out)
}

/// Each scorer's pixel AUROC on the probe views, its maps standardised as serving does
/// (few-shot MAEDAY normalised by the statistics of the other frames, or of the single one).
pub fn probe_weights(
    views: &[ProbeView],
    own: &[AnomalyMap],
    z_norm: Normalisation,
    bank_norm: Normalisation,
) -> Result<ProbeWeights> {
    let (mut zs, mut bs, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for (i, v) in views.iter().enumerate() {
        let others: Vec<&AnomalyMap> = if own.len() >= 2 {
            own.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, m)| m)
                .collect()
        } else {
            own.iter().collect()
        };
        let mut z = v.maeday.clone();
        PixelNorm::fit(&others)?.apply(&mut z);
        fuse::standardise(&mut z.data, z_norm);
        let mut b = v.bank.clone();
        fuse::standardise(&mut b.data, bank_norm);
        zs.extend(z.data);
        bs.extend(b.data);
        labels.extend(&v.mask);
    }
    Ok(ProbeWeights {
        auroc_maeday_norm: auroc(&zs, &labels).unwrap_or(0.5) as f32,
        auroc_bank: auroc(&bs, &labels).unwrap_or(0.5) as f32,
    })
}

/// SplitMix64: the probe's placements, seeded.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A copy of `view` with a mirrored square of itself pasted elsewhere; the square's rect
/// `(x, y, side)` in the view.
fn cut_paste(view: &RgbImage, seed: u64) -> (RgbImage, (u32, u32, u32)) {
    let (w, h) = view.dimensions();
    let side = ((w.min(h) as f32 * 0.15) as u32).max(4).min(w.min(h) / 2);
    let mut state = seed ^ 0x5EED_0FC0_FFEE;
    let mut pick = |n: u32| (splitmix(&mut state) % u64::from(n.max(1))) as u32;
    let (sx, sy) = (pick(w - side + 1), pick(h - side + 1));
    let (mut dx, mut dy) = (pick(w - side + 1), pick(h - side + 1));
    for _ in 0..8 {
        if dx.abs_diff(sx) >= side || dy.abs_diff(sy) >= side {
            break;
        }
        (dx, dy) = (pick(w - side + 1), pick(h - side + 1));
    }
    let patch = image::imageops::crop_imm(view, sx, sy, side, side).to_image();
    let patch = image::imageops::rotate180(&patch);
    let mut out = view.clone();
    image::imageops::replace(&mut out, &patch, i64::from(dx), i64::from(dy));
    (out, (dx, dy, side))
}

/// The rect as a mask over a `mw x mh` map that covers the whole `(w, h)` view.
fn rect_mask((x, y, side): (u32, u32, u32), (w, h): (u32, u32), mw: usize, mh: usize) -> Vec<bool> {
    let mut mask = Vec::with_capacity(mw * mh);
    for my in 0..mh {
        let fy = ((my as f64 + 0.5) * f64::from(h) / mh as f64) as u32;
        for mx in 0..mw {
            let fx = ((mx as f64 + 0.5) * f64::from(w) / mw as f64) as u32;
            mask.push(fx >= x && fx < x + side && fy >= y && fy < y + side);
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_favour_the_scorer_that_finds_the_pasted_square() {
        let p = ProbeWeights {
            auroc_maeday_norm: 0.9,
            auroc_bank: 0.7,
        };
        let (m, b) = p.weights();
        assert!((m - 0.8).abs() < 1e-6 && (b - 0.2).abs() < 1e-6, "{m} {b}");
        let chance = ProbeWeights {
            auroc_maeday_norm: 0.4,
            auroc_bank: 0.5,
        };
        assert_eq!(chance.weights(), (0.5, 0.5));
        let img = RgbImage::from_fn(100, 60, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let (pasted, (x, y, side)) = cut_paste(&img, 1);
        assert_eq!(side, 9);
        assert_ne!(pasted, img);
        let mask = rect_mask((x, y, side), (100, 60), 100, 60);
        assert_eq!(mask.iter().filter(|m| **m).count(), 81);
        for (i, px) in pasted.pixels().enumerate() {
            assert_eq!(mask[i], px != img.get_pixel(i as u32 % 100, i as u32 / 100));
        }
    }
}
