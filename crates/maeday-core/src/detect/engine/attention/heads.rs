//! The arithmetic of [`super::HeadAttention`]: tensors seen through their logical axes,
//! one head at a time through two sgemms and a vectorised softmax.

use tract_core::internal::*;

/// Where each of the logical axes `[batch, heads, tokens, dim]` sits in a tensor the op
/// reads or writes. The graph moves the heads axis before attention (`[b, t, h, d]` ->
/// `[b, h, t, d]`) and back after it: our op reads and writes those layouts directly, so
/// the four copies per attention go.
pub type Layout = [usize; 4];

/// The logical order itself.
pub const PLAIN: Layout = [0, 1, 2, 3];

/// A contiguous tensor seen through its logical axes: sizes and element strides of
/// `[batch, heads, tokens, dim]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct View {
    pub sizes: [usize; 4],
    pub strides: [isize; 4],
}

/// The view of a row-major tensor of `shape` whose axes are in `layout`.
pub fn strided(shape: &[usize], layout: Layout) -> TractResult<View> {
    ensure!(shape.len() == 4, "attention takes rank-4 tensors");
    let mut physical = [1isize; 4];
    for axis in (0..3).rev() {
        physical[axis] = physical[axis + 1] * shape[axis + 1] as isize;
    }
    Ok(View {
        sizes: layout.map(|axis| shape[axis]),
        strides: layout.map(|axis| physical[axis]),
    })
}

impl View {
    fn len(&self) -> usize {
        self.sizes.iter().product()
    }

    /// Offset of head `(b, h)`'s first element.
    pub(super) fn head(&self, b: usize, h: usize) -> isize {
        b as isize * self.strides[0] + h as isize * self.strides[1]
    }
}

/// `[batch, heads, tq, tk, d]` of an attention over these views, once every slice is
/// checked to be as long as its view and the shapes to agree: the unsafe offsets of both
/// paths ([`attend`], `super::tiles`) rely on it.
pub(super) fn checked_sizes(
    inputs: [&[f32]; 3],
    views: [View; 3],
    out: &[f32],
    ov: View,
) -> [usize; 5] {
    let [q, k, v] = inputs;
    let [qv, kv, vv] = views;
    let [batch, heads, tq, d] = qv.sizes;
    let tk = kv.sizes[2];
    assert!(q.len() == qv.len() && k.len() == kv.len() && v.len() == vv.len());
    assert!(out.len() == ov.len() && ov.sizes == qv.sizes);
    assert!(kv.sizes == [batch, heads, tk, d] && vv.sizes == kv.sizes);
    [batch, heads, tq, tk, d]
}

/// `out[b, h] = softmax(q[b, h] k[b, h]^T * scale) v[b, h]` for every batch item and head,
/// each tensor read or written through its view.
pub fn attend(inputs: [&[f32]; 3], views: [View; 3], out: &mut [f32], ov: View, scale: f32) {
    let [batch, heads, tq, tk, d] = checked_sizes(inputs, views, out, ov);
    let [q, k, v] = inputs;
    let [qv, kv, vv] = views;
    let mut scores = vec![0f32; tq * tk];
    for b in 0..batch {
        for h in 0..heads {
            // SAFETY: every view describes a permutation of its whole contiguous tensor
            // (lengths checked above), so each offset below stays inside its slice; `scores`
            // and `out` alias nothing else.
            unsafe {
                // scores = scale * Q K^T: K^T walks K's dim axis down and its tokens across.
                matrixmultiply::sgemm(
                    tq,
                    d,
                    tk,
                    scale,
                    q.as_ptr().offset(qv.head(b, h)),
                    qv.strides[2],
                    qv.strides[3],
                    k.as_ptr().offset(kv.head(b, h)),
                    kv.strides[3],
                    kv.strides[2],
                    0.0,
                    scores.as_mut_ptr(),
                    tk as isize,
                    1,
                );
            }
            softmax_rows(&mut scores, tk);
            unsafe {
                matrixmultiply::sgemm(
                    tq,
                    tk,
                    d,
                    1.0,
                    scores.as_ptr(),
                    tk as isize,
                    1,
                    v.as_ptr().offset(vv.head(b, h)),
                    vv.strides[2],
                    vv.strides[3],
                    0.0,
                    out.as_mut_ptr().offset(ov.head(b, h)),
                    ov.strides[2],
                    ov.strides[3],
                );
            }
        }
    }
}

/// Each `cols`-long row of `s` becomes its softmax. Vectorised on x86-64 with AVX2 + FMA
/// when the CPU has them (checked once per call), on SSE2 otherwise, NEON on aarch64.
pub fn softmax_rows(s: &mut [f32], cols: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { softmax_rows_avx2(s, cols) };
            return;
        }
    }
    softmax_rows_generic(s, cols)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(s: &mut [f32], cols: usize) {
    softmax_rows_generic(s, cols)
}

/// Lanes of the partial maxima and sums: wide enough for AVX2 (8) with two accumulators.
const LANES: usize = 16;

#[inline(always)]
fn softmax_rows_generic(s: &mut [f32], cols: usize) {
    for row in s.chunks_exact_mut(cols) {
        let inv = 1.0 / exp_shifted(row);
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

/// Each `x` of `row` becomes `e^(x - max(row))`; returns their sum (the softmax's
/// denominator: dividing by it is left to the caller).
#[inline(always)]
pub(super) fn exp_shifted(row: &mut [f32]) -> f32 {
    let split = row.len() - row.len() % LANES;
    let (body, tail) = row.split_at_mut(split);
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for chunk in body.chunks_exact(LANES) {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = m.max(x);
        }
    }
    let max = tail
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let mut sums = [0f32; LANES];
    for chunk in body.chunks_exact_mut(LANES) {
        for (acc, x) in sums.iter_mut().zip(chunk) {
            *x = exp(*x - max);
            *acc += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in tail.iter_mut() {
        *x = exp(*x - max);
        sum += *x;
    }
    sum
}

/// `e^x` for `x <= 0` (scores minus their row's maximum), within 2 ulp of `f32::exp` down
/// to `e^-87`, and branch-free so that loops over it vectorise. `x = n ln2 + r` with
/// `|r| <= ln2 / 2`; `e^r` by its Taylor series to the 7th power (truncation below 3e-9
/// relative at `|r| = 0.347`); `2^n` built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * LN2_HI is exact for |n| < 2^9 (Cody and Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to the nearest integer, left in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    // Plain products and sums (Rust never fuses them): the SSE2 and AVX2 builds agree, and
    // no call to a software `fmaf` where the CPU has no FMA.
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    p * f32::from_bits(((n_int + 127) << 23) as u32)
}

#[cfg(test)]
pub(super) fn noise(len: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * amp
        })
        .collect()
}

#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub heads: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
}

/// The straightforward definition in f64, per head (plain `[heads, tokens, dim]` layout).
#[cfg(test)]
pub(super) fn naive(q: &[f32], k: &[f32], v: &[f32], n: Dims, scale: f32) -> Vec<f64> {
    let mut out = vec![0f64; n.heads * n.tq * n.d];
    for h in 0..n.heads {
        for i in 0..n.tq {
            let s: Vec<f64> = (0..n.tk)
                .map(|j| {
                    (0..n.d)
                        .map(|c| {
                            q[(h * n.tq + i) * n.d + c] as f64 * k[(h * n.tk + j) * n.d + c] as f64
                        })
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..n.d {
                out[(h * n.tq + i) * n.d + c] = (0..n.tk)
                    .map(|j| e[j] / z * v[(h * n.tk + j) * n.d + c] as f64)
                    .sum();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2_ulp_of_the_library_exp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 10.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            let ulp = (want as f32).to_bits().abs_diff((got as f32).to_bits());
            worst = worst.max(ulp as f64);
            x += 0.000_731;
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
    }

    #[test]
    fn heads_match_the_definition() {
        // The decoder's shape (197 tokens, d = 32) and an odd one (tails of every loop).
        for (heads, tq, tk, d) in [(3, 197, 197, 32), (2, 7, 19, 5)] {
            let q = noise(heads * tq * d, 1, 8.0);
            let k = noise(heads * tk * d, 2, 8.0);
            let v = noise(heads * tk * d, 3, 2.0);
            let mut out = vec![0f32; q.len()];
            let scale = 1.0 / (d as f32).sqrt();
            let view = |t| strided(&[1, heads, t, d], PLAIN).unwrap();
            let views = [view(tq), view(tk), view(tk)];
            attend([&q, &k, &v], views, &mut out, view(tq), scale);
            let n = Dims { heads, tq, tk, d };
            let want = naive(&q, &k, &v, n, scale);
            let err = out.iter().zip(&want).map(|(&g, w)| (g as f64 - w).abs());
            let worst = err.fold(0f64, f64::max);
            assert!(worst < 1e-5, "{n:?}: {worst}");
        }
    }
}
