//! The direct convolution's arithmetic: each output plane is its input planes (one for a
//! depthwise convolution, all of its group's otherwise) convolved with its own small
//! kernels, plus its bias, optionally clamped.
//!
//! For each group the input planes are first copied into a zero-padded scratch, split by column
//! phase when the horizontal stride is above 1 (phase `p` holds the padded columns
//! `p, p + s, p + 2s, ...`). Every tap's contribution to an output row is then one
//! contiguous run of a scratch row: `out[y][x] += k[i][j] * phase[j % s][y * sy + i][x + j / s]`.
//! So the kernel needs no border cases and no strided loads: it keeps up to 32 outputs of a
//! row in registers ([`simd::Vector`], four vectors of 8) and adds one tap at a time. The
//! scratch's borders are zeroed once per call; each plane only rewrites its interior.

use super::super::simd::{self, Vector, W};

/// Geometry of one plane's convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel rows and columns.
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Zero rows / columns added above / left of the input, and below / right.
    pub pad_before: [usize; 2],
    pub pad_after: [usize; 2],
}

impl Window {
    /// The output plane's size for an input plane of `input` (rows, columns), or `None`
    /// where the padded input is smaller than the kernel (or a stride is 0).
    pub fn output(&self, input: [usize; 2]) -> Option<[usize; 2]> {
        let mut out = [0; 2];
        for a in 0..2 {
            let padded = input[a] + self.pad_before[a] + self.pad_after[a];
            if self.stride[a] == 0 || self.kernel[a] == 0 || padded < self.kernel[a] {
                return None;
            }
            out[a] = (padded - self.kernel[a]) / self.stride[a] + 1;
        }
        Some(out)
    }
}

/// What the planes are convolved with: the channels fall into `groups` groups, and output
/// channel `o` (of `bias.len()`) reads the input channels of its group. `taps[o]` are its
/// kernels (`[inputs per group, kernel rows, kernel columns]`, row-major), then `bias[o]`
/// is added, then the result is clamped to `[clamp.0, clamp.1]` when `clamp` is set.
pub struct Filters<'a> {
    pub taps: &'a [f32],
    pub bias: &'a [f32],
    pub groups: usize,
    pub clamp: Option<(f32, f32)>,
}

/// Convolve `input` (`[batch, inputs, rows, cols]`) into output planes `first..` of
/// `[batch, outputs, output rows, output columns]`: `out` holds whole planes from plane
/// `first` on (all of them from 0, or a share for one thread). The caller checks the sizes
/// ([`Window::output`], the channels divide into the groups, one kernel per output and
/// input of its group); wrong sizes panic.
pub fn convolve(
    input: &[f32],
    inputs: usize,
    hw: [usize; 2],
    window: Window,
    f: &Filters,
    first: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd::fast_on_this_cpu() {
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe { convolve_avx2(input, inputs, hw, window, f, first, out) };
            return;
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe { convolve_with::<simd::Neon>(input, inputs, hw, window, f, first, out) };
        return;
    }
    #[allow(unreachable_code)]
    // SAFETY: plain Rust arithmetic.
    unsafe {
        convolve_with::<simd::Portable>(input, inputs, hw, window, f, first, out)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn convolve_avx2(
    input: &[f32],
    inputs: usize,
    hw: [usize; 2],
    window: Window,
    f: &Filters,
    first: usize,
    out: &mut [f32],
) {
    convolve_with::<simd::Avx2>(input, inputs, hw, window, f, first, out)
}

/// The scratch of a group's input planes: per plane, `stride` column phases of `rows`
/// padded rows, `width` floats each (a whole number of vectors of output, plus the
/// widest tap offset).
struct Scratch {
    data: Vec<f32>,
    rows: usize,
    width: usize,
    /// Floats per input plane.
    plane: usize,
}

impl Scratch {
    fn new(out: [usize; 2], w: Window, planes: usize) -> Scratch {
        let [kh, kw] = w.kernel;
        let rows = (out[0] - 1) * w.stride[0] + kh;
        let width = out[1].div_ceil(W) * W + (kw - 1) / w.stride[1];
        let plane = w.stride[1] * rows * width;
        Scratch {
            data: vec![0f32; planes * plane],
            rows,
            width,
            plane,
        }
    }

    /// Copy `plane` (`hw`) into the interior of scratch plane `q`; positions outside the
    /// input keep their zeros.
    ///
    /// # Safety
    /// The CPU runs `V`'s instructions.
    #[inline(always)]
    unsafe fn fill<V: Vector>(&mut self, q: usize, plane: &[f32], hw: [usize; 2], w: Window) {
        let [h, cols] = hw;
        let (s, left) = (w.stride[1], w.pad_before[1]);
        for r in 0..self.rows {
            let Some(iy) = r.checked_sub(w.pad_before[0]).filter(|&iy| iy < h) else {
                continue;
            };
            let src = &plane[iy * cols..][..cols];
            if s == 2 {
                self.fill_pairs::<V>(q, src, r, left);
                continue;
            }
            for phase in 0..s {
                let at = q * self.plane + (phase * self.rows + r) * self.width;
                let dst = &mut self.data[at..at + self.width];
                // Phase column k holds padded column k * s + phase, i.e. input column
                // k * s + phase - left: the input columns from the first of this phase,
                // every s-th.
                let first = (phase + s * left.div_ceil(s) - left) % s;
                let k0 = (first + left) / s;
                let n = cols.saturating_sub(first).div_ceil(s);
                let n = n.min(self.width.saturating_sub(k0));
                if s == 1 {
                    dst[k0..k0 + n].copy_from_slice(&src[first..first + n]);
                    continue;
                }
                let src = src[first..].iter().step_by(s);
                for (d, v) in dst[k0..k0 + n].iter_mut().zip(src) {
                    *d = *v;
                }
            }
        }
    }

    /// One input row into padded row `r` of both phases of a stride of 2: input column
    /// `2m` lands in phase `left % 2` at `left / 2 + m`, column `2m + 1` in the other
    /// phase at `(left + 1) / 2 + m`; sixteen columns at a time through [`Vector::load_pairs`].
    #[inline(always)]
    unsafe fn fill_pairs<V: Vector>(&mut self, q: usize, src: &[f32], r: usize, left: usize) {
        let row = |phase: usize| q * self.plane + (phase * self.rows + r) * self.width;
        let even_at = row(left % 2) + left / 2;
        let odd_at = row((left + 1) % 2) + left.div_ceil(2);
        let (even_end, odd_end) = (row(left % 2) + self.width, row((left + 1) % 2) + self.width);
        let data = self.data.as_mut_ptr();
        let mut m = 0;
        while 2 * m < src.len() && even_at + m + W <= even_end && odd_at + m + W <= odd_end {
            let rest = src.len() - 2 * m;
            let (even, odd) = if rest >= 2 * W {
                V::load_pairs(src.as_ptr().add(2 * m))
            } else {
                // The row's last columns, then zeros: past the input, each phase holds the
                // right padding's zeros anyway.
                let mut last = [0f32; 2 * W];
                last[..rest].copy_from_slice(&src[2 * m..]);
                V::load_pairs(last.as_ptr())
            };
            even.store(data.add(even_at + m));
            odd.store(data.add(odd_at + m));
            m += W;
        }
        for (ix, &v) in src.iter().enumerate().skip(2 * m) {
            let at = if ix % 2 == 0 { even_at } else { odd_at } + ix / 2;
            let end = if ix % 2 == 0 { even_end } else { odd_end };
            if at < end {
                self.data[at] = v;
            }
        }
    }

    /// Where each tap's run of a row starts, relative to the output row's first run, for
    /// `planes` input planes: tap `(q, i, j)` reads plane `q`, phase `j % s`, padded row
    /// `i` down, column `j / s` across.
    fn offsets(&self, w: Window, planes: usize) -> Vec<usize> {
        let [kh, kw] = w.kernel;
        let s = w.stride[1];
        let taps = (0..kh).flat_map(|i| (0..kw).map(move |j| (i, j)));
        let taps: Vec<_> = taps.collect();
        (0..planes)
            .flat_map(|q| taps.iter().map(move |&(i, j)| (q, i, j)))
            .map(|(q, i, j)| q * self.plane + ((j % s) * self.rows + i) * self.width + j / s)
            .collect()
    }
}

/// # Safety
/// The CPU runs `V`'s instructions.
#[inline(always)]
unsafe fn convolve_with<V: Vector>(
    input: &[f32],
    inputs: usize,
    hw: [usize; 2],
    window: Window,
    f: &Filters,
    first: usize,
    out: &mut [f32],
) {
    let (outputs, groups) = (f.bias.len(), f.groups);
    assert!(groups > 0 && outputs > 0);
    assert!(inputs.is_multiple_of(groups) && outputs.is_multiple_of(groups));
    let (per_in, per_out) = (inputs / groups, outputs / groups);
    let taps = per_in * window.kernel[0] * window.kernel[1];
    let o = window.output(hw).expect("a kernel that fits");
    let (in_len, out_len) = (hw[0] * hw[1], o[0] * o[1]);
    assert!(f.taps.len() == outputs * taps && in_len > 0 && out_len > 0);
    assert!(input.len().is_multiple_of(in_len * inputs));
    let batch = input.len() / (in_len * inputs);
    assert!(out.len().is_multiple_of(out_len));
    assert!(first + out.len() / out_len <= batch * outputs);
    let mut scratch = Scratch::new(o, window, per_in);
    let offsets = scratch.offsets(window, per_in);
    // The (batch, group) whose input planes the scratch holds.
    let mut filled = None;
    for (p, dst) in (first..).zip(out.chunks_exact_mut(out_len)) {
        let (b, oc) = (p / outputs, p % outputs);
        let g = oc / per_out;
        if filled != Some((b, g)) {
            for q in 0..per_in {
                let c = b * inputs + g * per_in + q;
                scratch.fill::<V>(q, &input[c * in_len..][..in_len], hw, window);
            }
            filled = Some((b, g));
        }
        let run = Run {
            offsets: &offsets,
            taps: &f.taps[oc * taps..][..taps],
            bias: f.bias[oc],
            clamp: f.clamp,
            row_step: window.stride[0] * scratch.width,
        };
        output_plane::<V>(&scratch, &run, o, dst);
    }
}

/// What every run of one plane shares.
struct Run<'a> {
    /// Per tap, where its values start relative to the run's first ([`Scratch::offsets`]).
    offsets: &'a [usize],
    /// The channel's kernel, in the same order.
    taps: &'a [f32],
    bias: f32,
    clamp: Option<(f32, f32)>,
    /// Scratch floats from one output row's inputs to the next's.
    row_step: usize,
}

/// One output plane (`o` = rows, columns) in runs of 4 rows x 16 columns (8 independent
/// sums: enough to keep the FMA units busy), then narrower and shorter runs (2 rows, then 1)
/// at the edges;
/// the last columns of a row that are not a whole vector go through a buffer.
#[inline(always)]
unsafe fn output_plane<V: Vector>(s: &Scratch, run: &Run, o: [usize; 2], dst: &mut [f32]) {
    let [ho, wo] = o;
    let mut y = 0;
    while y < ho {
        let rows = match ho - y {
            4.. => 4,
            2 | 3 => 2,
            _ => 1,
        };
        let base = s.data.as_ptr().add(y * run.row_step);
        let out = dst.as_mut_ptr().add(y * wo);
        let mut x = 0;
        while x + 2 * W <= wo {
            match rows {
                4 => tile::<V, 4, 2>(base.add(x), run, out.add(x), wo),
                2 => tile::<V, 2, 2>(base.add(x), run, out.add(x), wo),
                _ => tile::<V, 1, 2>(base.add(x), run, out.add(x), wo),
            }
            x += 2 * W;
        }
        while x + W <= wo {
            match rows {
                4 => tile::<V, 4, 1>(base.add(x), run, out.add(x), wo),
                2 => tile::<V, 2, 1>(base.add(x), run, out.add(x), wo),
                _ => tile::<V, 1, 1>(base.add(x), run, out.add(x), wo),
            }
            x += W;
        }
        if x < wo {
            let mut tail = [0f32; 4 * W];
            match rows {
                4 => tile::<V, 4, 1>(base.add(x), run, tail.as_mut_ptr(), W),
                2 => tile::<V, 2, 1>(base.add(x), run, tail.as_mut_ptr(), W),
                _ => tile::<V, 1, 1>(base.add(x), run, tail.as_mut_ptr(), W),
            }
            for r in 0..rows {
                dst[(y + r) * wo + x..][..wo - x].copy_from_slice(&tail[r * W..][..wo - x]);
            }
        }
        y += rows;
    }
}

/// `RY` output rows x `RX` vectors from `base` (the scratch at the tile's first input),
/// written at `dst` with `dst_row` floats between rows: `bias + sum over taps t of
/// taps[t] * base[offsets[t] + row * row_step..]`, clamped.
///
/// # Safety
/// The tile's columns start at most `RX * W` before the output row's length rounded up to
/// whole vectors (what the scratch is wide for) and its rows exist; `dst` has room.
#[inline(always)]
unsafe fn tile<V: Vector, const RY: usize, const RX: usize>(
    base: *const f32,
    run: &Run,
    dst: *mut f32,
    dst_row: usize,
) {
    let mut acc = [[V::splat(run.bias); RX]; RY];
    for (&at, &tap) in run.offsets.iter().zip(run.taps) {
        let src = base.add(at);
        let tap = V::splat(tap);
        for (r, row) in acc.iter_mut().enumerate() {
            for (n, a) in row.iter_mut().enumerate() {
                *a = a.mul_add(V::load(src.add(r * run.row_step + n * W)), tap);
            }
        }
    }
    if let Some((low, high)) = run.clamp {
        let (low, high) = (V::splat(low), V::splat(high));
        for a in acc.iter_mut().flatten() {
            *a = a.max(low).min(high);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (n, a) in row.iter().enumerate() {
            a.store(dst.add(r * dst_row + n * W));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::test_values::noise;
    use super::*;

    /// The definition, in f64, one output at a time.
    fn naive(input: &[f32], inputs: usize, hw: [usize; 2], w: Window, f: &Filters) -> Vec<f64> {
        let o = w.output(hw).unwrap();
        let outputs = f.bias.len();
        let (per_in, per_out) = (inputs / f.groups, outputs / f.groups);
        let taps = per_in * w.kernel[0] * w.kernel[1];
        let batch = input.len() / (inputs * hw[0] * hw[1]);
        let mut out = Vec::new();
        for (b, oc) in (0..batch).flat_map(|b| (0..outputs).map(move |oc| (b, oc))) {
            for (y, x) in (0..o[0]).flat_map(|y| (0..o[1]).map(move |x| (y, x))) {
                let mut v = f.bias[oc] as f64;
                for (q, i, j) in (0..per_in).flat_map(|q| {
                    (0..w.kernel[0]).flat_map(move |i| (0..w.kernel[1]).map(move |j| (q, i, j)))
                }) {
                    let iy = (y * w.stride[0] + i) as isize - w.pad_before[0] as isize;
                    let ix = (x * w.stride[1] + j) as isize - w.pad_before[1] as isize;
                    if iy < 0 || ix < 0 || iy >= hw[0] as isize || ix >= hw[1] as isize {
                        continue;
                    }
                    let c = b * inputs + (oc / per_out) * per_in + q;
                    let at = (c * hw[0] + iy as usize) * hw[1] + ix as usize;
                    let k = f.taps[oc * taps + (q * w.kernel[0] + i) * w.kernel[1] + j];
                    v += k as f64 * input[at] as f64;
                }
                if let Some((lo, hi)) = f.clamp {
                    v = v.clamp(lo as f64, hi as f64);
                }
                out.push(v);
            }
        }
        out
    }

    fn worst(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(&g, w)| (g as f64 - w).abs())
            .fold(0.0, f64::max)
    }

    /// The extractor's geometries (3x3 and 5x5, strides 1 and 2, TensorFlow's asymmetric
    /// "same" padding) and odd ones (tails of every loop, 1-wide planes, stride 3, a 1x1
    /// kernel), with and without the clamp, against the definition; each as a depthwise
    /// convolution (3 channels), a dense one (3 inputs to 4 outputs, as the extractor's
    /// stem) and a grouped one (4 inputs to 6 outputs in 2 groups).
    #[test]
    fn planes_match_the_definition() {
        let cases = [
            ([112, 112], [3, 3], [2, 2], [0, 0], [1, 1]),
            ([56, 56], [5, 5], [2, 2], [1, 1], [2, 2]),
            ([28, 28], [5, 5], [1, 1], [2, 2], [2, 2]),
            ([14, 14], [3, 3], [1, 1], [1, 1], [1, 1]),
            ([13, 37], [3, 5], [1, 2], [0, 2], [2, 1]),
            ([9, 1], [3, 1], [2, 1], [1, 0], [1, 0]),
            ([10, 41], [4, 4], [3, 3], [0, 3], [0, 0]),
            ([5, 7], [1, 1], [1, 1], [0, 0], [0, 0]),
        ];
        for (seed, (hw, kernel, stride, before, after)) in cases.into_iter().enumerate() {
            let w = Window {
                kernel,
                stride,
                pad_before: before,
                pad_after: after,
            };
            let batch = 2;
            let seed = seed as u64 * 10;
            let o = w.output(hw).unwrap();
            for (inputs, outputs, groups) in [(3, 3, 3), (3, 4, 1), (4, 6, 2)] {
                let input = noise(batch * inputs * hw[0] * hw[1], seed, 4.0);
                let per_in = inputs / groups;
                let taps = noise(outputs * per_in * kernel[0] * kernel[1], seed + 1, 1.0);
                let bias = noise(outputs, seed + 2, 1.0);
                for clamp in [None, Some((0.0, 6.0))] {
                    let f = Filters {
                        taps: &taps,
                        bias: &bias,
                        groups,
                        clamp,
                    };
                    let want = naive(&input, inputs, hw, w, &f);
                    let mut got = vec![f32::NAN; batch * outputs * o[0] * o[1]];
                    convolve(&input, inputs, hw, w, &f, 0, &mut got);
                    let e = worst(&got, &want);
                    let case = format!("{w:?} on {hw:?}, {inputs} -> {outputs} / {groups}");
                    assert!(e < 1e-4, "{case}, clamp {clamp:?}: {e}");
                    // The portable lanes (x86-64 CPUs without AVX2) give the same.
                    let mut portable = vec![f32::NAN; got.len()];
                    // SAFETY: plain Rust arithmetic.
                    unsafe {
                        convolve_with::<simd::Portable>(&input, inputs, hw, w, &f, 0, &mut portable)
                    };
                    let e = worst(&portable, &want);
                    assert!(e < 1e-4, "portable, {case}: {e}");
                    // Split into shares of planes (as threads run it): the same floats.
                    let plane = o[0] * o[1];
                    let mut shares = vec![f32::NAN; got.len()];
                    let split = (got.len() / plane / 3).max(1) * plane;
                    for (i, share) in shares.chunks_mut(split).enumerate() {
                        convolve(&input, inputs, hw, w, &f, i * split / plane, share);
                    }
                    assert_eq!(shares, got, "shares, {case}");
                }
            }
        }
    }

    #[test]
    fn window_sizes() {
        let w = Window {
            kernel: [3, 3],
            stride: [2, 2],
            pad_before: [0, 0],
            pad_after: [1, 1],
        };
        assert_eq!(w.output([112, 112]), Some([56, 56]));
        assert_eq!(w.output([1, 1]), None);
        let zero = Window {
            stride: [0, 1],
            ..w
        };
        assert_eq!(zero.output([8, 8]), None);
    }
}
