#!/usr/bin/env bash
# Run benches/frame.rs with everything it compares: the default model, its anomaly-map
# twin (same weights, exported now), and ONNX Runtime from the PyPI wheel.
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
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$("$PYTHON" -m models.workstation ort-lib)}
export ORT_DYLIB_PATH MAEDAY_BENCH_MAP_MODEL="$map"
exec cargo bench --features ort --bench frame -- "$@"
