//! The PatchCore-style memory bank: patch features of good images, thinned by greedy
//! coreset selection, and exact nearest-neighbour distances for the patches of a frame.
//!
//! A patch far from every good patch is anomalous; its distance to the nearest bank row is
//! its score. Banks from a few good frames hold thousands to tens of thousands of rows,
//! small enough for exact search: distances come from one matrix product
//! (`|q|^2 + |b|^2 - 2 q.b`, through the `matrixmultiply` sgemm), and the winner's
//! distance is then recomputed directly so cancellation in that formula cannot bias it.

use anyhow::{ensure, Result};

use crate::model::schedule::SplitMix64;

/// Rows of `dim` features, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Features {
    pub fn new(dim: usize, data: Vec<f32>) -> Result<Features> {
        ensure!(dim > 0, "feature dimension must be at least 1");
        ensure!(
            data.len().is_multiple_of(dim),
            "{} values are not rows of {dim} features",
            data.len()
        );
        Ok(Features { dim, data })
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Features {
        let mut data = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            data.extend_from_slice(self.row(i));
        }
        Features {
            dim: self.dim,
            data,
        }
    }
}

fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// A seeded Gaussian random projection `dim -> out` (Johnson-Lindenstrauss): distances
/// between projected rows approximate the originals, at a fraction of the cost.
fn project(f: &Features, out: usize, seed: u64) -> Features {
    let mut rng = SplitMix64(seed);
    // Box-Muller on SplitMix64 draws; scaled so squared norms are preserved in expectation.
    let scale = (1.0 / out as f64).sqrt();
    let mut matrix = vec![0f32; f.dim * out];
    for pair in matrix.chunks_mut(2) {
        let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt() * scale;
        let t = 2.0 * std::f64::consts::PI * u2;
        pair[0] = (r * t.cos()) as f32;
        if pair.len() > 1 {
            pair[1] = (r * t.sin()) as f32;
        }
    }
    let rows = f.rows();
    let mut data = vec![0f32; rows * out];
    // data[rows x out] = f[rows x dim] . matrix[dim x out]
    unsafe {
        matrixmultiply::sgemm(
            rows,
            f.dim,
            out,
            1.0,
            f.data.as_ptr(),
            f.dim as isize,
            1,
            matrix.as_ptr(),
            out as isize,
            1,
            0.0,
            data.as_mut_ptr(),
            out as isize,
            1,
        );
    }
    Features { dim: out, data }
}

/// Greedy coreset selection (k-center, as in PatchCore): start from a seeded random row,
/// then repeatedly take the row farthest from everything taken so far, until
/// `ceil(fraction * rows)` rows are taken. Distances are measured after a seeded random
/// projection to `projection_dim` features (when that is smaller than the features).
/// Returns the chosen row indices in the order they were taken.
pub fn coreset(f: &Features, fraction: f64, projection_dim: usize, seed: u64) -> Vec<usize> {
    let n = f.rows();
    if n == 0 {
        return Vec::new();
    }
    let k = ((fraction.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
    let projected;
    let space = if projection_dim > 0 && projection_dim < f.dim {
        projected = project(f, projection_dim, seed);
        &projected
    } else {
        f
    };
    let mut chosen = Vec::with_capacity(k);
    let mut nearest = vec![f32::INFINITY; n];
    let mut next = SplitMix64(seed ^ 0x5EED_C0DE).below(n);
    while chosen.len() < k {
        chosen.push(next);
        let c = space.row(next);
        let mut far = (0usize, -1f32);
        for (i, d) in nearest.iter_mut().enumerate() {
            *d = d.min(squared_distance(space.row(i), c));
            if *d > far.1 {
                far = (i, *d);
            }
        }
        if far.1 <= 0.0 {
            break; // every row coincides with a chosen one
        }
        next = far.0;
    }
    chosen
}

/// The bank: rows of good-patch features, searched exactly.
#[derive(Debug, Clone)]
pub struct MemoryBank {
    rows: Features,
    norms: Vec<f32>,
}

impl MemoryBank {
    pub fn new(rows: Features) -> Result<MemoryBank> {
        ensure!(rows.rows() > 0, "a memory bank needs at least one row");
        let norms = (0..rows.rows())
            .map(|i| rows.row(i).iter().map(|v| v * v).sum())
            .collect();
        Ok(MemoryBank { rows, norms })
    }

    pub fn len(&self) -> usize {
        self.rows.rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dim(&self) -> usize {
        self.rows.dim
    }

    pub fn features(&self) -> &Features {
        &self.rows
    }

    /// The Euclidean distance from each query row to its nearest bank row.
    pub fn nearest(&self, queries: &Features) -> Result<Vec<f32>> {
        ensure!(
            queries.dim == self.dim(),
            "queries have {} features, the bank {}",
            queries.dim,
            self.dim()
        );
        let (q, b, d) = (queries.rows(), self.len(), self.dim());
        let mut out = Vec::with_capacity(q);
        // Blocks of queries keep the product matrix small (BLOCK x bank rows).
        const BLOCK: usize = 256;
        let mut dots = vec![0f32; BLOCK.min(q.max(1)) * b];
        for start in (0..q).step_by(BLOCK) {
            let rows = BLOCK.min(q - start);
            // dots[rows x b] = queries[start..][rows x d] . bank^T[d x b]
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    d,
                    b,
                    1.0,
                    queries.data[start * d..].as_ptr(),
                    d as isize,
                    1,
                    self.rows.data.as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    dots.as_mut_ptr(),
                    b as isize,
                    1,
                );
            }
            for r in 0..rows {
                let row = &dots[r * b..(r + 1) * b];
                let (best, _) = row.iter().zip(&self.norms).enumerate().fold(
                    (0usize, f32::INFINITY),
                    |acc, (j, (dot, norm))| {
                        // |q|^2 is the same for every j: leave it out of the comparison.
                        let v = norm - 2.0 * dot;
                        if v < acc.1 {
                            (j, v)
                        } else {
                            acc
                        }
                    },
                );
                let exact = squared_distance(queries.row(start + r), self.rows.row(best));
                out.push(exact.sqrt());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_features(rows: usize, dim: usize, seed: u64) -> Features {
        let mut rng = SplitMix64(seed);
        let data = (0..rows * dim)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        Features::new(dim, data).unwrap()
    }

    /// The largest distance from any row to its nearest chosen row.
    fn covering_radius(f: &Features, chosen: &[usize]) -> f32 {
        (0..f.rows())
            .map(|i| {
                chosen
                    .iter()
                    .map(|&c| squared_distance(f.row(i), f.row(c)))
                    .fold(f32::INFINITY, f32::min)
            })
            .fold(0.0, f32::max)
            .sqrt()
    }

    /// Patch features are clustered (background, edges, texture), with rare kinds of
    /// patch: one big cluster of 1025 rows and 39 small ones of 25.
    fn clustered_features(dim: usize, seed: u64) -> Features {
        let centers = random_features(40, dim, seed);
        let noise = random_features(2000, dim, seed + 1);
        let mut data = Vec::with_capacity(2000 * dim);
        for i in 0..2000 {
            let c = if i < 1025 { 0 } else { 1 + (i - 1025) / 25 };
            for k in 0..dim {
                data.push(10.0 * centers.row(c)[k] + 0.2 * noise.row(i)[k]);
            }
        }
        Features::new(dim, data).unwrap()
    }

    #[test]
    fn coreset_is_deterministic_per_seed_and_covers_better_than_chance() {
        let f = clustered_features(64, 1);
        let a = coreset(&f, 0.05, 16, 7);
        assert_eq!(a.len(), 100);
        assert_eq!(a, coreset(&f, 0.05, 16, 7), "same seed, same coreset");
        assert_ne!(a, coreset(&f, 0.05, 16, 8), "another seed, another coreset");
        let mut unique = a.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), a.len(), "no row twice");
        // Greedy k-center keeps a row of every rare cluster; a random subset of the same
        // size misses some, and its covering radius jumps to a distance between clusters.
        let random: Vec<usize> =
            crate::model::schedule::seeded_permutation(f.rows(), 3)[..a.len()].to_vec();
        let (greedy_r, random_r) = (covering_radius(&f, &a), covering_radius(&f, &random));
        assert!(
            greedy_r < 0.5 * random_r,
            "greedy {greedy_r} vs random {random_r}"
        );
        for c in 1..40 {
            let members = 1025 + (c - 1) * 25..1025 + c * 25;
            assert!(
                a.iter().any(|i| members.contains(i)),
                "cluster {c} has no row"
            );
        }
        // Without projection too; the whole set at fraction 1.
        assert_eq!(coreset(&f, 0.01, 0, 7).len(), 20);
        assert_eq!(coreset(&f, 1.0, 16, 7).len(), 2000);
    }

    #[test]
    fn nearest_matches_brute_force_exactly() {
        let bank = random_features(700, 48, 2);
        let queries = random_features(600, 48, 3);
        let got = MemoryBank::new(bank.clone())
            .unwrap()
            .nearest(&queries)
            .unwrap();
        assert_eq!(got.len(), 600);
        for (i, g) in got.iter().enumerate() {
            let want = (0..bank.rows())
                .map(|j| squared_distance(queries.row(i), bank.row(j)))
                .fold(f32::INFINITY, f32::min)
                .sqrt();
            assert!(
                (g - want).abs() <= 1e-5 * want.max(1.0),
                "query {i}: {g} vs {want}"
            );
        }
        // A query equal to a bank row is at distance 0.
        let d = MemoryBank::new(bank.clone())
            .unwrap()
            .nearest(&bank.select(&[5, 9]))
            .unwrap();
        assert_eq!(d, [0.0, 0.0]);
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(Features::new(3, vec![0.0; 7]).is_err());
        assert!(Features::new(0, vec![]).is_err());
        assert!(MemoryBank::new(Features::new(4, vec![]).unwrap()).is_err());
        let bank = MemoryBank::new(random_features(10, 8, 1)).unwrap();
        assert!(bank.nearest(&random_features(3, 4, 1)).is_err());
    }
}
