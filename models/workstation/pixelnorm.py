"""The numpy reference for few-shot MAEDAY's per-pixel normalisation (the runtime's
`detect::pixel_norm` in `crates/maeday-core/src/detect/pixel_norm.rs`), in float64.

From K good maps E_k: mu = mean_k E_k; var = mean_k (E_k - mu)^2, filtered with a 25 x 25
Gaussian (sigma 4, reflect padding; skipped on maps no wider than its radius); s = the
standard deviation of every good pixel around their global mean; sigma = sqrt(var + (0.5 s)^2)
(1 where that is 0). A map E becomes z = (E - mu) / sigma; its image score is the mean of its
top ceil(1%) pixels.

The pooled model (a scene that moves): mu = the global mean of every good pixel, sigma = s,
for every pixel. The scene check: leave one out over the K >= 2 good maps, each normalised
by either model fitted on the others; the model with the lower mean of the held-out maxima
is chosen (ties: per pixel).
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


def fit_pooled(goods: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    g = np.stack([x.astype(np.float64) for x in goods])
    s = g.std()
    return np.full(g.shape[1:], g.mean()), np.full(g.shape[1:], s if s > 1e-12 else 1.0)


def scene_check(goods: list[np.ndarray]) -> dict:
    held = {"per_pixel": [], "pooled": []}
    for i, g in enumerate(goods):
        others = goods[:i] + goods[i + 1:]
        for name, f in (("per_pixel", fit), ("pooled", fit_pooled)):
            mu, sigma = f(others)
            held[name].append(float(((g.astype(np.float64) - mu) / sigma).max()))
    pp, po = np.mean(held["per_pixel"]), np.mean(held["pooled"])
    return {"model": "per-pixel" if pp <= po else "pooled",
            "per_pixel_held_out_max": float(pp), "pooled_held_out_max": float(po)}


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
    # A scene that moves: the same texture shifted by a different amount in every frame.
    tex = rng.gamma(2.0, 0.3, (h, w + 16))
    moving = [(1.0 + tex[:, d:d + w]).astype(np.float32) for d in (0, 5, 11)]
    mu, sigma = fit_pooled(goods)
    pooled = {"mean": mu.ravel().tolist(), "sigma": sigma.ravel().tolist(),
              "z": ((test.astype(np.float64) - mu) / sigma).ravel().tolist()}
    checks = [{"good": [g.ravel().tolist() for g in gs], **scene_check(gs)}
              for gs in (goods, moving)]
    out = ref / "pixel-norm.json"
    out.write_text(json.dumps({"width": w, "height": h, "test": test.ravel().tolist(),
                               "cases": cases, "pooled": pooled, "scene_checks": checks}))
    return out
