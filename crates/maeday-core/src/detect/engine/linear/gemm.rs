//! `c = a w + bias` (then, optionally, the exact GELU) for row-major `a` read where it
//! lies, from weights packed once into column panels, in register tiles of 6 rows x 16
//! columns over [`simd::Vector`].
//!
//! tract packs the activation `a` into its kernel's panel layout before every matmul (70
//! packs a frame at N = 32, 6.6% of it) and runs the exact GELU as a pass of its own over
//! the MLP's hidden layer (3.5%). Here each tile broadcasts `a`'s elements from its rows in
//! place, reads the weights from a panel of 16 columns contiguous along `k` (packed when
//! the plan is built), starts its accumulators at the bias, and applies the GELU to the
//! tile while it is still in L1.

use super::super::simd::{self, W};

/// Rows of a register tile.
pub(super) const R: usize = 6;
/// Columns of a full panel (two vectors).
pub(super) const P: usize = 2 * W;
/// Rows of `a` per block: every panel runs over one block while the block sits in L2
/// (measured on the 2-core Zen 4 for k = 128..768: 96 rows best or level).
const BLOCK_ROWS: usize = 16 * R;

/// Weights `[k, n]` packed for [`gemm`]: column panels of [`P`] columns (the last one
/// [`W`] wide when `n % 16 == 8`), each `[k][width]`, one after the other.
#[derive(Clone, Debug, PartialEq)]
pub struct Packed {
    pub k: usize,
    pub n: usize,
    pub values: Vec<f32>,
}

impl Packed {
    /// `w` is `[k, n]`, row-major; `n` a multiple of [`W`].
    pub fn new(w: &[f32], k: usize, n: usize) -> Packed {
        assert!(
            n.is_multiple_of(W) && w.len() == k * n,
            "[{k}, {n}] weights, {} values",
            w.len()
        );
        let mut values = Vec::with_capacity(k * n);
        for (j, width) in panels(n) {
            for row in w.chunks_exact(n) {
                values.extend_from_slice(&row[j..j + width]);
            }
        }
        Packed { k, n, values }
    }
}

/// Each panel's first column and width.
fn panels(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(P).map(move |j| (j, P.min(n - j)))
}

/// What follows the product in the same pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Then {
    Nothing,
    /// `x / 2 (1 + erf(x / sqrt 2))`.
    Gelu,
}

/// Where the rows of the product's left operand lie in `a`: `a` is `[groups, heads,
/// per_group, k]`, and row `g * per_group + m` is `a[g, 0, m, ..]`, then `a[g, 1, m, ..]`, ...
/// (an attention's heads before its output projection). A plain `[rows, k]` matrix is one
/// head with one row per group ([`Rows::plain`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rows {
    pub heads: usize,
    pub per_group: usize,
    /// Values per head.
    pub k: usize,
}

impl Rows {
    pub fn plain(k: usize) -> Rows {
        Rows {
            heads: 1,
            per_group: 1,
            k,
        }
    }

    /// Rows in `len` values of `a`.
    pub fn count(&self, len: usize) -> usize {
        len / (self.heads * self.k).max(1)
    }

    /// Where row `r` starts (its first head).
    fn start(&self, r: usize) -> usize {
        let (g, m) = (r / self.per_group, r % self.per_group);
        (g * self.heads * self.per_group + m) * self.k
    }
}

/// `c[i] = a[i] w + bias` for rows `first..` of `a` (as many as `c`, `[rows, n]`, holds),
/// then `then`, on this CPU's fastest [`simd::Vector`].
pub fn gemm(
    a: &[f32],
    rows: Rows,
    first: usize,
    w: &Packed,
    bias: &[f32],
    then: Then,
    c: &mut [f32],
) {
    check(a, rows, first, w, bias, c);
    #[cfg(target_arch = "x86_64")]
    if simd::fast_on_this_cpu() {
        // SAFETY: the CPU has AVX2 and FMA; the lengths are checked above.
        return unsafe { gemm_avx2(a, rows, first, w, bias, then, c) };
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of the aarch64 baseline; the lengths are checked above.
    return unsafe { gemm_with::<simd::Neon>(a, rows, first, w, bias, then, c) };
    #[allow(unreachable_code)]
    // SAFETY: plain arrays; the lengths are checked above.
    unsafe {
        gemm_with::<simd::Portable>(a, rows, first, w, bias, then, c)
    }
}

/// The sizes [`gemm`] relies on.
fn check(a: &[f32], rows: Rows, first: usize, w: &Packed, bias: &[f32], c: &[f32]) {
    let (k, n) = (w.k, w.n);
    let all = rows.count(a.len());
    let ours = c.len() / n.max(1);
    assert!(
        rows.heads * rows.k == k
            && a.len() == all * k
            && all.is_multiple_of(rows.per_group.max(1))
            && c.len() == ours * n
            && first + ours <= all
            && bias.len() == n,
        "gemm: a {} values as {rows:?}, rows {first}.. into c {}, bias {}, for k = {k}, n = {n}",
        a.len(),
        c.len(),
        bias.len()
    );
}

/// [`gemm`] on the lanes `V` (tests compare every lane type).
///
/// # Safety
/// The CPU runs `V`'s instructions.
#[cfg(test)]
pub unsafe fn gemm_on<V: simd::Vector>(
    a: &[f32],
    rows: Rows,
    w: &Packed,
    bias: &[f32],
    then: Then,
    c: &mut [f32],
) {
    check(a, rows, 0, w, bias, c);
    gemm_with::<V>(a, rows, 0, w, bias, then, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_avx2(
    a: &[f32],
    rows: Rows,
    first: usize,
    w: &Packed,
    bias: &[f32],
    then: Then,
    c: &mut [f32],
) {
    gemm_with::<simd::Avx2>(a, rows, first, w, bias, then, c)
}

/// # Safety
/// As [`check`]ed; the CPU runs `V`'s instructions.
#[inline(always)]
unsafe fn gemm_with<V: simd::Vector>(
    a: &[f32],
    rows: Rows,
    first: usize,
    w: &Packed,
    bias: &[f32],
    then: Then,
    c: &mut [f32],
) {
    let n = w.n;
    let count = c.len() / n.max(1);
    for start in (0..count).step_by(BLOCK_ROWS) {
        let block = BLOCK_ROWS.min(count - start);
        let mut panel = w.values.as_ptr();
        for (j, width) in panels(n) {
            for i in (start..start + block).step_by(R) {
                let r = R.min(start + block - i);
                let mut from = [a.as_ptr(); R];
                for (m, from) in from.iter_mut().enumerate().take(r) {
                    *from = a.as_ptr().add(rows.start(first + i + m));
                }
                let tile = Tile {
                    a: from,
                    heads: rows.heads,
                    head_stride: rows.per_group * rows.k,
                    k: rows.k,
                    w: panel,
                    c: c.as_mut_ptr().add(i * n + j),
                    n,
                    bias: bias.as_ptr().add(j),
                    bias_per_row: false,
                };
                tile.run::<V>(r, width == P);
            }
            panel = panel.add(w.k * width);
        }
        if then == Then::Gelu {
            // The block's rows, still in L2.
            gelu_rows(&mut c[start * n..(start + block) * n]);
        }
    }
}

/// One tile: up to [`R`] rows of `a` from the pointers `a` (each row `heads` runs of `k`
/// values, `head_stride` apart) times a panel of one or two vectors from `w` (`[heads *
/// k][width]`), plus `bias` (one value per column, or per row with `bias_per_row`), into `c`
/// (row stride `n`).
#[derive(Clone, Copy)]
pub(super) struct Tile {
    pub a: [*const f32; R],
    pub heads: usize,
    pub head_stride: usize,
    pub k: usize,
    pub w: *const f32,
    pub c: *mut f32,
    pub n: usize,
    pub bias: *const f32,
    pub bias_per_row: bool,
}

impl Tile {
    /// The tile's first `rows` rows (at most [`R`]), and a panel of two vectors if `full`,
    /// else one.
    ///
    /// # Safety
    /// The tile's rows and columns lie inside `a`, the panel, `c` and `bias`; the CPU runs
    /// `V`'s instructions.
    #[inline(always)]
    pub unsafe fn run<V: simd::Vector>(self, rows: usize, full: bool) {
        match (rows, full) {
            (6, true) => self.tile::<V, 6, 2>(),
            (5, true) => self.tile::<V, 5, 2>(),
            (4, true) => self.tile::<V, 4, 2>(),
            (3, true) => self.tile::<V, 3, 2>(),
            (2, true) => self.tile::<V, 2, 2>(),
            (_, true) => self.tile::<V, 1, 2>(),
            (6, false) => self.tile::<V, 6, 1>(),
            (5, false) => self.tile::<V, 5, 1>(),
            (4, false) => self.tile::<V, 4, 1>(),
            (3, false) => self.tile::<V, 3, 1>(),
            (2, false) => self.tile::<V, 2, 1>(),
            (_, false) => self.tile::<V, 1, 1>(),
        }
    }

    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // as measured: 96-110 GFLOP/s on the Zen 4
    unsafe fn tile<V: simd::Vector, const M: usize, const N: usize>(self) {
        let mut acc = [[V::zero(); N]; M];
        for m in 0..M {
            for v in 0..N {
                acc[m][v] = if self.bias_per_row {
                    V::splat(*self.bias.add(m))
                } else {
                    V::load(self.bias.add(v * W))
                };
            }
        }
        let mut wp = self.w;
        for h in 0..self.heads {
            let mut a = [self.a[0]; M];
            for m in 0..M {
                a[m] = self.a[m].add(h * self.head_stride);
            }
            for kk in 0..self.k {
                let y0 = V::load(wp);
                let y1 = if N > 1 { V::load(wp.add(W)) } else { y0 };
                for m in 0..M {
                    let x = V::splat(*a[m].add(kk));
                    acc[m][0] = acc[m][0].mul_add(x, y0);
                    if N > 1 {
                        acc[m][1] = acc[m][1].mul_add(x, y1);
                    }
                }
                wp = wp.add(N * W);
            }
        }
        for m in 0..M {
            for v in 0..N {
                acc[m][v].store(self.c.add(m * self.n + v * W));
            }
        }
    }
}

/// [`gelu_in_place`], 8 lanes wide where the CPU has AVX2. Never inlined: inside the tile
/// loops its constants were hoisted into registers that the tiles' accumulators need
/// (measured: half the speed, with accumulators spilled to the stack).
#[inline(never)]
fn gelu_rows(xs: &mut [f32]) {
    simd::vectorised(|| gelu_in_place(xs))
}

/// The exact GELU, `x / 2 (1 + erf(x / sqrt 2))`, with `erf` by Abramowitz and Stegun's
/// 7.1.28 (absolute error below 3e-7, the formula tract's own `GeluExact` uses). Plain
/// arithmetic that the compiler vectorises (8 lanes inside [`gemm_avx2`]); no fused
/// multiply-adds, so every CPU gets the same floats.
#[inline(always)]
fn gelu_in_place(xs: &mut [f32]) {
    const A: [f32; 6] = [
        0.070_523_08,
        0.042_282_01,
        0.009_270_527,
        0.000_152_014_3,
        0.000_276_567_2,
        0.000_043_063_8,
    ];
    for x in xs {
        let z = *x * std::f32::consts::FRAC_1_SQRT_2;
        let t = z.abs();
        let mut p = A[5] * t;
        for a in A[..5].iter().rev() {
            p = (a + p) * t;
        }
        let q = p + 1.0;
        let q2 = q * q;
        let q4 = q2 * q2;
        let q8 = q4 * q4;
        let q16 = q8 * q8;
        let erf = (1.0 - 1.0 / q16).copysign(z);
        *x = (*x * 0.5) * (erf + 1.0);
    }
}

#[cfg(test)]
#[path = "gemm_tests.rs"]
mod tests;
