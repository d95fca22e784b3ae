# Sourced by evaluate.sh and evaluate-standardise.sh after they `cd` to the repository root
# and set OUT: the data and tools they share, and `ev`, one `maeday-edge eval` per report
# (skipped when the report exists, so an interrupted run picks up where it stopped).
DATA=${DATA:-../shared/data}
MT=$DATA/magnetic-tile
PY=${PYTHON:-python3}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/maeday-edge}
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
DEFAULT=models/default
CKPT=$(ls "$DEFAULT"/*.pth)

ev() { # ev <report-name> <model> <dataset> [eval options...]
  local name=$1 model=$2 data=$3; shift 3
  if [ -s "$OUT/$name.json" ]; then echo "have $OUT/$name.json"; return; fi
  echo "== $name"
  "$BIN" eval --model "$model" --report "$OUT/$name.json" --dataset "$data" "$@"
}
