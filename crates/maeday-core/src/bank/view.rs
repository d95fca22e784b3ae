//! What the bank's extractor sees of each window: the same region of the frame as MAEDAY's
//! window, but sampled from the frame at the extractor's own input size.
//!
//! DINOv2 finds small defects only at about 448 px per window (AnomalyDINO; on magnetic
//! tiles a 224 view upsampled to 448 scored 0.645 image AUROC at 1 shot, like 224 itself,
//! while 448 px of real detail gave 0.77 in the probe). So an extractor whose view
//! (`view_size`) is larger than the MAE's window gets the frame placed again, by the same
//! fit, on a canvas `view / window` times larger, and each window's view is cut from there:
//! the maps still line up window for window, and stitching is unchanged. An extractor of
//! the window's size (Lite0) reads the MAE's canvas as before.

use anyhow::Result;
use image::{DynamicImage, RgbImage};

use crate::bank::features::FeatureExtractor;
use crate::bank::memory::Features;
use crate::detect::preprocess::{Fit, Preprocessor};
use crate::model::manifest::InputSpec;

/// Places frames for an extractor whose input size differs from the MAE's window.
#[derive(Debug, Clone, Default)]
pub struct ExtractorView {
    /// `None`: the extractor takes the MAE's windows as they are.
    pre: Option<Preprocessor>,
    window: u32,
}

impl ExtractorView {
    /// The view for an extractor that looks at `view_size` px per window, next to a model
    /// whose windows are `input.size` px, placed by `fit`.
    pub fn new(input: &InputSpec, fit: Fit, view_size: usize) -> Result<ExtractorView> {
        let pre = if view_size == input.size {
            None
        } else {
            let spec = InputSpec {
                size: view_size,
                ..input.clone()
            };
            Some(Preprocessor::new(&spec, fit)?)
        };
        Ok(ExtractorView {
            pre,
            window: input.size as u32,
        })
    }

    /// The extractor's canvas of `frame` (when `wanted` and it needs its own).
    pub fn place(&self, frame: &DynamicImage, wanted: bool) -> Result<Option<RgbImage>> {
        match &self.pre {
            Some(pre) if wanted => Ok(Some(pre.place(frame)?.canvas)),
            _ => Ok(None),
        }
    }

    /// The extractor's view (CHW RGB in [0, 1]) of the window at `corner` of the MAE's
    /// `canvas` (placed by `mae`): cut from `own`, the canvas [`Self::place`] made, when
    /// there is one.
    pub fn window(
        &self,
        mae: &Preprocessor,
        canvas: &RgbImage,
        own: Option<&RgbImage>,
        (x, y): (u32, u32),
        out: &mut Vec<f32>,
    ) {
        match (&self.pre, own) {
            (Some(pre), Some(own)) => {
                let f = pre.size as f64 / self.window as f64;
                let at = |v: u32, len: u32| ((v as f64 * f).round() as u32).min(len - pre.size);
                pre.window_rgb01(own, (at(x, own.width()), at(y, own.height())), out);
            }
            _ => mae.window_rgb01(canvas, (x, y), out),
        }
    }

    /// The extractor's features of every window of `frame` (placed by `mae`).
    pub fn features(
        &self,
        mae: &Preprocessor,
        extractor: &FeatureExtractor,
        frame: &DynamicImage,
    ) -> Result<Vec<Features>> {
        let placed = mae.place(frame)?;
        let own = self.place(frame, true)?;
        let mut view = Vec::new();
        let mut out = Vec::with_capacity(placed.windows.len());
        for &corner in &placed.windows {
            self.window(mae, &placed.canvas, own.as_ref(), corner, &mut view);
            out.push(extractor.features(&view)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn spec() -> InputSpec {
        InputSpec {
            size: 224,
            patch_size: 16,
            channels: 3,
            mean: [0.5; 3],
            std: [0.25; 3],
            standardise: None,
        }
    }

    #[test]
    fn a_larger_extractor_sees_the_same_region_at_its_own_resolution() {
        // A 900 x 300 frame: left half dark, right half bright, tiled into 224 windows.
        let frame = RgbImage::from_fn(900, 300, |x, _| Rgb([if x < 450 { 20 } else { 230 }; 3]));
        let frame = DynamicImage::ImageRgb8(frame);
        let fit = Fit::Tile { overlap: 0.25 };
        let mae = Preprocessor::new(&spec(), fit).unwrap();
        let placed = mae.place(&frame).unwrap();
        let view = ExtractorView::new(&spec(), fit, 448).unwrap();
        let own = view.place(&frame, true).unwrap().unwrap();
        assert_eq!((own.width(), own.height()), (1344, 448));
        let (mut small, mut big) = (Vec::new(), Vec::new());
        for &corner in &placed.windows {
            view.window(&mae, &placed.canvas, None, corner, &mut small);
            view.window(&mae, &placed.canvas, Some(&own), corner, &mut big);
            assert_eq!((small.len(), big.len()), (3 * 224 * 224, 3 * 448 * 448));
            // The same share of dark pixels in both views of the window.
            let dark = |v: &[f32]| v.iter().filter(|&&p| p < 0.5).count() as f64 / v.len() as f64;
            assert!((dark(&small) - dark(&big)).abs() < 0.01, "{corner:?}");
        }
        // Without its own canvas (or at the window's size) the view is the MAE's window.
        let same = ExtractorView::new(&spec(), fit, 224).unwrap();
        assert!(same.place(&frame, true).unwrap().is_none());
        assert!(view.place(&frame, false).unwrap().is_none());
    }
}
