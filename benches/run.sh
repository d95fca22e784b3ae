#!/usr/bin/env bash
# Run benches/frame.rs with everything it compares: the default model, the same weights
# exported without the exact speed rewrites (`export --plain`) and with all but the fused
# attention (`export --unfused-attention`), its anomaly-map twin, and
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
# The twins are exported once per checkpoint and exporter source (the key below).
key=$(cat models/default/*.pth models/workstation/*.py | sha256sum | cut -c1-16)
twin() { # twin DIR EXPORT-ARGS...: export into DIR unless it holds this key's export
  local dir=$1; shift
  if [ ! -f "$dir/manifest.toml" ] || [ "$(cat "$dir/export.key" 2>/dev/null)" != "$key" ]; then
    rm -rf "$dir"
    "$PYTHON" -m models.workstation export "$@" --out "$dir" >/dev/null
    echo "$key" >"$dir/export.key"
  fi
}
map="$target/bench-models/default-map"
twin "$map" --preset tiny --seed 0 --output anomaly_map --name default-map --masks 32 \
  --description "bench twin of models/default"
ckpt=models/default/maeday-tiny-textures.pth
plain="$target/bench-models/default-plain"
twin "$plain" --plain --checkpoint "$ckpt" --name default-plain \
  --description "models/default without the speed rewrites"
unfused="$target/bench-models/default-unfused"
twin "$unfused" --unfused-attention --checkpoint "$ckpt" --name default-unfused \
  --description "models/default with attention as MatMul-Softmax-MatMul"
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$("$PYTHON" -m models.workstation ort-lib)}
export ORT_DYLIB_PATH MAEDAY_BENCH_MAP_MODEL="$map" MAEDAY_BENCH_PLAIN_MODEL="$plain" \
  MAEDAY_BENCH_UNFUSED_MODEL="$unfused"
for kernels in ${MAEDAY_BENCH_PASSES:-tract auto}; do
  echo "== pass: cpu_kernels = $kernels =="
  MAEDAY_BENCH_CPU_KERNELS=$kernels cargo bench --features ort --bench frame -- "$@"
done
MAEDAY_BENCH_CPU_KERNELS=auto cargo bench --features ort --bench bank -- extractor
