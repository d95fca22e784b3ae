#!/usr/bin/env bash
# Binary size and peak memory (RSS) of the daemon on the default model, for one or more
# builds side by side (e.g. the `release` and `edge` profiles):
#   bash benches/footprint.sh target/release/maeday-edge target/edge/maeday-edge
# Each binary runs the real daemon: the bundled sample photos replayed as fast as scored,
# the default model at N = 8 and N = 32, the embedded broker, QoS 1, 12 frames; peak RSS
# from GNU time, per-frame inference p50 from the daemon's own summary. FOOTPRINT_MODEL adds
# lines to `[model]`, e.g. FOOTPRINT_MODEL='keep_freed_buffers = false'.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: benches/footprint.sh BINARY..." >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '| binary | size | masks | peak RSS | inference p50 |\n|---|---|---|---|---|\n'
for bin in "$@"; do
  size=$(stat -c %s "$bin")
  for n in 8 32; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$work/f.toml" <<TOML
device_id = "footprint"
console = false
[model]
masks = $n
${FOOTPRINT_MODEL:-}
[[camera]]
name = "samples"
source = { kind = "replay", path = "$PWD/models/samples", loop = true }
[mqtt]
url = "mqtt://127.0.0.1:$port"
embedded_broker = "127.0.0.1:$port"
spool = { dir = "$work/spool-$n", max_bytes = 16777216 }
TOML
    /usr/bin/time -f '%M' -o "$work/rss" "$bin" run --config "$work/f.toml" --max-frames 12 \
      >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
    p50=$(tail -1 "$work/out" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["latency_ms"]["inference"]["p50"],1))')
    printf '| %s | %.1f MB | %s | %.1f MB | %s ms |\n' "$bin" "$(echo "$size/1000000" | bc -l)" \
      "$n" "$(echo "$(cat "$work/rss")/1024" | bc -l)" "$p50"
  done
done
