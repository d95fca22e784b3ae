#!/usr/bin/env bash
# Reproduce the "Contrast standardisation" rows of models/README.md.
#
#   bash models/evaluate-standardise.sh [out-dir]    (from the repository root; ~45 min on
#                                                     2 cores, 35 of them pretraining)
#
# 1. the shipped default with `standardise` added to its manifest only (no retraining);
# 2. the default pretrained 800 more steps on standardised crops (`pretrain --standardise
#    --init`), zero-shot;
# 3. that model LoRA-finetuned (the paper's recipe) on 1 and 4 good MT_Free shots, seed 0.
# Needs ../shared/data, the release binary and the workstation venv, like evaluate.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval-runs/standardise}
. models/evaluate-common.sh

# 1. Same weights, standardised input.
M="$OUT/default-standardised"
if [ ! -f "$M/manifest.toml" ]; then
  mkdir -p "$M"
  cp "$DEFAULT"/*.onnx "$M/"
  sed 's/^std = \[\(.*\)\]$/std = [\1]\nstandardise = { mean = 0.45, std = 0.225 }/' \
    "$DEFAULT/manifest.toml" > "$M/manifest.toml"
  grep -q '^standardise' "$M/manifest.toml"
fi
ev std-manifest-only-n8 "$M" "$MT" --limit 392 --seed 0 --masks 8
ev std-manifest-only-floor-hazards-n32 "$M" "$DATA/floor-hazards" --masks 32

# 2. Continued pretraining on standardised crops (same 48 images as the default).
RUN="$OUT/pretrain"
[ -f "$RUN/checkpoint.pth" ] && grep -q '^799,' "$RUN/loss.csv" || $PY -m models.workstation \
  pretrain --out "$RUN" --steps 800 --batch 64 --lr 5e-4 --warmup 50 --visible-weight 0.1 \
  --seed 1 --standardise 0.45 0.225 --init "$CKPT"
S="$OUT/std-pretrained"
[ -f "$S/manifest.toml" ] || $PY -m models.workstation export --checkpoint "$RUN/checkpoint.pth" \
  --out "$S" --name maeday-tiny-standardised \
  --training "default + 800 steps on standardised crops (models/evaluate-standardise.sh)"
ev std-pretrained-n8 "$S" "$MT" --limit 392 --seed 0 --masks 8
ev std-pretrained-floor-hazards-n32 "$S" "$DATA/floor-hazards" --masks 32

# 3. The paper's LoRA recipe on top (the shots are standardised like the frames).
for k in 1 4; do
  f="$OUT/std-fs-k$k-s0"
  [ -f "$f/manifest.toml" ] || $PY -m models.workstation finetune \
    --checkpoint "$RUN/checkpoint.pth" --magnetic-tile "$MT" --shots "$k" --shot-seed 0 \
    --seed 0 --out "$f" --name "std-fs-k$k-s0"
  ev "std-fs-k$k-s0-n8" "$f" "$MT" --limit 392 --seed 0 --masks 8
done

$PY -m models.workstation table "$OUT" | tee "$OUT/table.md"
