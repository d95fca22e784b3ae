#!/usr/bin/env bash
# Reproduce the "Detection quality, round 2" table of models/README.md (issue 20 parts 2-4).
#
#   bash models/evaluate-round2.sh [out-dir]   (from the repository root)
#
# Builds the dev sets (seeded; under out-dir, never in the repository): the synthetic
# foreign-object set (3 texture scenes, `python -m models.workstation synth-fod --seed 0`) and
# the conveyor clip as an image-level set (`conveyor-set`). Then, per set, shot count (1, 4)
# and shot seed (0, 1, 2), one `eval --shots` run with one bank (coreset seed 0): each reports
# MAEDAY zero-shot, the Lite0 bank, few-shot MAEDAY (per-pixel normalised, `maeday-norm`) and
# every fusion of them (sum and pixel-wise max of standardised maps), each with the max and
# the top-1% mean as image score. Magnetic tiles: 100 defective + 100 good (`--limit 100
# --seed 0`), shots from the other good tiles. MAEDAY runs N = MASKS (8) masks with the
# SCHEDULE (balanced) schedule. Needs ../shared/data, the workstation venv and the release
# binary (built here if missing). Prints the AUROC table, then each calibrated scorer at its
# enrollment's threshold (`operating-table`: false alarms and detections).
# EXTRACTOR (lite0, the default, or dinov2) picks the bank's extractor; SETS (floor conveyor
# synth mt) picks a part, e.g. to run two in parallel into the same out-dir.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval-runs/round2}
DATA=${DATA:-../shared/data}
MASKS=${MASKS:-8}
SCHEDULE=${SCHEDULE:-balanced}
PY=${PYTHON:-$HOME/.cache/maeday-ci/venv/bin/python}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/maeday-edge}
THREADS=${THREADS:+--threads $THREADS}  # e.g. THREADS=1 on a shared machine
# The table compares fusions with the bank at its better image score: Lite0 the top 1%,
# DINOv2 the maximum (its own rule).
TABLE=()
[ "${EXTRACTOR:-}" = dinov2 ] && TABLE=(--bank-score max --bank-label DINOv2)
EXTRACTOR=${EXTRACTOR:+--extractor $EXTRACTOR}
SETS=" ${SETS:-floor conveyor synth mt} "
[ -x "$BIN" ] || cargo build --release
has() { [[ $SETS == *" $1 "* ]]; }
DIRS=$OUT/sets
SCENES="woodenFloor pavingStone greyTile"
mkdir -p "$OUT"
[ -d "$DIRS/synth" ] || "$PY" -m models.workstation synth-fod --seed 0 --out "$DIRS/synth"
[ -d "$DIRS/conveyor" ] || "$PY" -m models.workstation conveyor-set --out "$DIRS/conveyor"

ev() { # ev <report-name> <dataset> [eval options...]
  local name=$1 data=$2; shift 2
  if [ -s "$OUT/$name.json" ]; then echo "have $OUT/$name.json"; return; fi
  echo "== $name"
  "$BIN" eval --report "$OUT/$name.json" --dataset "$data" --masks "$MASKS" \
    --schedule "$SCHEDULE" --bank-seeds 0 --compare-fusions --pixel-budget 16384 $THREADS \
    $EXTRACTOR "$@" | grep -E "AUROC" || true
}

for shots in 1 4; do
  for s in 0 1 2; do
    if has floor; then
      ev "floor-${shots}shot-s$s" "$DATA/floor-hazards" --shots "$shots" --shot-seed "$s"
    fi
    if has conveyor; then
      ev "conveyor-${shots}shot-s$s" "$DIRS/conveyor" --shots "$shots" --shot-seed "$s"
    fi
    for scene in $SCENES; do
      if has synth; then
        ev "synth-$scene-${shots}shot-s$s" "$DIRS/synth/$scene" --shots "$shots" --shot-seed "$s"
      fi
    done
  done
done
for shots in 1 4; do
  for s in 0 1 2; do
    if has mt; then
      ev "mt-${shots}shot-s$s" "$DATA/magnetic-tile" --limit 100 --seed 0 --shots "$shots" --shot-seed "$s"
    fi
  done
done

"$PY" -m models.workstation round2-table "$OUT" "${TABLE[@]}" | tee "$OUT/table.md"
"$PY" -m models.workstation operating-table "$OUT" | tee "$OUT/operating.md"
