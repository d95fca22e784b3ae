"""`masks-table`: the "How many masks" table (issue 20 part 5) from
`models/evaluate-masks.sh`'s reports: per dev set and mask configuration, zero-shot MAEDAY's
image / pixel / PRO AUROC and inference time per image, mean ± std over three schedule seeds
(the synthetic set: per seed, the mean over its three scenes first)."""

from __future__ import annotations

from pathlib import Path

from .round2 import cell, seed_means

SETS = [("synthetic FOD (3 scenes)", ["synth-woodenFloor", "synth-pavingStone", "synth-greyTile"]),
        ("conveyor clip", ["conveyor"]), ("floor hazards", ["floor"])]
CONFIGS = [("random N = 32 (the model's default)", "random32"),
           ("balanced N = 8", "balanced8"), ("random N = 8", "random8")]
METRICS = [("image", "image_auroc"), ("pixel", "pixel_auroc"), ("PRO@0.3", "pro_0_3")]


def per_seed(out: Path, names: list[str], cfg: str, pick) -> list[float] | None:
    """One value per schedule seed (the mean over `names`), or None if any report lacks it."""
    return seed_means(lambda seed: [out / f"{n}-{cfg}-s{seed}.json" for n in names], pick)


def inference_ms(rep: dict):
    t = rep.get("timings") or {}
    return t.get("inference_ms_mean")


def table(out: Path) -> str:
    lines = ["| set | masks | image AUROC | pixel AUROC | PRO@0.3 | inference ms / image (1 thread) |",
             "|---|---|---|---|---|---|"]
    for label, names in SETS:
        for cfg_label, cfg in CONFIGS:
            cells = [cell(per_seed(out, names, cfg, lambda r, k=k: r.get(k))) for _, k in METRICS]
            ms = per_seed(out, names, cfg, inference_ms)
            lines.append(f"| {label} | {cfg_label} | " + " | ".join(cells)
                         + f" | {cell(ms, 0)} |")
    return "\n".join(lines)
