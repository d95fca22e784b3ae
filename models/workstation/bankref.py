"""An independent numpy reference for the memory bank's anomaly map (the runtime's
`bank::scoring::bank_map` in `src/bank/scoring.rs`), written the literal way, in float64.

For every query patch: the Euclidean distance to every bank row, the smallest kept
(the runtime uses one sgemm and re-measures the winner). The 28 x 28 distance grid is
resized to 224 x 224 with half-pixel centres (torch's `interpolate(mode="bilinear",
align_corners=False)`), then filtered with a 25 x 25 Gaussian, sigma 4, reflect padding.
"""

from __future__ import annotations

import numpy as np

from .eq1 import filter2d_reflect
from .mae import gaussian_kernel_1d

SIGMA = 4.0
SIZE = 2 * int(np.ceil(3 * SIGMA)) + 1  # 25


def nearest_distances(bank: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """bank [R, D], queries [Q, D] -> [Q] distance to the nearest bank row."""
    b = bank.astype(np.float64)
    out = np.empty(len(queries))
    for i, q in enumerate(queries.astype(np.float64)):
        out[i] = np.sqrt(((b - q) ** 2).sum(axis=1).min())
    return out


def upsample_bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """[g, g] -> [size, size], half-pixel centres, edges clamped."""
    g = grid.shape[0]
    x = np.maximum((np.arange(size) + 0.5) * g / size - 0.5, 0.0)
    x0 = np.minimum(np.floor(x).astype(int), g - 1)
    x1 = np.minimum(x0 + 1, g - 1)
    f = x - x0
    rows = grid[x0] * (1 - f)[:, None] + grid[x1] * f[:, None]
    return rows[:, x0] * (1 - f)[None, :] + rows[:, x1] * f[None, :]


def bank_map(bank: np.ndarray, features: np.ndarray, size: int = 224) -> np.ndarray:
    """bank [R, D]; features [D, g, g] (the extractor's output) -> map [size, size]."""
    d, g, _ = features.shape
    queries = features.reshape(d, g * g).T
    dist = nearest_distances(bank, queries).reshape(g, g)
    k1 = gaussian_kernel_1d(SIZE, SIGMA).astype(np.float64)
    return filter2d_reflect(upsample_bilinear(dist, size), np.outer(k1, k1))
