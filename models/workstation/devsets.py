"""Dev sets where MAEDAY can work (issue 20, part 4): written to a folder, never committed.

`synth-fod`: a seeded synthetic foreign-object set in the MVTec layout `eval --dataset`
reads (`<scene>/test/{good,<kind>}/NNN.png`, `<scene>/ground_truth/<kind>/NNN_mask.png`).
Each scene is one real texture photo of `../shared/data/textures` seen by a fixed camera:
every frame is the same view with small camera jitter (a shift of up to 3 px, gain +-5%,
sensor noise sigma 2/255), so per-pixel statistics of good frames mean something. The
anomalous frames carry one pasted real object cut-out at a random place, size (5-15% of
the side), angle and opacity (0.5-1):

- `bolt`: the bolt of the conveyor clip (`conveyor/*.gif` frames 2-22), cut by its
  difference from the median empty-belt frame (a real object, a real photo);
- `coin`: a coin of scikit-image's `coins.png` photo (`models/samples/coins.png`), cut by an
  Otsu threshold (a real object photographed on another background);
- `patch`: a blob-shaped patch of ANOTHER texture photo of the set (a texture anomaly in
  the style of DRAEM's synthetic defects, not an object).

The ground-truth mask is where the pasted object's alpha is >= 0.5. The textures are the
ones the shipped MAE was pretrained on (models/README.md): this set measures the scorers on
surfaces the MAE knows, which is the case the paper makes for MAEDAY, not a held-out test.

`conveyor-set`: the conveyor clip as an image-level set (`good/frameNN.png` = frames 0 and
24-36, empty belt; `bolt/frameNN.png` = frames 2-22; the ambiguous 1 and 23, the bolt at the
edge, are left out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
CLIP = DATA / "conveyor" / "bolt-multi-size-detection.gif"
SCENES = ["woodenFloor.jpg", "pavingStone.jpg", "greyTile.jpg"]
KINDS = ["bolt", "coin", "patch"]
SIZE = 256
MARGIN = 4


def clip_frames(path: Path = CLIP) -> list[np.ndarray]:
    im = Image.open(path)
    out = []
    for i in range(im.n_frames):
        im.seek(i)
        out.append(np.asarray(im.convert("RGB")))
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def cutout(rgb: np.ndarray, mask: np.ndarray) -> Image.Image:
    """RGBA crop of `rgb` to the bounding box of `mask` (alpha = mask)."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    alpha = (mask[y0:y1, x0:x1] * 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb[y0:y1, x0:x1], alpha]), "RGBA")


def bolt_cutouts() -> list[Image.Image]:
    frames = clip_frames()
    empty = np.median(np.stack([frames[0]] + frames[24:37]).astype(np.float32), axis=0)
    out = []
    for f in frames[2:23]:
        diff = np.abs(f.astype(np.float32) - empty).max(axis=2) > 40
        diff = ndimage.binary_opening(diff, iterations=1)
        m = ndimage.binary_fill_holes(ndimage.binary_closing(largest_component(diff), iterations=2))
        if m.sum() >= 50:
            out.append(cutout(f, m))
    return out


def otsu(gray: np.ndarray) -> float:
    hist, edges = np.histogram(gray, bins=256, range=(0, 256))
    p = hist / hist.sum()
    w = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * w - mu) ** 2 / np.maximum(w * (1 - w), 1e-12)
    return float(edges[int(np.argmax(between))])


def coin_cutouts() -> list[Image.Image]:
    rgb = np.asarray(Image.open(REPO / "models" / "samples" / "coins.png").convert("RGB"))
    gray = rgb.mean(axis=2)
    fg = ndimage.binary_fill_holes(ndimage.binary_opening(gray > otsu(gray), iterations=2))
    labels, n = ndimage.label(fg)
    out = []
    for i in range(1, n + 1):
        m = labels == i
        if m.sum() >= 150:
            out.append(cutout(rgb, m))
    return out


def blob_mask(rng: np.random.Generator, side: int) -> np.ndarray:
    """A smooth random blob inside a `side` square (thresholded smoothed noise x a disc)."""
    noise = ndimage.gaussian_filter(rng.standard_normal((side, side)), side / 8)
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    disc = 1 - np.hypot(yy, xx) / (side / 2)
    field = disc + noise / (noise.std() + 1e-9) * 0.25
    m = largest_component(field > 0.3)
    return m if m.sum() > 20 else disc > 0.3


def patch_cutout(rng: np.random.Generator, textures: list[Path], scene: str) -> Image.Image:
    others = [t for t in textures if t.name != scene]
    src = np.asarray(Image.open(others[rng.integers(len(others))]).convert("RGB"))
    side = int(rng.integers(48, 96))
    y, x = (int(rng.integers(0, d - side + 1)) for d in src.shape[:2])
    return cutout(src[y:y + side, x:x + side], blob_mask(rng, side))


class Camera:
    """A fixed camera over one texture: the same view, jittered a little per frame."""

    def __init__(self, texture: Path):
        big = SIZE + 2 * MARGIN
        self.view = np.asarray(Image.open(texture).convert("RGB").resize((big, big),
                                                                         Image.BICUBIC))

    def frame(self, rng: np.random.Generator, obj: Image.Image | None = None):
        dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
        crop = self.view[MARGIN + dy:MARGIN + dy + SIZE, MARGIN + dx:MARGIN + dx + SIZE]
        img = crop.astype(np.float32)
        mask = np.zeros((SIZE, SIZE), bool)
        if obj is not None:
            img, mask = paste(rng, img, obj)
        img = img * rng.uniform(0.95, 1.05) + rng.normal(0, 2.0, img.shape)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8), mask


def paste(rng: np.random.Generator, img: np.ndarray, obj: Image.Image):
    """Paste `obj` scaled so its longer side is 5-15% of the frame, rotated by any angle,
    at a random place fully inside, with an opacity of 0.5-1 (a dusty, wet or translucent
    object; at full size and opacity every scorer finds every object: the first version of
    this set, 10-30% and opaque, gave AUROC 1.000 to all of them); returns the image and the
    mask where the object's own alpha is >= 0.5."""
    longer = rng.uniform(0.05, 0.15) * SIZE
    scale = longer / max(obj.size)
    o = obj.resize((max(2, round(obj.width * scale)), max(2, round(obj.height * scale))),
                   Image.BICUBIC)
    o = o.rotate(float(rng.uniform(0, 360)), resample=Image.BICUBIC, expand=True)
    a = np.asarray(o).astype(np.float32)
    h, w = a.shape[:2]
    y, x = int(rng.integers(0, SIZE - h + 1)), int(rng.integers(0, SIZE - w + 1))
    shape = a[..., 3:] / 255.0
    alpha = shape * rng.uniform(0.5, 1.0)
    region = img[y:y + h, x:x + w]
    img[y:y + h, x:x + w] = region * (1 - alpha) + a[..., :3] * alpha
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y:y + h, x:x + w] = shape[..., 0] >= 0.5
    return img, mask


def synth_fod(out: Path, seed: int, scenes: list[str], good: int, per_kind: int) -> None:
    textures = sorted(p for p in (DATA / "textures").iterdir()
                      if p.suffix.lower() in (".jpg", ".png"))
    objects = {"bolt": bolt_cutouts(), "coin": coin_cutouts()}
    print(f"cut-outs: {len(objects['bolt'])} bolts (conveyor clip), "
          f"{len(objects['coin'])} coins (coins.png)")
    for si, scene in enumerate(scenes):
        rng = np.random.default_rng([seed, si])
        cam = Camera(DATA / "textures" / scene)
        root = out / Path(scene).stem
        for kind in ["good"] + KINDS:
            (root / "test" / kind).mkdir(parents=True, exist_ok=True)
            if kind != "good":
                (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(good):
            img, _ = cam.frame(rng)
            Image.fromarray(img).save(root / "test" / "good" / f"{i:03d}.png")
        for kind in KINDS:
            for i in range(per_kind):
                if kind == "patch":
                    obj = patch_cutout(rng, textures, scene)
                else:
                    obj = objects[kind][rng.integers(len(objects[kind]))]
                img, mask = cam.frame(rng, obj)
                Image.fromarray(img).save(root / "test" / kind / f"{i:03d}.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(
                    root / "ground_truth" / kind / f"{i:03d}_mask.png")
        print(f"{root}: {good} good, {per_kind} x {KINDS} anomalous ({SIZE}x{SIZE})")


def conveyor_set(out: Path) -> None:
    frames = clip_frames()
    for d in ("good", "bolt"):
        (out / d).mkdir(parents=True, exist_ok=True)
    good = [0] + list(range(24, 37))
    bolt = list(range(2, 23))
    for i in good:
        Image.fromarray(frames[i]).save(out / "good" / f"frame{i:02d}.png")
    for i in bolt:
        Image.fromarray(frames[i]).save(out / "bolt" / f"frame{i:02d}.png")
    print(f"{out}: {len(good)} empty-belt frames (good), {len(bolt)} bolt frames "
          f"(1 and 23, the bolt at the edge, left out)")


def add_parsers(sub) -> None:
    s = sub.add_parser("synth-fod", help="seeded synthetic foreign-object dev set")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scenes", nargs="+", default=SCENES, help="texture files, one scene each")
    s.add_argument("--good", type=int, default=20, help="good frames per scene")
    s.add_argument("--per-kind", type=int, default=10, help="anomalous frames per object kind")
    s.set_defaults(fn=lambda a: synth_fod(Path(a.out), a.seed, a.scenes, a.good, a.per_kind))
    c = sub.add_parser("conveyor-set", help="the conveyor clip as an image-level eval set")
    c.add_argument("--out", required=True)
    c.set_defaults(fn=lambda a: conveyor_set(Path(a.out)))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_parsers(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args()
    args.fn(args)
