#!/usr/bin/env bash
# Run benches/frame.rs with everything it compares: the default model, the same weights
# exported without the exact speed rewrites (`export --plain`), its anomaly-map twin, and
# ONNX Runtime from the PyPI wheel; then the memory bank's extractor, tract vs ONNX Runtime.
# tract picks its matmul kernel family once per process, so each pass of
# MAEDAY_BENCH_PASSES (default: `tract auto`, i.e. tract's own choice, then the measured
# one) is its own process; ONNX Runtime is measured again in each, next to tract.
# Usage: bash benches/run.sh [criterion args]   (set PYTHON to a python with the
# workstation requirements; default: the CI venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-${MAEDAY_VENV:-$HOME/.cache/maeday-ci/venv}/bin/python}
target=${CARGO_TARGET_DIR:-target}
map="$target/bench-models/default-map"
if [ ! -f "$map/manifest.toml" ]; then
  "$PYTHON" -m models.workstation export --preset tiny --seed 0 --output anomaly_map \
    --out "$map" --name default-map --masks 32 --description "bench twin of models/default" >/dev/null
fi
plain="$target/bench-models/default-plain"
if [ ! -f "$plain/manifest.toml" ] || ! grep -q "$(sha256sum models/default/*.pth | cut -c1-16)" "$plain/checkpoint.sha"; then
  "$PYTHON" -m models.workstation export --plain --checkpoint models/default/maeday-tiny-textures.pth \
    --out "$plain" --name default-plain --description "models/default without the speed rewrites" >/dev/null
  sha256sum models/default/*.pth | cut -c1-16 >"$plain/checkpoint.sha"
fi
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$("$PYTHON" -m models.workstation ort-lib)}
export ORT_DYLIB_PATH MAEDAY_BENCH_MAP_MODEL="$map" MAEDAY_BENCH_PLAIN_MODEL="$plain"
for kernels in ${MAEDAY_BENCH_PASSES:-tract auto}; do
  echo "== pass: cpu_kernels = $kernels =="
  MAEDAY_BENCH_CPU_KERNELS=$kernels cargo bench --features ort --bench frame -- "$@"
done
MAEDAY_BENCH_CPU_KERNELS=auto cargo bench --features ort --bench bank -- extractor
