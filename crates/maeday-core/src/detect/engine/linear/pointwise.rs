//! A pointwise (1x1, stride 1) convolution over channels-first planes, on the linear layer's
//! register tiles: `out[o] = clamp(w[o] x + bias[o])` with `w` `[outputs, inputs]` and `x`
//! `[inputs, pixels]`.
//!
//! The weights are the tiles' rows (broadcast from where they lie); the pixels are their
//! columns, 16 at a time: each panel of 16 pixel columns of `x` is copied once into a
//! contiguous `[inputs][16]` scratch (zero-padded at the plane's end). Six output planes are
//! then computed at a time, panel after panel, so that each is written from start to end.

use super::super::simd;
use super::gemm::{Tile, P, R};

/// Output planes `first..` (as many as `out` holds, `pixels` floats each) of the pointwise
/// convolution of `x` (`[inputs, pixels]`) with `w` (`[outputs, inputs]`) and `bias`
/// (`[outputs]`), clamped to `clamp` if set.
pub fn pointwise(
    w: &[f32],
    x: &[f32],
    bias: &[f32],
    clamp: Option<(f32, f32)>,
    pixels: usize,
    first: usize,
    out: &mut [f32],
) {
    let inputs = x.len() / pixels.max(1);
    let outputs = out.len() / pixels.max(1);
    assert!(
        x.len() == inputs * pixels
            && out.len() == outputs * pixels
            && w.len() == bias.len() * inputs
            && first + outputs <= bias.len(),
        "pointwise: w {}, x {}, bias {}, planes {first}.. into {}, {pixels} pixels",
        w.len(),
        x.len(),
        bias.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if simd::fast_on_this_cpu() {
        // SAFETY: the CPU has AVX2 and FMA; the sizes are checked above.
        return unsafe { pointwise_avx2(w, x, bias, clamp, pixels, first, out) };
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of the aarch64 baseline; the sizes are checked above.
    return unsafe { pointwise_with::<simd::Neon>(w, x, bias, clamp, pixels, first, out) };
    #[allow(unreachable_code)]
    // SAFETY: plain arrays; the sizes are checked above.
    unsafe {
        pointwise_with::<simd::Portable>(w, x, bias, clamp, pixels, first, out)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pointwise_avx2(
    w: &[f32],
    x: &[f32],
    bias: &[f32],
    clamp: Option<(f32, f32)>,
    pixels: usize,
    first: usize,
    out: &mut [f32],
) {
    pointwise_with::<simd::Avx2>(w, x, bias, clamp, pixels, first, out)
}

/// # Safety
/// As `pointwise` checks; the CPU runs `V`'s instructions.
#[inline(always)]
unsafe fn pointwise_with<V: simd::Vector>(
    w: &[f32],
    x: &[f32],
    bias: &[f32],
    clamp: Option<(f32, f32)>,
    pixels: usize,
    first: usize,
    out: &mut [f32],
) {
    let inputs = x.len() / pixels;
    let outputs = out.len() / pixels;
    // Every panel of 16 pixel columns, `[inputs][16]` each, zero-padded at the plane's end.
    let mut panels = vec![0f32; pixels.div_ceil(P) * inputs * P];
    for (p, panel) in panels.chunks_exact_mut(inputs * P).enumerate() {
        let (j, width) = (p * P, P.min(pixels - p * P));
        for (c, row) in panel.chunks_exact_mut(P).enumerate() {
            row[..width].copy_from_slice(&x[c * pixels + j..c * pixels + j + width]);
        }
    }
    // Where a tile of the last, narrower panel goes before its valid columns are copied out.
    let mut last = [0f32; R * P];
    // Six output planes at a time, each written from its start to its end (sequential
    // stores: writing 16 columns of every plane in turn cost more than the arithmetic).
    for o in (0..outputs).step_by(R) {
        let rows = R.min(outputs - o);
        let mut a = [w.as_ptr(); R];
        for (m, a) in a.iter_mut().enumerate().take(rows) {
            *a = w.as_ptr().add((first + o + m) * inputs);
        }
        for (p, panel) in panels.chunks_exact(inputs * P).enumerate() {
            let (j, width) = (p * P, P.min(pixels - p * P));
            let (c, n) = if width == P {
                (out.as_mut_ptr().add(o * pixels + j), pixels)
            } else {
                (last.as_mut_ptr(), P)
            };
            let tile = Tile {
                a,
                heads: 1,
                head_stride: 0,
                k: inputs,
                w: panel.as_ptr(),
                c,
                n,
                bias: bias.as_ptr().add(first + o),
                bias_per_row: true,
            };
            tile.run::<V>(rows, true);
            if width < P {
                for m in 0..rows {
                    let to = (o + m) * pixels + j;
                    out[to..to + width].copy_from_slice(&last[m * P..m * P + width]);
                }
            }
        }
        if let Some((low, high)) = clamp {
            clamp_all(&mut out[o * pixels..(o + rows) * pixels], low, high);
        }
    }
}

/// Clamp every value of `out`. Never inlined, like the GELU: its constants must not take the
/// tiles' registers.
#[inline(never)]
fn clamp_all(out: &mut [f32], low: f32, high: f32) {
    simd::vectorised(|| {
        for v in out {
            *v = v.max(low).min(high);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::super::test_values::noise;
    use super::*;

    /// Against the f64 definition: the extractor's sizes (cut down) and tails (outputs not
    /// a multiple of 6, pixels not a multiple of 16), with and without the clamp, whole and
    /// in two shares of planes.
    #[test]
    fn pointwise_matches_the_definition() {
        for (inputs, outputs, pixels) in [(32, 16, 196), (16, 96, 784), (7, 13, 37), (40, 5, 16)] {
            let (w, x, bias) = (
                noise(outputs * inputs, 1, 1.0),
                noise(inputs * pixels, 2, 1.0),
                noise(outputs, 3, 1.0),
            );
            for clamp in [None, Some((0.0, 0.5))] {
                let want: Vec<f64> = (0..outputs * pixels)
                    .map(|i| {
                        let (o, p) = (i / pixels, i % pixels);
                        let s: f64 = (0..inputs)
                            .map(|c| w[o * inputs + c] as f64 * x[c * pixels + p] as f64)
                            .sum::<f64>()
                            + bias[o] as f64;
                        clamp.map_or(s, |(l, h)| s.max(l as f64).min(h as f64))
                    })
                    .collect();
                let mut got = vec![f32::NAN; outputs * pixels];
                pointwise(&w, &x, &bias, clamp, pixels, 0, &mut got);
                let worst = got.iter().zip(&want).map(|(&g, w)| (g as f64 - w).abs());
                let worst = worst.fold(0f64, f64::max);
                assert!(
                    worst < 1e-5,
                    "{inputs} -> {outputs} x {pixels} {clamp:?}: {worst}"
                );
                let split = outputs / 2 + 1;
                let mut share = vec![f32::NAN; (outputs - split) * pixels];
                pointwise(&w, &x, &bias, clamp, pixels, split, &mut share);
                assert_eq!(share, got[split * pixels..]);
                let mut portable = vec![f32::NAN; outputs * pixels];
                // SAFETY: plain arrays; the sizes are those checked by `pointwise` above.
                unsafe {
                    pointwise_with::<simd::Portable>(&w, &x, &bias, clamp, pixels, 0, &mut portable)
                };
                let worst = portable
                    .iter()
                    .zip(&want)
                    .map(|(&g, w)| (g as f64 - w).abs());
                assert!(worst.fold(0f64, f64::max) < 1e-5);
            }
        }
    }
}
