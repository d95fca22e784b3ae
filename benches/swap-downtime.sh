#!/usr/bin/env bash
# Swap downtime: a replay camera runs while two bundles are installed and one rolled back;
# prints frames dropped and the longest gap between consecutive results (against the
# camera period), from what a subscriber received. Needs mosquitto_sub (mosquitto-clients).
#   bash benches/swap-downtime.sh [path/to/maeday-edge] [fps] [masks]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/maeday-edge}
fps=${2:-5}
masks=${3:-8}
[ -x "$bin" ] || cargo build --release
bin=$(realpath "$bin")
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" bundle keygen --out "$tmp/ws" >/dev/null
for v in 2 3; do
  mkdir -p "$tmp/m$v"
  cp models/default/manifest.toml models/default/*.onnx "$tmp/m$v/"
  printf '\n[thresholds]\nimage = %s\npixel = 5.0\n' "$((v * 10))" >> "$tmp/m$v/manifest.toml"
  "$bin" bundle pack --model "$tmp/m$v" --key "$tmp/ws.key" --version "$v" --device dev \
    --golden models/samples/coffee-224.png --out "$tmp/v$v.bundle" 2>/dev/null >/dev/null
done
cat > "$tmp/dev.toml" <<CONF
device_id = "dev"
console = false
[model]
masks = $masks
[[camera]]
name = "cam"
source = { kind = "replay", path = "$PWD/../shared/data/conveyor/bolt-multi-size-detection.gif", fps = $fps, loop = true }
[output]
format = "json"
metrics_interval_s = 0
[mqtt]
url = "mqtt://127.0.0.1:$port"
embedded_broker = "127.0.0.1:$port"
spool = { dir = "$tmp/spool" }
max_packet_bytes = 2097152
[bundles]
state_dir = "$tmp/state"
trusted_keys = ["$tmp/ws.pub"]
CONF
"$bin" run --config "$tmp/dev.toml" > "$tmp/summary" 2> "$tmp/log" &
dev=$!
sleep 3
mosquitto_sub -h 127.0.0.1 -p "$port" -t 'maeday/dev/cam/result' -F '%U %p' > "$tmp/results" &
sleep 3
"$bin" bundle send --bundle "$tmp/v2.bundle" --mqtt-url "mqtt://127.0.0.1:$port" --device dev 2>/dev/null | python3 -c 'import json,sys; v=json.load(sys.stdin); print("v2:", v["state"], "install_ms %.0f" % v["install_ms"])'
sleep 3
"$bin" bundle send --bundle "$tmp/v3.bundle" --mqtt-url "mqtt://127.0.0.1:$port" --device dev 2>/dev/null | python3 -c 'import json,sys; v=json.load(sys.stdin); print("v3:", v["state"], "install_ms %.0f" % v["install_ms"])'
sleep 3
"$bin" bundle command --key "$tmp/ws.key" --device dev --mqtt-url "mqtt://127.0.0.1:$port" rollback >/dev/null 2>&1
sleep 4
kill -TERM $dev; wait $dev || true
python3 - "$tmp/results" "$tmp/summary" "$fps" <<'PY'
import json, sys
rows = [l.split(' ', 1) for l in open(sys.argv[1]) if l.strip()]
t = [float(a) for a, _ in rows]
r = [json.loads(b) for _, b in rows]
seqs = [x["seq"] for x in r]
thr = [x["image_threshold"] for x in r]
switches = sum(1 for a, b in zip(thr, thr[1:]) if a != b)
gaps = [b - a for a, b in zip(t, t[1:])]
s = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
c = s["cameras"][0]
print(f"{len(r)} results at {sys.argv[3]} fps, {switches} model switches seen (thresholds {sorted(set(map(str, thr)))}), "
      f"seq gaps {sum(b - a - 1 for a, b in zip(seqs, seqs[1:]))}, dropped {c['dropped']} of {c['captured']} captured, "
      f"longest gap between results {1e3 * max(gaps):.0f} ms (camera period {1e3 / float(sys.argv[3]):.0f} ms), "
      f"median gap {1e3 * sorted(gaps)[len(gaps) // 2]:.0f} ms")
PY
