//! The paper's Eq. 1: from reconstructions to the pixel anomaly map and the image score.
//!
//! `E = mean_i sum_c g * (I^c - R_i^c)^2`, image score `max(E)`, with `g` a normalised
//! `size x size` Gaussian (7, sigma 1.4) applied with reflect padding (the border pixel is
//! not repeated, as numpy's and torch's `reflect`). The filter is linear, so
//! [`anomaly_map`] averages the 3N squared-error maps first and filters once, with the
//! separable 1-D kernel; [`anomaly_map_literal`] is the slow per-mask, per-channel form
//! kept to prove they agree.

use anyhow::{ensure, Result};

/// A single-channel map (anomaly scores, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyMap {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl AnomalyMap {
    pub fn zeros(width: usize, height: usize) -> Self {
        AnomalyMap {
            width,
            height,
            data: vec![0.0; width * height],
        }
    }

    /// The image score: the largest map value.
    pub fn max(&self) -> f32 {
        self.data.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.width + x]
    }
}

/// Normalised 1-D Gaussian taps; the 2-D kernel is their outer product.
pub fn gaussian_kernel(size: usize, sigma: f32) -> Vec<f32> {
    let r = (size as f64 - 1.0) / 2.0;
    let taps: Vec<f64> = (0..size)
        .map(|i| (-((i as f64 - r).powi(2)) / (2.0 * (sigma as f64).powi(2))).exp())
        .collect();
    let sum: f64 = taps.iter().sum();
    taps.iter().map(|t| (t / sum) as f32).collect()
}

/// numpy's `reflect` index: -1 -> 1, n -> n - 2.
#[inline]
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let j = if i < 0 {
        -i
    } else if i >= n {
        2 * (n - 1) - i
    } else {
        i
    };
    j as usize
}

/// Separable Gaussian filter with reflect padding, in place (uses `scratch`).
pub fn gaussian_filter(map: &mut AnomalyMap, kernel: &[f32], scratch: &mut Vec<f32>) {
    let (w, h) = (map.width, map.height);
    let r = (kernel.len() / 2) as isize;
    scratch.resize(w * h, 0.0);
    // Rows into scratch.
    for y in 0..h {
        let row = &map.data[y * w..(y + 1) * w];
        for x in 0..w {
            let mut acc = 0.0f32;
            for (k, &g) in kernel.iter().enumerate() {
                acc += g * row[reflect(x as isize + k as isize - r, w)];
            }
            scratch[y * w + x] = acc;
        }
    }
    // Columns back into the map.
    for y in 0..h {
        let out = &mut map.data[y * w..(y + 1) * w];
        out.fill(0.0);
        for (k, &g) in kernel.iter().enumerate() {
            let src = reflect(y as isize + k as isize - r, h);
            let src_row = &scratch[src * w..(src + 1) * w];
            for (o, s) in out.iter_mut().zip(src_row) {
                *o += g * s;
            }
        }
    }
}

/// Add `sum_c (I^c - R_i^c)^2` over the `masks` reconstructions in `recon` ([masks, 3, H, W])
/// to `sum` ([H, W]).
pub fn accumulate_squared_error(image: &[f32], recon: &[f32], sum: &mut [f32]) {
    let plane = sum.len();
    let chw = 3 * plane;
    debug_assert_eq!(image.len(), chw);
    debug_assert_eq!(recon.len() % chw, 0);
    for r in recon.chunks_exact(chw) {
        for c in 0..3 {
            let (i_c, r_c) = (
                &image[c * plane..(c + 1) * plane],
                &r[c * plane..(c + 1) * plane],
            );
            for ((s, a), b) in sum.iter_mut().zip(i_c).zip(r_c) {
                let d = a - b;
                *s += d * d;
            }
        }
    }
}

/// Eq. 1 from the image ([3, S, S]) and its N reconstructions ([N, 3, S, S]): mean of the
/// squared-error maps, then one Gaussian filter.
pub fn anomaly_map(
    image: &[f32],
    recon: &[f32],
    size: usize,
    kernel: &[f32],
) -> Result<AnomalyMap> {
    let mut map = AnomalyMap::zeros(size, size);
    anomaly_map_into(image, recon, kernel, &mut map, &mut Vec::new())?;
    Ok(map)
}

/// [`anomaly_map`] into a caller-owned map and filter scratch (no allocation once the
/// buffers have grown): the form the per-frame path uses. The mask count is
/// `recon.len() / (3 * map size)`.
pub fn anomaly_map_into(
    image: &[f32],
    recon: &[f32],
    kernel: &[f32],
    map: &mut AnomalyMap,
    scratch: &mut Vec<f32>,
) -> Result<()> {
    let (w, h) = (map.width, map.height);
    let chw = 3 * w * h;
    ensure!(
        image.len() == chw,
        "image has {} values, expected 3x{h}x{w}",
        image.len()
    );
    ensure!(
        !recon.is_empty() && recon.len().is_multiple_of(chw),
        "reconstruction has {} values, not a multiple of 3x{h}x{w}",
        recon.len()
    );
    let masks = recon.len() / chw;
    map.data.fill(0.0);
    accumulate_squared_error(image, recon, &mut map.data);
    let inv = 1.0 / masks as f32;
    map.data.iter_mut().for_each(|v| *v *= inv);
    gaussian_filter(map, kernel, scratch);
    Ok(())
}

/// Eq. 1 the literal way: filter every mask's every channel with the full 2-D kernel, sum
/// over channels, average over masks. Slow (3N direct 2-D filters); for tests.
pub fn anomaly_map_literal(
    image: &[f32],
    recon: &[f32],
    size: usize,
    kernel: &[f32],
) -> AnomalyMap {
    let plane = size * size;
    let masks = recon.len() / (3 * plane);
    let r = (kernel.len() / 2) as isize;
    let mut total = vec![0.0f64; plane];
    for m in 0..masks {
        for c in 0..3 {
            let err: Vec<f64> = (0..plane)
                .map(|p| {
                    let d = image[c * plane + p] as f64 - recon[(m * 3 + c) * plane + p] as f64;
                    d * d
                })
                .collect();
            for y in 0..size {
                for x in 0..size {
                    let mut acc = 0.0f64;
                    for (ky, &gy) in kernel.iter().enumerate() {
                        let sy = reflect(y as isize + ky as isize - r, size);
                        for (kx, &gx) in kernel.iter().enumerate() {
                            let sx = reflect(x as isize + kx as isize - r, size);
                            acc += gy as f64 * gx as f64 * err[sy * size + sx];
                        }
                    }
                    total[y * size + x] += acc;
                }
            }
        }
    }
    AnomalyMap {
        width: size,
        height: size,
        data: total.iter().map(|v| (v / masks as f64) as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_normalised_symmetric_and_peaked() {
        let k = gaussian_kernel(7, 1.4);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        for i in 0..3 {
            assert!((k[i] - k[6 - i]).abs() < 1e-7);
            assert!(k[i] < k[i + 1]);
        }
    }

    #[test]
    fn filter_keeps_a_constant_map_constant() {
        let mut m = AnomalyMap {
            width: 9,
            height: 5,
            data: vec![2.5; 45],
        };
        gaussian_filter(&mut m, &gaussian_kernel(7, 1.4), &mut Vec::new());
        assert!(m.data.iter().all(|v| (v - 2.5).abs() < 1e-5));
    }

    #[test]
    fn mean_then_filter_equals_literal_per_mask_filtering() {
        // Pseudo-random but deterministic data, 3 masks on a 20x20 image.
        let s = 20;
        let mut x = 12345u32;
        let mut next = || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        };
        let image: Vec<f32> = (0..3 * s * s).map(|_| next()).collect();
        let recon: Vec<f32> = (0..3 * 3 * s * s).map(|_| next()).collect();
        let k = gaussian_kernel(7, 1.4);
        let fast = anomaly_map(&image, &recon, s, &k).unwrap();
        let slow = anomaly_map_literal(&image, &recon, s, &k);
        let worst = fast
            .data
            .iter()
            .zip(&slow.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "max |fast - literal| = {worst}");
        assert!(fast.max() > 0.0);
    }

    #[test]
    fn shape_errors_are_reported() {
        let k = gaussian_kernel(7, 1.4);
        assert!(anomaly_map(&[0.0; 10], &[0.0; 10], 20, &k).is_err());
        assert!(anomaly_map(&vec![0.0; 1200], &[0.0; 1000], 20, &k).is_err());
    }
}
