"""Training images and the augmentation pipeline.

Pretraining data must never overlap an evaluation set. It comes from two places:
`../shared/data/textures/` (real texture photos, all normal) and the real photographs that
ship inside the scikit-image wheel (astronaut, coffee, the moon, a retina, ...). The sample
frames in `models/samples/` are cut from those same scikit-image photos, which is fine: they
are demo frames, not an evaluation set.

Augmentation is done with PIL + numpy (no torchvision: one fewer 100 MB wheel for CI) and is
driven by a `numpy.random.Generator`, so a seed fixes every crop, flip and jitter.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from .export import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}

# Real photographs inside the scikit-image wheel (CC0 / public domain, see its README).
# Drawings, charts and synthetic images (logo, chessboard, phantom, page, text) are left out.
SKIMAGE_PHOTOS = ("astronaut.png", "camera.png", "cell.png", "chelsea.png", "coffee.png",
                  "coins.png", "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png",
                  "moon.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg",
                  "rocket.jpg", "brick.png", "grass.png", "gravel.png")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def skimage_photos() -> list[Path]:
    import skimage

    root = Path(skimage.__file__).parent / "data"
    return [root / name for name in SKIMAGE_PHOTOS if (root / name).exists()]


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def normalise(rgb01: np.ndarray) -> np.ndarray:
    """[..., 3, H, W] floats in [0, 1] -> the graph's input space (ImageNet mean/std)."""
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    return ((rgb01 - mean) / std).astype(np.float32)


def standardise(rgb01: np.ndarray, mean: float, std: float, eps: float = 1e-3) -> np.ndarray:
    """Per-image contrast standardisation (the manifest's `[input.standardise]`): shift and
    scale all channels of each [3, H, W] image alike so its gray level (the channel mean)
    has `mean` and `std`. The runtime does the same per window (`src/detect/preprocess.rs`)."""
    x = np.asarray(rgb01, np.float64)
    gray = x.mean(axis=-3, keepdims=True)
    m = gray.mean(axis=(-2, -1), keepdims=True)
    sd = gray.std(axis=(-2, -1), keepdims=True)
    return ((x - m) / (sd + eps) * std + mean).astype(np.float32)


def to_array(img: Image.Image) -> np.ndarray:
    """PIL RGB -> [3, H, W] float32 in [0, 1]."""
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0


def square_resize(img: Image.Image, size: int = 224) -> Image.Image:
    """What the runtime's `squash` fit does: a plain resize to size x size."""
    return img.resize((size, size), Image.BILINEAR, reducing_gap=None)


class Augment:
    """Random resized crop (several scales) + rotation + flips + colour/gray jitter.

    `scale` is the crop's area as a fraction of the image, `max_rotation` in degrees (on top
    of a random multiple of 90 degrees), `gray` the probability of a gray frame.
    """

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.05, 1.0),
                 max_rotation: float = 180.0, jitter: float = 0.4, gray: float = 0.3):
        self.size = size
        self.scale = scale
        self.max_rotation = max_rotation
        self.jitter = jitter
        self.gray = gray

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        w, h = img.size
        area = w * h * rng.uniform(*self.scale)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw = int(round(min(w, math.sqrt(area * aspect))))
        ch = int(round(min(h, math.sqrt(area / aspect))))
        angle = float(rng.uniform(-self.max_rotation, self.max_rotation))
        # Crop a window large enough that the rotated crop has no empty corners, where
        # the image allows; otherwise shrink the crop.
        rad = math.radians(angle % 90)
        grow = abs(math.cos(rad)) + abs(math.sin(rad))
        bw, bh = min(w, int(cw * grow) + 2), min(h, int(ch * grow) + 2)
        cw, ch = min(cw, int(bw / grow)), min(ch, int(bh / grow))
        x0 = int(rng.integers(0, w - bw + 1))
        y0 = int(rng.integers(0, h - bh + 1))
        box = img.crop((x0, y0, x0 + bw, y0 + bh))
        if angle:
            box = box.rotate(angle, resample=Image.BILINEAR)
        cx, cy = (bw - cw) // 2, (bh - ch) // 2
        crop = box.crop((cx, cy, cx + max(cw, 1), cy + max(ch, 1)))
        out = crop.resize((self.size, self.size), Image.BILINEAR, reducing_gap=None)
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_TOP_BOTTOM)
        if self.jitter:
            j = self.jitter
            out = ImageEnhance.Brightness(out).enhance(rng.uniform(1 - j, 1 + j))
            out = ImageEnhance.Contrast(out).enhance(rng.uniform(1 - j, 1 + j))
            out = ImageEnhance.Color(out).enhance(rng.uniform(1 - j, 1 + j))
        if rng.random() < self.gray:
            out = out.convert("L").convert("RGB")
        return to_array(out)


def batch(images: list[Image.Image], augment: Augment, rng: np.random.Generator,
          size: int, standardised: tuple[float, float] | None = None) -> np.ndarray:
    """`size` augmented crops of randomly chosen images, normalised: [B, 3, S, S]; each
    crop standardised first when `standardised` = (mean, std) is given."""
    picks = rng.integers(0, len(images), size=size)
    crops = np.stack([augment(images[i], rng) for i in picks])
    if standardised is not None:
        crops = standardise(crops, *standardised)
    return normalise(crops)
