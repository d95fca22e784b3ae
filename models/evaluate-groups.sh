#!/usr/bin/env bash
# Magnetic tiles per defect type (issue 20): the table "Magnetic tiles per defect type" of
# models/README.md.
#
#   bash models/evaluate-groups.sh [out-dir]   (from the repository root; ~1 h on 2 cores)
#
# For each extractor (lite0, dinov2) and shot seed (0, 1, 2): one `eval --shots 4` run (one
# bank, coreset seed 0; MAEDAY at N = 8 alongside) on magnetic tiles, `--limit 392 --seed 0`
# (every defective image and 392 MT_Free: the issue's protocol), squash fit. Its report
# holds each scorer's figures per defect group (image AUROC, pixel AUROC, PRO, the group's
# share of the defect pixels). Then the table: mean ± std over the three shot seeds, and the
# image AUROC without MT_Uneven. LIMIT (392), EXTRACTORS (lite0 dinov2) and SEEDS (0 1 2)
# pick a part, e.g. to run two in parallel.
# Needs ../shared/data and the release binary (built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval-runs/groups}
DATA=${DATA:-../shared/data}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/maeday-edge}
LIMIT=${LIMIT:-392}
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
for ex in ${EXTRACTORS:-lite0 dinov2}; do
  for s in ${SEEDS:-0 1 2}; do
    name="$ex-mt$LIMIT-4shot-s$s"
    if [ -s "$OUT/$name.json" ]; then echo "have $OUT/$name.json"; continue; fi
    echo "== $name $(date +%T)"
    "$BIN" eval --report "$OUT/$name.json" --dataset "$DATA/magnetic-tile" --limit "$LIMIT" \
      --seed 0 --masks 8 --bank-seeds 0 --pixel-budget 16384 --shots 4 --shot-seed "$s" \
      --extractor "$ex" | grep -E "AUROC|^  (maeday|bank)" || true
  done
done

python3 - "$OUT" "$LIMIT" <<'PY'
import json, pathlib, statistics, sys
out, limit = pathlib.Path(sys.argv[1]), sys.argv[2]
def cell(vals):
    vals = [v for v in vals if v is not None]
    if not vals: return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"
def auroc(neg, pos):
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(neg) * len(pos))
reps = {ex: [json.load(open(f)) for f in sorted(out.glob(f"{ex}-mt{limit}-4shot-s*.json"))]
        for ex in ("lite0", "dinov2")}
cols = [("MAEDAY zero-shot", "lite0", "maeday"), ("Lite0 bank", "lite0", "bank0"),
        ("DINOv2 bank", "dinov2", "bank0"), ("MAEDAY + DINOv2 bank", "dinov2", "maeday+bank0")]
cols = [c for c in cols if reps[c[1]]]
print("image AUROC / pixel AUROC, 4 shots, mean ± std over shot seeds "
      + ", ".join(f"{ex}: {len(r)}" for ex, r in reps.items() if r) + "\n")
print("| defect group | images | share of defect pixels | " + " | ".join(c[0] for c in cols) + " |")
print("|---|---|---|" + "---|" * len(cols))
first = reps[cols[0][1]][0]["scorers"][cols[0][2]]["per_group"]
for g in first:
    row = [g, str(first[g]["count"]), f"{first[g]['defect_pixel_share']:.3f}"]
    for _, ex, key in cols:
        pg = [r["scorers"][key]["per_group"][g] for r in reps[ex]]
        row.append(f"{cell([p['image_auroc'] for p in pg])} / {cell([p['pixel_auroc'] for p in pg])}")
    print("| " + " | ".join(row) + " |")
row = ["**all**", str(reps[cols[0][1]][0]["counts"]["anomalous"]), "1"]
for _, ex, key in cols:
    sc = [r["scorers"][key] for r in reps[ex]]
    row.append(f"{cell([s['image_auroc'] for s in sc])} / {cell([s['pixel_auroc'] for s in sc])}")
print("| " + " | ".join(row) + " |")
row = ["all but MT_Uneven (image AUROC)", "", ""]
for _, ex, key in cols:
    vals = []
    for r in reps[ex]:
        s = r["scorers"][key]["scores"]
        neg = [v for v, i in zip(s, r["images"]) if not i["anomalous"]]
        pos = [v for v, i in zip(s, r["images"]) if i["anomalous"] and i["group"] != "MT_Uneven"]
        vals.append(auroc(neg, pos))
    row.append(cell(vals))
print("| " + " | ".join(row) + " |")
PY
