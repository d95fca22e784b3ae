#!/usr/bin/env bash
# What the HTTP server (`[http]`) costs the frame latency: the real daemon on the demo clip
# (demo/conveyor.gif, the bundled model and demo bank, embedded broker), run side by side
# in one session in four modes, interleaved round by round so drift hits all alike:
#   off     no [http] section,
#   idle    [http] on, nobody asking,
#   page    [http] on, a client at the live page's pace: the overlay JPEG every 0.5 s,
#           /api/live every 1 s, /metrics every 5 s (a scrape every 15 s is usual),
#   busy    [http] on, a client asking all three back to back as fast as they answer
#           (the worst case; on a 2-core device the client's own CPU counts too).
# Prints per mode the medians over rounds of end-to-end p50 (capture -> handed to every
# output) and inference p50, and the ratios against `off`.
#   bash benches/http-overhead.sh [path/to/maeday-edge] [rounds] [frames] [masks]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/maeday-edge}
rounds=${2:-3}
frames=${3:-30}
masks=${4:-32}
[ -x "$bin" ] || cargo build --release
command -v curl >/dev/null || { echo "needs curl" >&2; exit 1; }
tmp=$(mktemp -d)
poller=
trap '[ -n "$poller" ] && kill "$poller" 2>/dev/null; rm -rf "$tmp"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run() { # mode round
  local mqtt http
  mqtt=$(free_port); http=$(free_port)
  cat > "$tmp/c.toml" <<CONF
device_id = "bench"
console = false
[model]
masks = $masks
bank = "$PWD/demo/bank"
[[camera]]
name = "belt"
# fps = 0: every frame is scored, none waits in the slot (the latency is the pipeline's).
source = { kind = "replay", path = "$PWD/demo/conveyor.gif", fps = 0, loop = true }
[output]
format = "json"
heatmap = true
metrics_interval_s = 0
[files]
dir = "$tmp/out"
[mqtt]
url = "mqtt://127.0.0.1:$mqtt"
embedded_broker = "127.0.0.1:$mqtt"
spool = { dir = "$tmp/spool-$1-$2" }
CONF
  [ "$1" = off ] || printf '[http]\nlisten = "127.0.0.1:%s"\n' "$http" >> "$tmp/c.toml"
  "$bin" run --config "$tmp/c.toml" --max-frames "$frames" 2>/dev/null > "$tmp/out.log" &
  local daemon=$!
  local u="http://127.0.0.1:$http"
  case $1 in
    page) (
      until curl -sf -o /dev/null "$u/api/live"; do sleep 0.05; done
      i=0
      while kill -0 "$daemon" 2>/dev/null; do
        curl -s -o /dev/null "$u/frame/0.jpg" || true
        [ $((i % 2)) = 0 ] && { curl -s -o /dev/null "$u/api/live" || true; }
        [ $((i % 10)) = 0 ] && { curl -s -o /dev/null "$u/metrics" || true; }
        i=$((i + 1))
        sleep 0.5
      done
    ) & poller=$! ;;
    busy) (
      until curl -sf -o /dev/null "$u/api/live"; do sleep 0.05; done
      while kill -0 "$daemon" 2>/dev/null; do
        curl -s -o /dev/null -o /dev/null -o /dev/null "$u/frame/0.jpg" "$u/api/live" "$u/metrics" || true
      done
    ) & poller=$! ;;
  esac
  wait "$daemon"
  if [ -n "$poller" ]; then kill "$poller" 2>/dev/null || true; wait "$poller" 2>/dev/null || true; poller=; fi
  tail -1 "$tmp/out.log" | python3 -c "
import json, sys
m = json.load(sys.stdin); l = m['latency_ms']
print('$1', l['end_to_end']['p50'], l['inference']['p50'], m['cameras'][0]['scored'])" >> "$tmp/results"
}

for r in $(seq "$rounds"); do
  for mode in off idle page busy; do
    run "$mode" "$r"
    tail -1 "$tmp/results" | awk -v r="$r" '{printf "round %s %-6s end-to-end p50 %7.1f ms, inference p50 %7.1f ms, %s frames\n", r, $1, $2, $3, $4}'
  done
done
python3 - "$tmp/results" "$masks" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {}
for mode in ("off", "idle", "page", "busy"):
    e2e = [float(r[1]) for r in rows if r[0] == mode]
    inf = [float(r[2]) for r in rows if r[0] == mode]
    med[mode] = (statistics.median(e2e), statistics.median(inf))
base = med["off"][0]
print(f"N = {sys.argv[2]}, {len(rows) // 4} rounds, medians of the per-run p50:")
for mode, (e, i) in med.items():
    print(f"  {mode:<7} end-to-end {e:7.1f} ms  inference {i:7.1f} ms  ratio vs off {e / base:.3f}")
PY
