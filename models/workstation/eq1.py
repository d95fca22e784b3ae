"""An independent numpy reference for the paper's Eq. 1, written the literal way.

For every mask i and colour channel c the squared error (I^c - R_i^c)^2 is filtered with
the 7x7 Gaussian (sigma 1.4, reflect padding) by a direct 2-D convolution; the filtered
maps are summed over channels, and the N maps averaged into E. The runtime filters once,
after averaging, with a separable filter; the tests check that both agree.
"""

from __future__ import annotations

import numpy as np

from .mae import gaussian_kernel_1d


def filter2d_reflect(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Direct (non-separable) 2-D correlation with reflect padding, in float64."""
    r = kernel.shape[0] // 2
    padded = np.pad(x.astype(np.float64), r, mode="reflect")
    h, w = x.shape
    out = np.zeros((h, w), dtype=np.float64)
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            out += kernel[dy, dx] * padded[dy:dy + h, dx:dx + w]
    return out


def anomaly_map(image: np.ndarray, recon: np.ndarray, size: int = 7,
                sigma: float = 1.4) -> np.ndarray:
    """image [1|C..] as [1, C, H, W]; recon [N, C, H, W] -> E as [H, W] (float64)."""
    k1 = gaussian_kernel_1d(size, sigma).astype(np.float64)
    kernel = np.outer(k1, k1)
    n, c = recon.shape[0], recon.shape[1]
    total = np.zeros(recon.shape[2:], dtype=np.float64)
    for i in range(n):
        for ch in range(c):
            err = (image[0, ch].astype(np.float64) - recon[i, ch].astype(np.float64)) ** 2
            total += filter2d_reflect(err, kernel)
    return total / n
