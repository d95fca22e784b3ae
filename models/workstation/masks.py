"""Mask schedules, bit-for-bit identical to `src/model/schedule.rs`.

A schedule is a pure function of (kind, N, K, number of patches, seed), so two devices (or
the workstation and a device) hide the same patches for the same frame. The generator is
SplitMix64 and the shuffle is Fisher-Yates with a multiply-shift bounded draw: both fit in a
few lines in any language, which is why we do not use a library RNG whose stream may
change between versions.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """A draw in [0, n): the high 64 bits of a 128-bit product (bias < n / 2^64)."""
        return (self.next_u64() * n) >> 64

    def permutation(self, n: int) -> list[int]:
        items = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]
        return items


def schedule(kind: str, n_masks: int, keep: int, num_patches: int, seed: int) -> np.ndarray:
    """The [N, K] int64 keep-indices (sorted within each mask) of a schedule.

    - random: each mask keeps its own random K of the patches (the paper);
    - balanced: each random permutation is cut into num_patches/K disjoint keep-sets, so
      every patch is visible (and hidden) equally often when N is a multiple of that count.
    """
    if not 0 < keep <= num_patches:
        raise ValueError(f"keep {keep} must be in 1..={num_patches}")
    rng = SplitMix64(seed)
    masks: list[list[int]] = []
    if kind == "random":
        for _ in range(n_masks):
            masks.append(sorted(rng.permutation(num_patches)[:keep]))
    elif kind == "balanced":
        if num_patches % keep != 0:
            raise ValueError(f"balanced needs K ({keep}) to divide the patch count ({num_patches})")
        while len(masks) < n_masks:
            perm = rng.permutation(num_patches)
            for g in range(num_patches // keep):
                if len(masks) < n_masks:
                    masks.append(sorted(perm[g * keep:(g + 1) * keep]))
    else:
        raise ValueError(f"unknown schedule kind {kind!r} (expected random or balanced)")
    return np.asarray(masks, dtype=np.int64)
