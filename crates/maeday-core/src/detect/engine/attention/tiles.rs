//! Attention a few query rows at a time, with register tiles instead of two sgemm calls.
//!
//! A general sgemm packs both operands into its panel layout on every call. Our heads are
//! small (50 x 64 in the encoder, 197 x 32 in the decoder), so that packing cost as much
//! as a third of the attention (perf: sgemm kernel 6.6% of a frame, its packing 5.2%). Here:
//! - K is transposed once per head into `kt` (`[d][tk]`, rows padded to a multiple of 8),
//!   which is the only copy; Q, V and the output are read and written where they lie;
//! - for `R` query rows at a time the scores `S = scale * Q K^T` come from register tiles
//!   of `R x 16` (or `R x 8`) accumulators, the rows' softmax runs while they sit in L1,
//!   and `O = P V` from the same tiles over V's rows.
//!
//! The tiles are written once over 8-lane vectors ([`simd::Vector`], shared with our other ops): one AVX2 register
//! with FMA on x86-64, two NEON registers on aarch64. They need unit strides along `d` in
//! Q and V and `d` a multiple of 8 (true of every graph we ship; the output may be strided:
//! tract's plans want it as `[b, t, d, h]`); otherwise, or on an x86-64 CPU without AVX2,
//! the op takes [`super::heads::attend`]'s two sgemms per head.

use super::super::simd::{self, W};
use super::heads::{checked_sizes, exp_shifted, View};

/// Query rows per tile.
const R: usize = 6;

/// Whether the tiles can run these views.
fn applicable(views: [View; 3], out: View) -> bool {
    let [q, _, v] = views;
    let d = q.sizes[3];
    d % W == 0 && d > 0 && q.strides[3] == 1 && v.strides[3] == 1 && out.strides[3] > 0
}

/// `out[b, h] = softmax(q[b, h] k[b, h]^T * scale) v[b, h]`, as `super::heads::attend`,
/// when the layout and this CPU allow ([`applicable`], [`simd::fast_on_this_cpu`]); returns
/// whether it ran (if not, `out` is untouched).
pub fn attend(
    inputs: [&[f32]; 3],
    views: [View; 3],
    out: &mut [f32],
    ov: View,
    scale: f32,
) -> bool {
    if !(applicable(views, ov) && simd::fast_on_this_cpu()) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX2 and FMA (checked above).
    unsafe {
        attend_avx2(inputs, views, out, ov, scale)
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of the aarch64 baseline.
    unsafe {
        attend_with::<simd::Neon>(inputs, views, out, ov, scale)
    }
    cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(inputs: [&[f32]; 3], views: [View; 3], out: &mut [f32], ov: View, s: f32) {
    attend_with::<simd::Avx2>(inputs, views, out, ov, s)
}

/// # Safety
/// The CPU runs `V`'s instructions; the views are permutations of their whole tensors.
#[inline(always)]
unsafe fn attend_with<V: simd::Vector>(
    inputs: [&[f32]; 3],
    views: [View; 3],
    out: &mut [f32],
    ov: View,
    scale: f32,
) {
    let [batch, heads, tq, tk, d] = checked_sizes(inputs, views, out, ov);
    let [q, k, v] = inputs;
    let [qv, kv, vv] = views;
    let pad = tk.div_ceil(W) * W;
    let mut kt = vec![0f32; d * pad];
    let mut scores = vec![0f32; R * pad];
    let (q_row, v_row) = (qv.strides[2] as usize, vv.strides[2] as usize);
    let (o_row, o_col) = (ov.strides[2] as usize, ov.strides[3] as usize);
    for b in 0..batch {
        for h in 0..heads {
            let (q0, k0, v0, o0) = (qv.head(b, h), kv.head(b, h), vv.head(b, h), ov.head(b, h));
            // K^T: row c holds dim c of every key (padding stays 0).
            for j in 0..tk {
                let row = k0 + j as isize * kv.strides[2];
                // SAFETY: key j's dims lie inside k (its view covers the tensor); kt holds
                // d rows of pad >= tk.
                unsafe {
                    let (from, to) = (k.as_ptr().offset(row), kt.as_mut_ptr().add(j));
                    for c in 0..d {
                        *to.add(c * pad) = *from.offset(c as isize * kv.strides[3]);
                    }
                }
            }
            for i in (0..tq).step_by(R) {
                let rows = R.min(tq - i);
                let qi = q0 as usize + i * q_row;
                let oi = o0 as usize + i * o_row;
                // SAFETY: rows i..i + rows of this head, dims 0..d, keys 0..pad (of kt and
                // scores), all inside their buffers (lengths asserted above).
                unsafe {
                    let a = Operand::new(q.as_ptr().add(qi), q_row);
                    let s = Dest::new(scores.as_mut_ptr(), pad, 1, [scale; R]);
                    product::<V>(rows, a, Operand::new(kt.as_ptr(), pad), d, pad, s);
                }
                // The softmax's numerators; its denominators scale the output rows.
                let mut inv = [1f32; R];
                for (r, inv) in inv.iter_mut().enumerate().take(rows) {
                    *inv = 1.0 / exp_shifted(&mut scores[r * pad..r * pad + tk]);
                }
                // SAFETY: as above; V's rows 0..tk and the output's rows i..i + rows.
                unsafe {
                    let p = Operand::new(scores.as_ptr(), pad);
                    let vs = Operand::new(v.as_ptr().offset(v0), v_row);
                    let o = Dest::new(out.as_mut_ptr().add(oi), o_row, o_col, inv);
                    product::<V>(rows, p, vs, tk, d, o);
                }
            }
        }
    }
}

/// A row-major matrix from its first element: `(r, c)` at `r * row + c`.
#[derive(Clone, Copy)]
struct Operand {
    at: *const f32,
    row: usize,
}

impl Operand {
    fn new(at: *const f32, row: usize) -> Self {
        Operand { at, row }
    }
}

/// Where a product goes: `(r, c)` at `r * row + c * col`, times row `r`'s scale.
#[derive(Clone, Copy)]
struct Dest {
    at: *mut f32,
    row: usize,
    col: usize,
    scale: [f32; R],
}

impl Dest {
    fn new(at: *mut f32, row: usize, col: usize, scale: [f32; R]) -> Self {
        Dest {
            at,
            row,
            col,
            scale,
        }
    }
}

/// `c[r][0..cols] = scale[r] * sum_k a[r][k] b[k][0..cols]` for `rows <= R` rows, `cols` a
/// multiple of 8.
///
/// # Safety
/// Every element named lies inside its allocation; the CPU runs `V`'s instructions.
#[inline(always)]
unsafe fn product<V: simd::Vector>(
    rows: usize,
    a: Operand,
    b: Operand,
    k: usize,
    cols: usize,
    c: Dest,
) {
    match rows {
        6 => tiles::<V, 6>(a, b, k, cols, c),
        5 => tiles::<V, 5>(a, b, k, cols, c),
        4 => tiles::<V, 4>(a, b, k, cols, c),
        3 => tiles::<V, 3>(a, b, k, cols, c),
        2 => tiles::<V, 2>(a, b, k, cols, c),
        _ => tiles::<V, 1>(a, b, k, cols, c),
    }
}

#[inline(always)]
unsafe fn tiles<V: simd::Vector, const M: usize>(
    a: Operand,
    b: Operand,
    k: usize,
    cols: usize,
    c: Dest,
) {
    let mut j = 0;
    while j + 2 * W <= cols {
        tile::<V, M, 2>(a, b, j, k, c);
        j += 2 * W;
    }
    if j < cols {
        tile::<V, M, 1>(a, b, j, k, c);
    }
}

/// One `M x (N * 8)` tile of the product at column `j`, in `M * N` vector accumulators.
#[inline(always)]
unsafe fn tile<V: simd::Vector, const M: usize, const N: usize>(
    a: Operand,
    b: Operand,
    j: usize,
    k: usize,
    c: Dest,
) {
    let mut acc = [[V::zero(); N]; M];
    let (mut ap, mut bp) = (a.at, b.at.add(j));
    for _ in 0..k {
        let mut bv = [V::zero(); N];
        for (n, x) in bv.iter_mut().enumerate() {
            *x = V::load(bp.add(n * W));
        }
        for (m, acc_m) in acc.iter_mut().enumerate() {
            let x = V::splat(*ap.add(m * a.row));
            for (acc_mn, &y) in acc_m.iter_mut().zip(&bv) {
                *acc_mn = acc_mn.mul_add(x, y);
            }
        }
        ap = ap.add(1);
        bp = bp.add(b.row);
    }
    for (m, acc_m) in acc.iter().enumerate() {
        let scale = V::splat(c.scale[m]);
        for (n, &x) in acc_m.iter().enumerate() {
            let at = c.at.add(m * c.row + (j + n * W) * c.col);
            if c.col == 1 {
                x.mul(scale).store(at);
            } else {
                let mut lanes = [0f32; W];
                x.mul(scale).store(lanes.as_mut_ptr());
                for (l, &y) in lanes.iter().enumerate() {
                    *at.add(l * c.col) = y;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::heads::{naive, noise, strided, Dims, View, PLAIN};
    use super::*;

    /// The tiles against the f64 definition: the decoder's and the encoder's shapes, and
    /// tails of every loop (rows not a multiple of 6, keys not a multiple of 8 or 16, d = 8).
    #[test]
    fn tiles_match_the_definition() {
        for (heads, tq, tk, d) in [
            (2, 197, 197, 32),
            (3, 50, 50, 64),
            (2, 7, 19, 8),
            (1, 1, 3, 16),
        ] {
            let q = noise(heads * tq * d, 1, 8.0);
            let k = noise(heads * tk * d, 2, 8.0);
            let v = noise(heads * tk * d, 3, 2.0);
            let scale = 1.0 / (d as f32).sqrt();
            let view = |t| strided(&[1, heads, t, d], PLAIN).unwrap();
            let views = [view(tq), view(tk), view(tk)];
            let n = Dims { heads, tq, tk, d };
            let want = naive(&q, &k, &v, n, scale);
            let mut out = vec![0f32; q.len()];
            assert!(attend([&q, &k, &v], views, &mut out, view(tq), scale));
            let err = out.iter().zip(&want).map(|(&g, w)| (g as f64 - w).abs());
            let worst = err.fold(0f64, f64::max);
            assert!(worst < 1e-5, "{n:?}: {worst}");
        }
    }

    /// The plans' layouts: Q, K, V as `[b, t, h, d]` (heads axis moved), the output as
    /// `[b, t, d, h]` (what tract's plan wants after attention).
    #[test]
    fn tiles_read_and_write_moved_layouts() {
        let (b, heads, t, d) = (2, 4, 23, 32);
        let q = noise(b * heads * t * d, 4, 8.0);
        let k = noise(q.len(), 5, 8.0);
        let v = noise(q.len(), 6, 2.0);
        let mv = strided(&[b, t, heads, d], [0, 2, 1, 3]).unwrap();
        let ov = strided(&[b, t, d, heads], [0, 3, 1, 2]).unwrap();
        let mut out = vec![0f32; q.len()];
        assert!(attend([&q, &k, &v], [mv; 3], &mut out, ov, 0.25));
        // Element (b, h, t, d) of a tensor through its view, laid out plainly.
        let plain = |x: &[f32], view: View| {
            let mut p = Vec::with_capacity(x.len());
            for bi in 0..b {
                for hi in 0..heads {
                    for ti in 0..t {
                        for di in 0..d {
                            let at = [bi, hi, ti, di].into_iter().zip(view.strides);
                            p.push(x[at.map(|(i, s)| i as isize * s).sum::<isize>() as usize]);
                        }
                    }
                }
            }
            p
        };
        let n = Dims {
            heads: b * heads,
            tq: t,
            tk: t,
            d,
        };
        let want = naive(&plain(&q, mv), &plain(&k, mv), &plain(&v, mv), n, 0.25);
        let got = plain(&out, ov);
        let worst = got.iter().zip(&want).map(|(&g, w)| (g as f64 - w).abs());
        let worst = worst.fold(0f64, f64::max);
        assert!(worst < 1e-5, "{worst}");
    }
}
