#!/usr/bin/env bash
# Reproduce the "How many masks" table of models/README.md (issue 20 part 5): zero-shot
# MAEDAY with `random` N = 32 (the model's default, one batch on a GPU) against `balanced`
# N = 8 and `random` N = 8 (4x less compute), on the dev sets where MAEDAY works: the seeded
# synthetic foreign-object set (3 scenes), the conveyor clip, the floor hazards. Three
# schedule seeds each; one thread, so the times are comparable.
#
#   bash models/evaluate-masks.sh [out-dir]   (from the repository root)
#
# Needs ../shared/data, the workstation venv (to build the sets) and the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval-runs/masks}
DATA=${DATA:-../shared/data}
SETS=${SETS:-$OUT/sets}
PY=${PYTHON:-$HOME/.cache/maeday-ci/venv/bin/python}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/maeday-edge}
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
[ -d "$SETS/synth" ] || "$PY" -m models.workstation synth-fod --seed 0 --out "$SETS/synth"
[ -d "$SETS/conveyor" ] || "$PY" -m models.workstation conveyor-set --out "$SETS/conveyor"

declare -A DATASETS=(
  [synth-woodenFloor]=$SETS/synth/woodenFloor
  [synth-pavingStone]=$SETS/synth/pavingStone
  [synth-greyTile]=$SETS/synth/greyTile
  [conveyor]=$SETS/conveyor
  [floor]=$DATA/floor-hazards
)
for set in synth-woodenFloor synth-pavingStone synth-greyTile conveyor floor; do
  for cfg in random:32 balanced:8 random:8; do
    schedule=${cfg%%:*} masks=${cfg##*:}
    for s in 0 1 2; do
      name="$set-$schedule$masks-s$s"
      if [ -s "$OUT/$name.json" ]; then echo "have $name"; continue; fi
      echo "== $name"
      "$BIN" eval --dataset "${DATASETS[$set]}" --masks "$masks" --schedule "$schedule" \
        --schedule-seed "$s" --threads 1 --report "$OUT/$name.json" | grep -E "AUROC|PRO|time" | head -4
    done
  done
done
"$PY" -m models.workstation masks-table "$OUT" | tee "$OUT/table.md"
