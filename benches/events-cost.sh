#!/usr/bin/env bash
# What anomaly events cost per frame: the real daemon on the conveyor clip (demo/conveyor.gif
# looped, the demo's bank, two bolt passages per 74 frames, embedded broker, QoS 1), run
# with and without `[events]` (evidence JPEGs on, Home Assistant discovery on), interleaved
# ROUNDS times in one run, so both see the same machine. Prints the medians over rounds of
# each run's p50 end-to-end latency (capture -> handed to every sink, events included) and
# p50 publish latency (result ready -> handed to every sink: where events run), and their
# ratios with / without.
#   bash benches/events-cost.sh [path/to/maeday-edge] [rounds] [masks]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/maeday-edge}
rounds=${2:-3}
masks=${3:-8}
[ -x "$bin" ] || cargo build --release
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run() { # with|without -> "end_to_end_p50 publish_p50 events"
  local events="" ha=""
  if [ "$1" = with ]; then
    events=$'[events]\nstart_frames = 1\nend_frames = 3\nupdate_interval_s = 0'
    ha='home_assistant = { discovery_prefix = "homeassistant" }'
  fi
  rm -rf "$tmp/spool"
  cat > "$tmp/c.toml" <<CONF
device_id = "bench"
console = false
[model]
bank = "$PWD/demo/bank"
masks = $masks
[[camera]]
name = "belt"
source = { kind = "replay", path = "$PWD/demo/conveyor.gif", fps = 0, loop = true }
[output]
metrics_interval_s = 0
$events
[mqtt]
url = "mqtt://127.0.0.1:$port"
embedded_broker = "127.0.0.1:$port"
spool = { dir = "$tmp/spool" }
$ha
CONF
  "$bin" run --config "$tmp/c.toml" --max-frames 74 2>/dev/null | tail -1 | python3 -c "
import json, sys
m = json.load(sys.stdin); l = m['latency_ms']
print(l['end_to_end']['p50'], l['publish']['p50'], m['mqtt']['delivered'])"
}
for i in $(seq "$rounds"); do
  echo "without $(run without)" >> "$tmp/runs"
  echo "with $(run with)" >> "$tmp/runs"
done
python3 - "$tmp/runs" "$masks" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(kind, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == kind)
print(f"events cost, {len(rows)//2} interleaved rounds of 74 frames (N = {sys.argv[2]}):")
for name, col in [("end-to-end p50", 1), ("publish p50", 2)]:
    w, wo = med("with", col), med("without", col)
    print(f"  {name:15} without {wo:8.2f} ms   with {w:8.2f} ms   ratio {w / wo:.3f}")
print(f"  messages delivered per run: without {med('without', 3):.0f}, with {med('with', 3):.0f}")
PY
