//! Enrollment's few-shot MAEDAY statistics ([`crate::detect::pixel_norm`]), fitted on the
//! good frames' own MAEDAY maps (the MAE has not seen them, so a frame's own map is an honest
//! sample of a good frame's error). The standardisation for fusion and the thresholds come
//! from maps the statistics have not seen: with K >= 2 frames each frame's map normalised by
//! the statistics of the others (leave one out); with one frame the map of its 5% zoomed view
//! (the view the bank's statistics use), which a fixed camera never produces, so that one
//! errs on the side of a higher threshold. With K >= 2 frames the statistics are per pixel
//! or pooled as [`scene_check`] decides from those held-out maps; one frame cannot tell
//! whether the scene moves and keeps them per pixel.

use anyhow::Result;

use crate::bank::pixel_file::{meta_for, MaedayPixelMeta};
use crate::bank::store::Shot;
use crate::detect::calibration::{calibrate, CalibrationRule};
use crate::detect::detector::Detector;
use crate::detect::eq1::AnomalyMap;
use crate::detect::fuse::Normalisation;
use crate::detect::pixel_norm::{scene_check, PixelNorm, SceneCheck};

/// What enrollment learns of few-shot MAEDAY, and the maps it learned it from.
pub struct PixelStats {
    /// The statistics of all good frames (what serving applies).
    pub norm: PixelNorm,
    pub meta: MaedayPixelMeta,
    /// The good frames' own MAEDAY maps.
    pub own: Vec<AnomalyMap>,
    /// Each held-out view's map normalised by statistics that did not see it.
    pub held_z: Vec<AnomalyMap>,
    /// Per pixel or pooled, and why (K >= 2 frames).
    pub scene: Option<SceneCheck>,
}

/// `held[i][0]` is MAEDAY's raw map of the held-out view of shot `i` (the frame itself when
/// `leave_one_out`, else its zoomed view).
pub fn pixel_stats(
    detector: &mut Detector,
    shots: &[Shot],
    held: &[Vec<AnomalyMap>],
    leave_one_out: bool,
    rule: &CalibrationRule,
) -> Result<PixelStats> {
    let own: Vec<AnomalyMap> = if leave_one_out {
        held.iter().map(|raw| raw[0].clone()).collect()
    } else {
        let mut out = Vec::with_capacity(shots.len());
        for s in shots {
            out.push(detector.raw_maps(&s.image, true, &[])?.0.remove(0));
        }
        out
    };
    let own_refs: Vec<&AnomalyMap> = own.iter().collect();
    // Leave one out: each frame's map (`own` is `held[i][0]`) normalised by the others
    // under the model the scene check chose; one frame: its zoomed view by its statistics.
    let (scene, norm, z_maps) = if leave_one_out {
        let (check, z_maps) = scene_check(&own_refs)?;
        let norm = PixelNorm::fit_model(&own_refs, check.model)?;
        (Some(check), norm, z_maps)
    } else {
        let norm = PixelNorm::fit(&own_refs)?;
        let z_maps: Vec<AnomalyMap> = held
            .iter()
            .map(|raw| {
                let mut z = raw[0].clone();
                norm.apply(&mut z);
                z
            })
            .collect();
        (None, norm, z_maps)
    };
    let mut pixels: Vec<f32> = z_maps.iter().flat_map(|m| m.data.iter().copied()).collect();
    let z_norm = Normalisation::of(&pixels);
    let mut scores: Vec<f32> = z_maps.iter().map(AnomalyMap::max).collect();
    let thresholds = calibrate(&mut scores, &mut pixels, rule)?.thresholds;
    let mut meta = meta_for(&norm, z_norm, thresholds);
    meta.scene = scene;
    Ok(PixelStats {
        norm,
        meta,
        own,
        held_z: z_maps,
        scene,
    })
}
