#!/usr/bin/env bash
# Reproduce the evaluation table of models/README.md ("Measured on real defects").
#
#   bash models/evaluate.sh [out-dir]        (from the repository root; ~45 min on 2 cores)
#
# Needs ../shared/data, the release binary (built here if missing) and the workstation venv
# (`pip install -r models/requirements.txt`). Every model, report and the final table.md
# land in out-dir (default: eval-runs/). FEWSHOT_MASKS sets N for the few-shot rows.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval-runs}
FEWSHOT_MASKS=${FEWSHOT_MASKS:-8}
. models/evaluate-common.sh

# Zero-shot: the shipped default on the 392 defective + 392 seeded MT_Free images.
for n in 8 16 32; do ev "zs-random-n$n" "$DEFAULT" "$MT" --limit 392 --seed 0 --masks "$n"; done
for n in 8 16; do
  ev "zs-balanced-n$n" "$DEFAULT" "$MT" --limit 392 --seed 0 --masks "$n" --schedule balanced
done
# Aspect-preserving overlapping windows instead of the paper's square resize.
ev zs-tile-n8 "$DEFAULT" "$MT" --limit 392 --seed 0 --masks 8 --fit tile
ev zs-floor-hazards-n32 "$DEFAULT" "$DATA/floor-hazards" --masks 32

# The floor: the same architecture with random weights.
[ -f "$OUT/random-init/manifest.toml" ] || $PY -m models.workstation export --preset tiny \
  --seed 0 --out "$OUT/random-init" --name random-init --description "random-init floor"
ev random-init-n32 "$OUT/random-init" "$MT" --limit 392 --seed 0 --masks 32
ev random-init-floor-hazards-n32 "$OUT/random-init" "$DATA/floor-hazards" --masks 32

# Few-shot: LoRA on K good MT_Free images that are not in the evaluation set, 3 shot seeds.
for k in 1 4; do
  for s in 0 1 2; do
    m="$OUT/fs-k$k-s$s"
    [ -f "$m/manifest.toml" ] || $PY -m models.workstation finetune --checkpoint "$CKPT" \
      --magnetic-tile "$MT" --shots "$k" --shot-seed "$s" --seed "$s" \
      --out "$m" --name "fs-k$k-s$s"
    ev "fs-k$k-s$s-n$FEWSHOT_MASKS" "$m" "$MT" --limit 392 --seed 0 --masks "$FEWSHOT_MASKS"
  done
done

# Exploratory, one shot seed: the paper's recipe moves the weights by ~1e-4 (relative) on
# these dark, low-contrast tiles. 10x the SGD learning rate, or AdamW (scale-free).
fs_variant() { # fs_variant <name> [finetune options...]
  local name=$1; shift
  [ -f "$OUT/$name/manifest.toml" ] || $PY -m models.workstation finetune --checkpoint "$CKPT" \
    --magnetic-tile "$MT" --shots 4 --shot-seed 0 --seed 0 --out "$OUT/$name" --name "$name" "$@"
  ev "$name-n$FEWSHOT_MASKS" "$OUT/$name" "$MT" --limit 392 --seed 0 --masks "$FEWSHOT_MASKS"
}
fs_variant fs-k4-lr0.1-it100 --lr 0.1 --iterations 100
fs_variant fs-k4-adamw-s0 --optimizer adamw --lr 1e-3
fs_variant fs-k4-adamw3e-3-it200-s0 --optimizer adamw --lr 3e-3 --iterations 200

$PY -m models.workstation table "$OUT" | tee "$OUT/table.md"
