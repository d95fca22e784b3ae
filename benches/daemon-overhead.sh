#!/usr/bin/env bash
# What the daemon adds to the model: end-to-end latency (capture -> handed to MQTT) minus
# inference, as a fraction of inference, measured in one run of the real daemon (replayed
# conveyor clip from ../shared, embedded broker, QoS 1), at a camera rate below the model's
# rate (so frames do not queue) and at one above it (newest frame wins, drops counted).
#   bash benches/daemon-overhead.sh [path/to/maeday-edge]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/maeday-edge}
[ -x "$bin" ] || cargo build --release
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gif="$PWD/../shared/data/conveyor/bolt-multi-size-detection.gif"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run() { # masks fps frames
  cat > "$tmp/c.toml" <<CONF
device_id = "bench"
console = false
[model]
masks = $1
[[camera]]
name = "belt"
source = { kind = "replay", path = "$gif", fps = $2, loop = true }
thresholds = { image = 20.0, pixel = 8.0 }
[output]
metrics_interval_s = 0
[mqtt]
url = "mqtt://127.0.0.1:$port"
embedded_broker = "127.0.0.1:$port"
spool = { dir = "$tmp/spool" }
CONF
  "$bin" run --config "$tmp/c.toml" --max-frames "$3" 2>/dev/null | tail -1 | python3 -c "
import json, sys
m = json.load(sys.stdin); l = m['latency_ms']; c = m['cameras'][0]
print(f'N={$1:<2} camera {$2:>4} fps: model p50 {l[\"inference\"][\"p50\"]:6.1f} ms, end-to-end p50 {l[\"end_to_end\"][\"p50\"]:6.1f} / p95 {l[\"end_to_end\"][\"p95\"]:6.1f} ms, '
      f'overhead p50 {l[\"overhead\"][\"p50\"]:5.1f} / p95 {l[\"overhead\"][\"p95\"]:5.1f} ms = {100*m[\"overhead_fraction\"]:.1f}% of model; '
      f'queue p50 {l[\"queue\"][\"p50\"]:.1f} ms, scored {c[\"scored\"]}, dropped {c[\"dropped\"]}, delivered {m[\"mqtt\"][\"delivered\"]}')"
}
run 32 1.5 60
run 8 5 60
run 32 10 40
