#!/usr/bin/env bash
# Two builds of `maeday-edge score` side by side in one run, interleaved so that machine
# noise hits both alike: per-image latency and inference time (medians) and their ratio.
#   bash benches/before-after.sh OLD_BINARY NEW_BINARY [ROUNDS] [IMAGE...]
# Default images: 16 magnetic-tile images (../shared/data), the default model, N = 32,
# squash. A ratio near 1.00 means no regression (new / old; below 1 is faster).
# SCORE_ARGS adds flags to both, e.g. SCORE_ARGS="--bank demo/bank --scorer ensemble".
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: benches/before-after.sh OLD NEW [ROUNDS] [IMAGE...]" >&2; exit 2; }
old=$1 new=$2 rounds=${3:-3}
shift $(( $# >= 3 ? 3 : 2 ))
if [ $# -eq 0 ]; then
  mapfile -t images < <(find ../shared/data/magnetic-tile/MT_Free/Imgs -name '*.jpg' | sort | head -16)
else
  images=("$@")
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for r in $(seq 1 "$rounds"); do
  for which in old new; do
    bin=$old; [ "$which" = new ] && bin=$new
    # shellcheck disable=SC2086
    "$bin" score --masks 32 ${SCORE_ARGS:-} "${images[@]}" 2>/dev/null >>"$work/$which.jsonl"
  done
done
python3 - "$work" "${#images[@]}" "$rounds" <<'PY'
import json, statistics, sys
work, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = {}
for which in ("old", "new"):
    lines = [json.loads(l) for l in open(f"{work}/{which}.jsonl")]
    assert len(lines) == n * rounds, f"{which}: {len(lines)} results for {n * rounds} scorings"
    rows[which] = {
        "latency": statistics.median(l["latency_ms"] for l in lines),
        "inference": statistics.median(l["inference_ms"] for l in lines),
        "scores": {l["image"]: l["score"] for l in lines},
    }
same = max(abs(rows["old"]["scores"][k] - rows["new"]["scores"][k]) for k in rows["old"]["scores"])
print(f"{n} images x {rounds} rounds, interleaved; N = 32")
print("| build | latency p50 (ms) | inference p50 (ms) |\n|---|---|---|")
for which in ("old", "new"):
    print(f"| {which} | {rows[which]['latency']:.1f} | {rows[which]['inference']:.1f} |")
print(f"| new / old | {rows['new']['latency'] / rows['old']['latency']:.3f} | "
      f"{rows['new']['inference'] / rows['old']['inference']:.3f} |")
print(f"largest score difference between the builds: {same:.2e}")
PY
