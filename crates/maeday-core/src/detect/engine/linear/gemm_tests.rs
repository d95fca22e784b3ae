//! [`super`]'s tiles and GELU against f64 definitions.

use super::super::super::test_values::noise;
use super::*;

/// `erf` to 1e-8: its Taylor series for |x| < 3, and beyond, 1 minus the asymptotic
/// series of `erfc` (four terms).
fn erf64(x: f64) -> f64 {
    if x.abs() >= 3.0 {
        let (t, z) = (x.abs(), 1.0 / (2.0 * x * x));
        let series = 1.0 - z + 3.0 * z * z - 15.0 * z * z * z;
        let erfc = (-t * t).exp() / (t * std::f64::consts::PI.sqrt()) * series;
        return (1.0 - erfc).copysign(x);
    }
    // erf x = 2/sqrt(pi) sum (-1)^n x^(2n+1) / (n! (2n+1))
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// Row `r` of `a` as `rows` lays it out, in f64.
fn row(a: &[f32], rows: Rows, r: usize) -> Vec<f64> {
    let start = rows.start(r);
    (0..rows.heads * rows.k)
        .map(|q| a[start + q / rows.k * rows.per_group * rows.k + q % rows.k] as f64)
        .collect()
}

fn definition(a: &[f32], rows: Rows, w: &[f32], bias: &[f32], n: usize, then: Then) -> Vec<f64> {
    let count = rows.count(a.len());
    let mut c = vec![0f64; count * n];
    for i in 0..count {
        let x = row(a, rows, i);
        for j in 0..n {
            let mut s = bias[j] as f64;
            for (q, x) in x.iter().enumerate() {
                s += x * w[q * n + j] as f64;
            }
            if then == Then::Gelu {
                s = s * 0.5 * (1.0 + erf64(s / 2f64.sqrt()));
            }
            c[i * n + j] = s;
        }
    }
    c
}

/// The graph's shapes (rows cut short), and tails: rows not a multiple of 6 or of the
/// block, a last panel of 8 columns, k = 1; then heads before an attention's output
/// projection (tiles cross from one group to the next).
const CASES: [(usize, Rows, usize); 8] = [
    (
        100,
        Rows {
            heads: 1,
            per_group: 1,
            k: 192,
        },
        768,
    ),
    (
        61,
        Rows {
            heads: 1,
            per_group: 1,
            k: 768,
        },
        192,
    ),
    (
        97,
        Rows {
            heads: 1,
            per_group: 1,
            k: 128,
        },
        512,
    ),
    (
        13,
        Rows {
            heads: 1,
            per_group: 1,
            k: 7,
        },
        24,
    ),
    (
        5,
        Rows {
            heads: 1,
            per_group: 1,
            k: 1,
        },
        8,
    ),
    (
        200,
        Rows {
            heads: 1,
            per_group: 1,
            k: 16,
        },
        40,
    ),
    (
        3 * 50,
        Rows {
            heads: 3,
            per_group: 50,
            k: 64,
        },
        192,
    ),
    (
        2 * 13,
        Rows {
            heads: 4,
            per_group: 13,
            k: 8,
        },
        24,
    ),
];

fn check_all(run: impl Fn(&[f32], Rows, &Packed, &[f32], Then, &mut [f32]), lanes: &str) {
    for (count, rows, n) in CASES {
        let k = rows.heads * rows.k;
        let a = noise(count * k, 1, 1.0);
        let w = noise(k * n, 2, 2.0 / (k as f32).sqrt());
        let bias = noise(n, 3, 0.5);
        let packed = Packed::new(&w, k, n);
        for then in [Then::Nothing, Then::Gelu] {
            let mut c = vec![f32::NAN; count * n];
            run(&a, rows, &packed, &bias, then, &mut c);
            let want = definition(&a, rows, &w, &bias, n, then);
            let worst = c
                .iter()
                .zip(&want)
                .map(|(&g, w)| (g as f64 - w).abs())
                .fold(0f64, f64::max);
            assert!(
                worst < 2e-5,
                "{lanes} {count} rows {rows:?} n {n} {then:?}: {worst}"
            );
        }
    }
}

#[test]
fn tiles_match_the_definition_on_every_lane_type() {
    check_all(
        |a, r, w, b, t, c| unsafe { gemm_on::<simd::Portable>(a, r, w, b, t, c) },
        "portable",
    );
    check_all(|a, r, w, b, t, c| gemm(a, r, 0, w, b, t, c), "this CPU's");
}

/// Rows from `first` on (a thread's share) are the same floats as in one call.
#[test]
fn a_share_of_the_rows_is_the_same_as_the_whole() {
    for (count, rows, n) in CASES {
        let k = rows.heads * rows.k;
        let a = noise(count * k, 4, 1.0);
        let packed = Packed::new(&noise(k * n, 5, 0.2), k, n);
        let bias = noise(n, 6, 0.5);
        let mut whole = vec![0f32; count * n];
        gemm(&a, rows, 0, &packed, &bias, Then::Gelu, &mut whole);
        let first = count / 3 + 1;
        let mut share = vec![0f32; (count - first) * n];
        gemm(&a, rows, first, &packed, &bias, Then::Gelu, &mut share);
        assert_eq!(share, whole[first * n..], "{rows:?}");
    }
}

#[test]
fn gelu_matches_erf_to_its_formula_error() {
    let xs: Vec<f32> = (-800..=800).map(|i| i as f32 / 100.0).collect();
    let mut got = xs.clone();
    gelu_in_place(&mut got);
    for (&x, &g) in xs.iter().zip(&got) {
        let x64 = x as f64;
        let want = x64 * 0.5 * (1.0 + erf64(x64 / 2f64.sqrt()));
        assert!(
            (g as f64 - want).abs() < 3e-6 * (1.0 + x64.abs()),
            "{x}: {g} vs {want}"
        );
    }
}
