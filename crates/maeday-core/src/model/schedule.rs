//! Mask schedules: which patches each of the N masks keeps visible.
//!
//! A schedule is a pure function of (kind, N, K, patch count, seed), pinned in the model
//! manifest, so two devices give the same score for the same frame. The generator is
//! SplitMix64 with a Fisher-Yates shuffle, mirrored line for line in
//! `models/workstation/masks.py`: a library RNG would be shorter here but does not promise
//! the same stream across versions or languages, and the workstation must reproduce it.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How the keep-sets are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Each mask keeps its own random K patches (the paper).
    Random,
    /// Random permutations cut into `patches / K` disjoint keep-sets, so every patch is
    /// visible equally often when N is a multiple of that count.
    Balanced,
}

impl std::fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScheduleKind::Random => "random",
            ScheduleKind::Balanced => "balanced",
        })
    }
}

impl std::str::FromStr for ScheduleKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "random" => Ok(ScheduleKind::Random),
            "balanced" => Ok(ScheduleKind::Balanced),
            other => bail!("unknown mask schedule {other:?} (expected random or balanced)"),
        }
    }
}

/// The SplitMix64 generator (Steele, Lea, Flood 2014).
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A draw in `0..n`: the high word of a 64x64-bit product (bias below n / 2^64).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut items: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
        items
    }
}

/// A seeded permutation of `0..n` from the same generator (used to pick evaluation
/// subsets reproducibly).
pub fn seeded_permutation(n: usize, seed: u64) -> Vec<usize> {
    SplitMix64(seed).permutation(n)
}

/// N keep-sets of K patch indices each, sorted within a mask; row-major `[N, K]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskSchedule {
    pub kind: ScheduleKind,
    pub masks: usize,
    pub keep: usize,
    pub patches: usize,
    pub seed: u64,
    indices: Vec<i64>,
}

impl MaskSchedule {
    pub fn generate(
        kind: ScheduleKind,
        masks: usize,
        keep: usize,
        patches: usize,
        seed: u64,
    ) -> Result<Self> {
        ensure!(masks > 0, "the number of masks must be at least 1");
        ensure!(
            keep > 0 && keep <= patches,
            "each mask must keep between 1 and {patches} patches, not {keep}"
        );
        let mut rng = SplitMix64(seed);
        let mut indices = Vec::with_capacity(masks * keep);
        let mut push = |set: &[usize]| {
            let mut set = set.to_vec();
            set.sort_unstable();
            indices.extend(set.into_iter().map(|i| i as i64));
        };
        match kind {
            ScheduleKind::Random => {
                for _ in 0..masks {
                    push(&rng.permutation(patches)[..keep]);
                }
            }
            ScheduleKind::Balanced => {
                ensure!(
                    patches.is_multiple_of(keep),
                    "the balanced schedule needs K ({keep}) to divide the patch count ({patches})"
                );
                let mut made = 0;
                while made < masks {
                    let perm = rng.permutation(patches);
                    for set in perm.chunks(keep).take(masks - made) {
                        push(set);
                        made += 1;
                    }
                }
            }
        }
        Ok(MaskSchedule {
            kind,
            masks,
            keep,
            patches,
            seed,
            indices,
        })
    }

    /// The `[N, K]` keep indices, row-major.
    pub fn indices(&self) -> &[i64] {
        &self.indices
    }

    /// The keep indices of mask `i`.
    pub fn mask(&self, i: usize) -> &[i64] {
        &self.indices[i * self.keep..(i + 1) * self.keep]
    }

    /// First 8 bytes of the sha256 of the indices (little-endian i64), in hex: two devices
    /// with the same fingerprint hide exactly the same patches.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for i in &self.indices {
            h.update(i.to_le_bytes());
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A compact id such as `random-n32-k49-s0-1a2b3c4d5e6f7a8b`, reported with every score.
    pub fn id(&self) -> String {
        format!(
            "{}-n{}-k{}-s{}-{}",
            self.kind,
            self.masks,
            self.keep,
            self.seed,
            self.fingerprint()
        )
    }

    /// How many masks show each patch (for coverage checks and diagnostics).
    pub fn visible_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.patches];
        for &i in &self.indices {
            counts[i as usize] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_schedule_and_seed_changes_it() {
        let a = MaskSchedule::generate(ScheduleKind::Random, 32, 49, 196, 0).unwrap();
        let b = MaskSchedule::generate(ScheduleKind::Random, 32, 49, 196, 0).unwrap();
        let c = MaskSchedule::generate(ScheduleKind::Random, 32, 49, 196, 1).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.id(), b.id());
        assert_ne!(a.indices(), c.indices());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn every_mask_keeps_k_distinct_sorted_patches() {
        for kind in [ScheduleKind::Random, ScheduleKind::Balanced] {
            let s = MaskSchedule::generate(kind, 16, 49, 196, 7).unwrap();
            for m in 0..16 {
                let row = s.mask(m);
                assert_eq!(row.len(), 49);
                assert!(
                    row.windows(2).all(|w| w[0] < w[1]),
                    "{kind}: not sorted/distinct"
                );
                assert!(row.iter().all(|&i| (0..196).contains(&i)));
            }
        }
    }

    #[test]
    fn balanced_shows_every_patch_equally_often() {
        for (n, k, l) in [(8, 49, 196), (16, 49, 196), (32, 49, 196), (12, 64, 256)] {
            let s = MaskSchedule::generate(ScheduleKind::Balanced, n, k, l, 3).unwrap();
            let want = n * k / l;
            assert!(
                s.visible_counts().iter().all(|&c| c == want),
                "n={n} k={k} l={l}"
            );
        }
        // The random schedule makes no such promise: at N=8 some patch is seen 0 times
        // or more than twice with overwhelming probability.
        let r = MaskSchedule::generate(ScheduleKind::Random, 8, 49, 196, 3).unwrap();
        assert!(r.visible_counts().iter().any(|&c| c != 2));
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(MaskSchedule::generate(ScheduleKind::Random, 0, 49, 196, 0).is_err());
        assert!(MaskSchedule::generate(ScheduleKind::Random, 4, 0, 196, 0).is_err());
        assert!(MaskSchedule::generate(ScheduleKind::Random, 4, 197, 196, 0).is_err());
        let e = MaskSchedule::generate(ScheduleKind::Balanced, 4, 50, 196, 0).unwrap_err();
        assert!(e.to_string().contains("divide"), "{e}");
    }
}
