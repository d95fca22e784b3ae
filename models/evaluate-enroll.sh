#!/usr/bin/env bash
# Reproduce the few-shot enrollment table of models/README.md ("Memory bank and ensemble").
#
#   bash models/evaluate-enroll.sh [out-dir]   (from the repository root; ~25 min on 2 cores)
#
# For each dataset, shot count (1, 4) and shot seed (0, 1, 2): one `eval --shots` run that
# enrolls two banks (coreset seeds 0 and 1) from the same shots, in memory, and reports
# MAEDAY alone, each bank, and every sum of their standardised maps (the shots are never
# evaluated). Then the table: mean ± std over the three shot seeds.
# Needs ../shared/data and the release binary (built here if missing).
# MASKS sets MAEDAY's N (default 8); AUGMENT adds bank augmentations (e.g. "hflip vflip").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval-runs/enroll}
DATA=${DATA:-../shared/data}
MASKS=${MASKS:-8}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/maeday-edge}
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
AUG=()
for a in ${AUGMENT:-}; do AUG+=(--augment "$a"); done

ev() { # ev <report-name> <dataset> [eval options...]
  local name=$1 data=$2; shift 2
  if [ -s "$OUT/$name.json" ]; then echo "have $OUT/$name.json"; return; fi
  echo "== $name"
  "$BIN" eval --report "$OUT/$name.json" --dataset "$data" --masks "$MASKS" \
    --bank-seeds 0,1 --pixel-budget 16384 "${AUG[@]}" "$@" | grep -E "AUROC|^  (maeday|bank)" || true
}

for shots in 1 4; do
  for s in 0 1 2; do
    ev "mt-${shots}shot-s$s" "$DATA/magnetic-tile" --limit 392 --seed 0 --shots "$shots" --shot-seed "$s"
    ev "floor-${shots}shot-s$s" "$DATA/floor-hazards" --shots "$shots" --shot-seed "$s"
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = [("MAEDAY alone (zero-shot)", "maeday"), ("bank alone", "bank0"),
        ("bank, other coreset seed", "bank1"), ("two banks (seeds 0 + 1)", "bank0+bank1"),
        ("MAEDAY + bank", "maeday+bank0"), ("MAEDAY + two banks", "maeday+bank0+bank1")]
def cell(vals):
    vals = [v for v in vals if v is not None]
    if not vals: return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"
lines = []
for data, metrics in [("mt", ["image_auroc", "pixel_auroc", "pro_0_3"]), ("floor", ["image_auroc"])]:
    head = ["scorer"] + [f"{k} shot {m.replace('_auroc','').replace('pro_0_3','PRO')}" for k in (1, 4) for m in metrics]
    lines += [f"\n{data}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key in rows:
        cells = []
        for k in (1, 4):
            reps = [json.load(open(out / f"{data}-{k}shot-s{s}.json")) for s in (0, 1, 2)]
            for m in metrics:
                cells.append(cell([r["scorers"][key][m] for r in reps]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    reps = [json.load(open(out / f"{data}-{k}shot-s{s}.json")) for k in (1, 4) for s in (0, 1, 2)]
    rows_k = {k: [json.load(open(out / f"{data}-{k}shot-s{s}.json"))["bank_rows"][0] for s in (0, 1, 2)] for k in (1, 4)}
    knn = {k: [json.load(open(out / f"{data}-{k}shot-s{s}.json"))["timings"]["knn_ms_mean"] / 2 for s in (0, 1, 2)] for k in (1, 4)}
    lines.append(f"\nbank rows {rows_k}; kNN ms per bank per image {{k: mean}} "
                 + str({k: round(statistics.mean(v), 2) for k, v in knn.items()})
                 + f"; evaluated images {reps[0]['counts']['scored']} (1 shot), {reps[3]['counts']['scored']} (4 shots)")
text = "\n".join(lines) + "\n"
(out / "table.md").write_text(text)
print(text)
PY
