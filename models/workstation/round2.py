"""`round2-table`: the round-2 quality table (issue 20) from `models/evaluate-round2.sh`'s
reports: per dev set and scorer, image / pixel AUROC at 1 and 4 shots, mean ± std over the
three shot seeds (the synthetic set: per seed, the mean over its scenes first), and whether
each fusion is within 0.01 of its best member on every set, with a paired bootstrap over
test images of "fusion minus its best member" (from the reports' per-image scores)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

SETS = [("synthetic FOD (3 scenes)", ["synth-woodenFloor", "synth-pavingStone", "synth-greyTile"]),
        ("conveyor clip", ["conveyor"]), ("floor hazards", ["floor"]),
        ("magnetic tiles (100 + 100)", ["mt"])]
# (label, scorer key, image score: "max" or "top")
ROWS = [("MAEDAY zero-shot (max)", "maeday", "max"),
        ("MAEDAY zero-shot (top 1%)", "maeday", "top"),
        ("bank, Lite0 (max)", "bank0", "max"),
        ("bank, Lite0 (top 1%)", "bank0", "top"),
        ("MAEDAY normalised (max)", "maeday-norm", "max"),
        ("MAEDAY normalised (top 1%)", "maeday-norm", "top"),
        ("sum: MAEDAY + bank (max; round 1)", "maeday+bank0", "max"),
        ("sum: MAEDAY norm. + bank (max)", "maeday-norm+bank0", "max"),
        ("sum: MAEDAY norm. + bank (top 1%)", "maeday-norm+bank0", "top"),
        ("max: MAEDAY norm., bank (max)", "max(maeday-norm,bank0)", "max"),
        ("max: MAEDAY norm., bank (top 1%)", "max(maeday-norm,bank0)", "top"),
        ("max: all three (top 1%)", "max(maeday,maeday-norm,bank0)", "top"),
        ("probe-weighted: MAEDAY norm., bank (max)", "probe(maeday-norm,bank0)", "max"),
        ("probe-weighted: MAEDAY norm., bank (top 1%)", "probe(maeday-norm,bank0)", "top"),
        ("probe pick: the one it favours (max)", "pick(maeday-norm,bank0)", "max"),
        ("good-z sum: MAEDAY norm., bank", "zsum(maeday-norm,bank0)", "max"),
        ("good-z max: MAEDAY norm., bank", "zmax(maeday-norm,bank0)", "max"),
        ("good-z sum: all three", "zsum(maeday,maeday-norm,bank0)", "max"),
        ("good-z max: all three", "zmax(maeday,maeday-norm,bank0)", "max"),
        ("reliability-weighted: MAEDAY norm., bank (max)", "rel(maeday-norm,bank0)", "max"),
        ("reliability-weighted: MAEDAY norm., bank (top 1%)", "rel(maeday-norm,bank0)", "top"),
        ("reliability-weighted: all three (max)", "rel(maeday,maeday-norm,bank0)", "max")]
# fusion (key, image score) -> its members (key, image score): each member at its own best
# image score on these sets (MAEDAY and few-shot MAEDAY: max; the bank: `bank_score`, the top
# 1% for Lite0, the maximum for DINOv2)
PAIR_FUSIONS = [("maeday-norm+bank0", "max"), ("maeday-norm+bank0", "top"),
                ("max(maeday-norm,bank0)", "max"), ("max(maeday-norm,bank0)", "top"),
                ("probe(maeday-norm,bank0)", "max"), ("probe(maeday-norm,bank0)", "top"),
                ("pick(maeday-norm,bank0)", "max"), ("zsum(maeday-norm,bank0)", "max"),
                ("zmax(maeday-norm,bank0)", "max"), ("rel(maeday-norm,bank0)", "max"),
                ("rel(maeday-norm,bank0)", "top")]
THREE_FUSIONS = ["zsum(maeday,maeday-norm,bank0)", "zmax(maeday,maeday-norm,bank0)",
                 "rel(maeday,maeday-norm,bank0)"]


def members_of(bank_score: str = "top") -> dict:
    bank = ("bank0", bank_score)
    members = {("maeday+bank0", "max"): [("maeday", "max"), bank]}
    for fused in PAIR_FUSIONS:
        members[fused] = [("maeday-norm", "max"), bank]
    for key in THREE_FUSIONS:
        members[(key, "max")] = [("maeday", "max"), ("maeday-norm", "max"), bank]
    return members


MEMBERS = members_of()
RESAMPLES = 1000


def metric(rep: dict, key: str, score: str, what: str):
    s = rep["scorers"].get(key)
    if s is None:
        return None
    if what == "image":
        return s["image_auroc_top" if score == "top" else "image_auroc"]
    return s["pixel_auroc"]


def seed_means(reports, pick, seeds=(0, 1, 2)):
    """Per seed, the mean of `pick(report)` over that seed's reports (`reports(seed)`: their
    paths); None if a report is missing or lacks the value."""
    vals = []
    for seed in seeds:
        xs = []
        for p in reports(seed):
            if not p.exists():
                return None
            v = pick(json.loads(p.read_text()))
            if v is None:
                return None
            xs.append(v)
        vals.append(statistics.mean(xs))
    return vals


def per_seed(out: Path, names: list[str], k: int, key: str, score: str, what: str):
    return seed_means(lambda seed: [out / f"{n}-{k}shot-s{seed}.json" for n in names],
                      lambda rep: metric(rep, key, score, what))


def cell(vals, digits: int = 3) -> str:
    """Mean ± sample standard deviation over the seeds."""
    if not vals:
        return "n/a"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def table(out: Path, bank_score: str = "top", bank_label: str = "Lite0") -> str:
    """`bank_score`: the bank's image score its fusions are compared with; `bank_label`:
    its extractor, for the row names."""
    members_all = members_of(bank_score)
    lines = []
    worst: dict[str, float] = {}
    for label, names in SETS:
        head = ["scorer", "1 shot image", "1 shot pixel", "4 shots image", "4 shots pixel"]
        lines += [f"\n**{label}**\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row, key, score in ROWS:
            row = row.replace("Lite0", bank_label)
            cells = [cell(per_seed(out, names, k, key, score, w))
                     for k in (1, 4) for w in ("image", "pixel")]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["\n**fusion minus its best member** (mean over shot seeds; image / pixel)\n",
              "| fusion | " + " | ".join(f"{lab.split(' (')[0]} {k} shot" for lab, _ in SETS
                                         for k in (1, 4)) + " | worst |",
              "|" + "---|" * (2 + 2 * len(SETS))]
    for (fused, score), members in members_all.items():
        cells, worst = [], None
        for _, names in SETS:
            for k in (1, 4):
                parts = []
                for w in ("image", "pixel"):
                    f = per_seed(out, names, k, fused, score, w)
                    ms = [per_seed(out, names, k, m, sc, w) for m, sc in members]
                    if f is None or any(m is None for m in ms):
                        parts.append("n/a")
                        continue
                    gap = statistics.mean(f) - max(statistics.mean(m) for m in ms)
                    worst = gap if worst is None else min(worst, gap)
                    parts.append(f"{gap:+.3f}")
                cells.append(" / ".join(parts))
        tail = "n/a" if worst is None else f"{worst:+.3f}"
        lines.append(f"| {fused} ({score}) | " + " | ".join(cells) + f" | {tail} |")
    return "\n".join(lines + bootstrap_table(out, members_all)) + "\n"


def auroc_pairs(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC per row: `pos` (rows x P) against `neg` (rows x N), ties counting half."""
    d = pos[:, :, None] - neg[:, None, :]
    return (d > 0).mean(axis=(1, 2)) + 0.5 * (d == 0).mean(axis=(1, 2))


def image_scores(rep: dict, key: str, score: str):
    s = rep["scorers"].get(key)
    if s is None or "scores" not in s:
        return None
    return np.asarray(s["scores_top" if score == "top" else "scores"], dtype=np.float64)


def bootstrap_gap(out: Path, names: list[str], k: int, fused: str, score: str, members,
                  resamples: int = RESAMPLES, seed: int = 0):
    """Image AUROC of `fused` minus its best member (the member with the best mean AUROC
    over the runs, as in the gap table), averaged over the runs (shot seeds x scenes), and
    its 95% paired bootstrap interval: each resample draws every run's anomalous and good
    test images with replacement (stratified: both classes keep their counts) and scores
    the fusion and the member on the same draw. None when a report lacks per-image scores."""
    runs = []
    for s in (0, 1, 2):
        for n in names:
            p = out / f"{n}-{k}shot-s{s}.json"
            if not p.exists():
                return None
            rep = json.loads(p.read_text())
            labels = np.array([im["anomalous"] for im in rep["images"]], dtype=bool)
            series = [image_scores(rep, fused, score)]
            series += [image_scores(rep, m, sc) for m, sc in members]
            if any(x is None or len(x) != len(labels) for x in series):
                return None
            runs.append((labels, series))
            # The per-image scores must give the AUROC the report states (same images).
            got = auroc_pairs(series[0][labels][None], series[0][~labels][None])[0]
            want = metric(rep, fused, score, "image")
            assert want is None or abs(got - want) < 1e-9, (p, fused, got, want)
    full = np.array([[auroc_pairs(x[lab][None], x[~lab][None])[0] for x in series]
                     for lab, series in runs])
    best = 1 + int(np.argmax(full[:, 1:].mean(axis=0)))
    rng = np.random.default_rng(seed)
    gaps = np.zeros(resamples)
    for lab, series in runs:
        f, m = series[0], series[best]
        pi = rng.integers(0, lab.sum(), (resamples, lab.sum()))
        ni = rng.integers(0, (~lab).sum(), (resamples, (~lab).sum()))
        gf = auroc_pairs(f[lab][pi], f[~lab][ni]) - auroc_pairs(m[lab][pi], m[~lab][ni])
        gaps += gf / len(runs)
    point = float((full[:, 0] - full[:, best]).mean())
    lo, hi = np.percentile(gaps, [2.5, 97.5])
    return point, float(lo), float(hi)


def bootstrap_table(out: Path, members_all: dict = MEMBERS) -> list[str]:
    lines = [f"\n**fusion minus its best member, image AUROC, 95% paired bootstrap interval** "
             f"({RESAMPLES} resamples of the test images, seed 0; * = the whole interval is "
             "below -0.01)\n",
             "| fusion | " + " | ".join(f"{lab.split(' (')[0]} {k} shot" for lab, _ in SETS
                                         for k in (1, 4)) + " |",
             "|" + "---|" * (1 + 2 * len(SETS))]
    for (fused, score), members in members_all.items():
        cells = []
        for _, names in SETS:
            for k in (1, 4):
                b = bootstrap_gap(out, names, k, fused, score, members)
                if b is None:
                    cells.append("n/a")
                    continue
                point, lo, hi = b
                star = "*" if hi < -0.01 else ""
                cells.append(f"{point:+.3f} [{lo:+.3f}, {hi:+.3f}]{star}")
        lines.append(f"| {fused} ({score}) | " + " | ".join(cells) + " |")
    return lines
