"""`operating-table`: each calibrated scorer at the image threshold its enrollment set (the
reports' `operating_points`, from `models/evaluate-round2.sh`): the share of normal images
flagged (false alarms) and of anomalous images caught, per dev set and shot count, mean ±
std over the three shot seeds (the synthetic set: per seed, the mean over its scenes
first), with the image AUROC of the same scorer beside it. AUROC ranks; this is what a
device reports."""

from __future__ import annotations

from pathlib import Path

from .round2 import SETS, cell, seed_means

# (label, key in operating_points and scorers)
SCORERS = [("bank, Lite0", "bank0"),
           ("MAEDAY normalised (`maeday-norm`)", "maeday-norm"),
           ("MAEDAY + bank (`ensemble`)", "maeday+bank0"),
           ("MAEDAY norm. + bank (`ensemble-norm`)", "maeday-norm+bank0")]


def rate(key: str, what: str):
    def pick(rep: dict):
        op = rep.get("operating_points", {}).get(key)
        return None if op is None else op[what]
    return pick


def auroc(key: str):
    def pick(rep: dict):
        s = rep["scorers"].get(key)
        return None if s is None else s["image_auroc"]
    return pick


def table(out: Path) -> str:
    lines = []
    for title, names in SETS:
        lines += [f"**{title}**", "",
                  "| scorer | shots | false alarms | detected | image AUROC |",
                  "|---|---|---|---|---|"]
        for label, key in SCORERS:
            for k in (1, 4):
                def reports(seed, k=k):
                    return [out / f"{n}-{k}shot-s{seed}.json" for n in names]
                cells = [cell(seed_means(reports, pick)) for pick in
                         (rate(key, "false_alarm_rate"), rate(key, "detection_rate"), auroc(key))]
                lines.append(f"| {label} | {k} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
