"""The numpy reference for few-shot MAEDAY's per-pixel normalisation (the runtime's
`detect::pixel_norm` in `crates/maeday-core/src/detect/pixel_norm.rs`), in float64.

From K good maps E_k: mu = mean_k E_k; var = mean_k (E_k - mu)^2, filtered with a 25 x 25
Gaussian (sigma 4, reflect padding; skipped on maps no wider than its radius); s = the
standard deviation of every good pixel around their global mean; sigma = sqrt(var + (0.5 s)^2)
(1 where that is 0). A map E becomes z = (E - mu) / sigma; its image score is the mean of its
top ceil(1%) pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .eq1 import filter2d_reflect
from .mae import gaussian_kernel_1d

SMOOTH_SIGMA = 4.0
FLOOR = 0.5
TOP_FRACTION = 0.01


def fit(goods: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    g = np.stack([x.astype(np.float64) for x in goods])
    mu = g.mean(axis=0)
    var = ((g - mu) ** 2).mean(axis=0)
    size = 2 * int(np.ceil(3 * SMOOTH_SIGMA)) + 1
    if size // 2 < min(var.shape):
        k1 = gaussian_kernel_1d(size, SMOOTH_SIGMA).astype(np.float64)
        var = filter2d_reflect(var, np.outer(k1, k1))
    pooled = g.std()
    sigma = np.sqrt(np.maximum(var, 0) + (FLOOR * pooled) ** 2)
    return mu, np.where(sigma > 1e-12, sigma, 1.0)


def top_k_mean(z: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    v = np.sort(z.ravel())[::-1]
    k = min(max(int(np.ceil(fraction * v.size)), 1), v.size)
    return float(v[:k].mean())


def write_reference(ref: Path) -> Path:
    """Seeded maps shaped like MAEDAY's (a shared structure + noise), K = 3 and K = 1."""
    rng = np.random.default_rng(20)
    h, w = 24, 32
    yy, xx = np.mgrid[:h, :w]
    scene = 1.0 + 2.0 * (np.abs(xx - 12) < 2) + 0.05 * yy
    goods = [(scene + rng.gamma(2.0, 0.2, (h, w))).astype(np.float32) for _ in range(3)]
    test = (scene + rng.gamma(2.0, 0.2, (h, w))).astype(np.float32)
    test[5:9, 20:25] += 3.0
    cases = []
    for gs in (goods, goods[:1]):
        mu, sigma = fit(gs)
        z = (test.astype(np.float64) - mu) / sigma
        cases.append({"good": [g.ravel().tolist() for g in gs], "mean": mu.ravel().tolist(),
                      "sigma": sigma.ravel().tolist(), "z": z.ravel().tolist(),
                      "top": top_k_mean(z)})
    out = ref / "pixel-norm.json"
    out.write_text(json.dumps({"width": w, "height": h, "test": test.ravel().tolist(),
                               "cases": cases}))
    return out
