#!/usr/bin/env bash
# The one prepared GPU check of the tract-cuda engine, for a lent GPU machine (the `device`
# tool: one call, well inside 10 minutes, nothing reachable from there).
#
# On the development machine:
#   bash benches/gpu-check.sh build      # stripped edge build with --features tract-cuda
#                                        # -> gpu-build/maeday-edge.gz (ignored by git; carried)
#   bash benches/gpu-check.sh aside      # moves the default model's training checkpoint
#                                        # (.pth, 26 MB) out of the tree: what travels (the
#                                        # working tree + carried paths) must stay under 64 MiB
#   device call: command "bash benches/gpu-check.sh device", carry ["gpu-build"]
#   bash benches/gpu-check.sh back       # puts the checkpoint back
#
# On the GPU machine (`device`): points the loader at the CUDA libraries of the machine's
# PyTorch install (torch/lib and the nvidia/*/lib wheels), then reports into $OUT/gpu-check.md:
#   (a) parity: tract-cuda scores vs tract CPU scores on the bundled frames (relative 1e-4,
#       the tract-vs-torch tolerance),
#   (b) per-frame inference of the default model at N = 8 and 32, tract-cuda vs tract CPU,
#   (c) a ViT-B MAE with random weights exported there by the workstation tooling (too big to
#       carry) at N = 32: tract-cuda vs PyTorch eager on the same GPU,
#   (d) f16 on the GPU against f32: score differences and latency.
# Each section reports its own failure and the script goes on to the next one.
set -uo pipefail
cd "$(dirname "$0")/.."
aside=${MAEDAY_GPU_ASIDE:-$HOME/.cache/maeday-gpu-aside}

case "${1:-}" in
build)
  set -e
  cargo build --profile edge --features tract-cuda
  mkdir -p gpu-build
  # Compressed: the tree without the checkpoint is ~40 MB of the 64 MiB that travel.
  gzip -9 -c "${CARGO_TARGET_DIR:-target}/edge/maeday-edge" >gpu-build/maeday-edge.gz
  ls -la gpu-build/maeday-edge.gz
  exit 0
  ;;
aside)
  set -e
  mkdir -p "$aside"
  for f in models/default/*.pth; do [ -e "$f" ] && mv "$f" "$aside/"; done
  echo "checkpoint set aside in $aside; tracked tree now $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes"
  exit 0
  ;;
back)
  set -e
  for f in "$aside"/*.pth; do [ -e "$f" ] && mv "$f" models/default/; done
  git status --short models/default
  exit 0
  ;;
device) ;;
*)
  sed -n '2,25p' "$0"
  exit 2
  ;;
esac

out=${OUT:-$PWD/gpu-check-out}
mkdir -p "$out"
report="$out/gpu-check.md"
bin=${TMPDIR:-/tmp}/maeday-edge-gpu
if [ -f gpu-build/maeday-edge.gz ]; then
  gzip -dc gpu-build/maeday-edge.gz >"$bin" && chmod +x "$bin"
fi
[ -x "$bin" ] || { echo "no gpu-build/maeday-edge.gz: run 'bash benches/gpu-check.sh build' and carry gpu-build" | tee "$report"; exit 1; }
python=$(command -v python3 || command -v python)

# The CUDA libraries PyTorch brought (the driver's libcuda comes from the system).
libs=$("$python" - <<'PY' 2>/dev/null
import glob, os
try:
    import torch
    dirs = [os.path.join(os.path.dirname(torch.__file__), "lib")]
    site = os.path.dirname(os.path.dirname(torch.__file__))
    dirs += sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib")))
    print(":".join(d for d in dirs if os.path.isdir(d)))
except Exception:
    pass
PY
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_LOG=warn
{
  echo "# tract-cuda on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  echo
  echo "binary: $("$bin" --version), CUDA libraries from: ${libs:-none found}"
  echo
} >"$report"

frames=(models/samples/*.png)
# score ENGINE MASKS [args...] -> JSON lines
score() {
  local engine=$1 masks=$2
  shift 2
  "$bin" score --engine "$engine" --masks "$masks" "$@" "${frames[@]}"
}
median() { "$python" -c 'import json,sys,statistics; v=[json.loads(l)[sys.argv[1]] for l in sys.stdin if l.startswith("{")]; print(f"{statistics.median(v):.2f}" if v else "n/a")' "$1"; }

section() { printf '\n## %s\n\n' "$1" >>"$report"; }

section "(a) parity with the CPU (N = 32)"
if score tract 32 >"$out/cpu32.jsonl" 2>"$out/cpu32.err" && score tract-cuda 32 >"$out/gpu32.jsonl" 2>"$out/gpu32.err"; then
  "$python" - "$out/cpu32.jsonl" "$out/gpu32.jsonl" >>"$report" <<'PY'
import json, sys
cpu = {j["image"]: j["score"] for j in map(json.loads, open(sys.argv[1]))}
gpu = {j["image"]: j["score"] for j in map(json.loads, open(sys.argv[2]))}
worst = max(abs(gpu[k] - cpu[k]) / max(abs(cpu[k]), 1e-12) for k in cpu)
print(f"{len(cpu)} frames, largest relative score difference {worst:.2e} "
      f"({'within' if worst <= 1e-4 else 'OVER'} 1e-4)")
PY
else
  { echo "failed:"; echo '```'; tail -n 5 "$out/gpu32.err" "$out/cpu32.err"; echo '```'; } >>"$report"
fi

section "(b) default model, inference per frame (median ms)"
echo "| N | tract CPU | tract-cuda | CPU / GPU |" >>"$report"
echo "|---|---|---|---|" >>"$report"
for n in 8 32; do
  c=$(score tract "$n" 2>/dev/null | median inference_ms)
  g=$(score tract-cuda "$n" 2>/dev/null | median inference_ms)
  r=$("$python" -c "print(f'{float(\"$c\")/float(\"$g\"):.1f}x')" 2>/dev/null || echo n/a)
  echo "| $n | $c | $g | $r |" >>"$report"
done

section "(c) ViT-B MAE (random weights) at N = 32 (median ms per 224 window)"
if "$python" -m models.workstation export --preset vit_base --out "$out/vitb" --name vitb-random \
  --masks 32 >"$out/vitb-export.log" 2>&1; then
  g=$("$bin" score --model "$out/vitb" --engine tract-cuda --masks 32 "${frames[@]}" 2>"$out/vitb.err" | median inference_ms)
  t=$("$python" - "$out/vitb" 2>>"$out/vitb.err" <<'PY'
import statistics, sys, time, torch
from models.workstation.mae import MAE, PRESETS
m = MAE(PRESETS["vit_base"]).cuda().eval()
image = torch.rand(1, 3, 224, 224, device="cuda")
# 32 masks, each keeping 49 of the 196 patches (25%), as the exported graph does.
keep = torch.stack([torch.randperm(196)[:49] for _ in range(32)]).cuda()
times = []
with torch.no_grad():
    for i in range(12):
        torch.cuda.synchronize(); t = time.perf_counter()
        m(image, keep)
        torch.cuda.synchronize(); times.append((time.perf_counter() - t) * 1e3)
print(f"{statistics.median(times[2:]):.2f}")
PY
)
  echo "tract-cuda: ${g} ms; PyTorch eager (same GPU, 32 masked copies, forward only): ${t:-n/a} ms; goal < 10 ms, the paper: 150 ms on an A100" >>"$report"
else
  { echo "export failed:"; echo '```'; tail -n 5 "$out/vitb-export.log"; echo '```'; } >>"$report"
fi

section "(d) f16 on the GPU against f32 (N = 32)"
if score tract-cuda 32 --precision f16 >"$out/gpu32-f16.jsonl" 2>"$out/gpu32-f16.err"; then
  "$python" - "$out/gpu32.jsonl" "$out/gpu32-f16.jsonl" >>"$report" <<'PY'
import json, statistics, sys
f32 = {j["image"]: j for j in map(json.loads, open(sys.argv[1]))}
f16 = {j["image"]: j for j in map(json.loads, open(sys.argv[2]))}
worst = max(abs(f16[k]["score"] - f32[k]["score"]) / max(abs(f32[k]["score"]), 1e-12) for k in f32)
ms = lambda d: statistics.median(j["inference_ms"] for j in d.values())
print(f"largest relative score difference {worst:.2e}; inference {ms(f32):.2f} ms (f32) vs {ms(f16):.2f} ms (f16)")
PY
else
  { echo "failed:"; echo '```'; tail -n 5 "$out/gpu32-f16.err"; echo '```'; } >>"$report"
fi
cat "$report"
