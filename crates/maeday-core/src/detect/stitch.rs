//! Stitching per-window maps into one map of the frame: overlapping windows (tiling) are
//! averaged, and only the content rectangle (the frame without letterbox bars) is kept.

use crate::detect::eq1::AnomalyMap;
use crate::detect::preprocess::Rect;

/// Running sums of several maps over a canvas, and how many windows covered each pixel.
pub struct Stitch {
    canvas_width: usize,
    sums: Vec<Vec<f32>>,
    count: Vec<u16>,
}

impl Stitch {
    /// `maps` maps over a `canvas_width x canvas_height` canvas.
    pub fn new(maps: usize, canvas_width: usize, canvas_height: usize) -> Stitch {
        let pixels = canvas_width * canvas_height;
        Stitch {
            canvas_width,
            sums: vec![vec![0.0; pixels]; maps],
            count: vec![0; pixels],
        }
    }

    /// Add a window's map to map `slot`, the window's top-left corner at `(wx, wy)`.
    pub fn add(&mut self, slot: usize, (wx, wy): (u32, u32), window: &AnomalyMap) {
        let (cw, s) = (self.canvas_width, window.width);
        let sum = &mut self.sums[slot];
        for y in 0..window.height {
            let row = (wy as usize + y) * cw + wx as usize;
            for (acc, v) in sum[row..row + s]
                .iter_mut()
                .zip(&window.data[y * s..(y + 1) * s])
            {
                *acc += v;
            }
        }
    }

    /// Count a `size x size` window at `(wx, wy)` once (after its maps are added).
    pub fn covered(&mut self, (wx, wy): (u32, u32), size: usize) {
        for y in 0..size {
            let row = (wy as usize + y) * self.canvas_width + wx as usize;
            for c in &mut self.count[row..row + size] {
                *c += 1;
            }
        }
    }

    /// Every map averaged over the windows that covered each pixel, cut to `content`.
    pub fn finish(&self, content: Rect) -> Vec<AnomalyMap> {
        let cw = self.canvas_width;
        self.sums
            .iter()
            .map(|sum| {
                let mut map = AnomalyMap::zeros(content.width as usize, content.height as usize);
                for y in 0..map.height {
                    for x in 0..map.width {
                        let i = (content.y as usize + y) * cw + content.x as usize + x;
                        map.data[y * map.width + x] = sum[i] / self.count[i].max(1) as f32;
                    }
                }
                map
            })
            .collect()
    }
}
