#!/usr/bin/env bash
# The aarch64 build, checked under user-mode qemu (CI runs this; ~200x slower than native,
# so only the tiny fixture graphs of tests/fixtures run here):
#   0. checks the V4L2 structs and ioctl numbers against the arm64 kernel headers,
#   1. cross-builds the daemon and the `reference` test suite for aarch64-unknown-linux-gnu
#      and runs the suite under qemu: f32 against the torch/numpy references (<= 1e-4),
#      the f16 plan on tract's native fp16 kernels (forced: qemu shows tract the host's
#      /proc/cpuinfo), schedules bit for bit, tiling;
#   2. runs the cross-built daemon binary itself under qemu (`score`) on the bundled photos
#      and compares its scores with the x86 binary's: f32 within 1e-4 relative, f16
#      (native arm64 kernels) against x86 f32 within the tolerance of cross/README.md.
# Usage: bash cross/qemu-test.sh X86_BINARY   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
x86=${1:?usage: cross/qemu-test.sh X86_BINARY}
target=aarch64-unknown-linux-gnu
tdir=${CARGO_TARGET_DIR:-target}

bash cross/toolchain.sh
# The hand-written V4L2 ABI (src/daemon/source/v4l2_abi.rs) against the arm64 kernel headers the
# toolchain brought, and the host's (the x86 test binary compiles both with gcc).
MAEDAY_EXPECT_ARM64_HEADERS=1 cargo test --test v4l2_abi
export TRACT_CPU_AARCH64_KIND=a75 MAEDAY_EXPECT_NATIVE_F16=1
cargo test --target "$target" --lib --test reference -- --nocapture 2>&1 | grep -v '^$'
# The heap test needs a process of its own (glibc's state is shared by the suite's tests).
cargo test --target "$target" -p maeday-core --lib -- --ignored heap::

arm="$tdir/$target/debug/maeday-edge"
# ELF e_machine 0xb7 = EM_AARCH64.
python3 -c 'import sys; sys.exit(open(sys.argv[1], "rb").read(20)[18:20] != b"\xb7\x00")' "$arm" \
  || { echo "$arm is not an arm64 binary" >&2; exit 1; }
images=(models/samples/coins.png models/samples/camera.png models/samples/coffee-224.png)
fixture=tests/fixtures/fixture-recon
out=$(mktemp -d)
"$x86" score --model "$fixture" --threads 1 --precision f32 "${images[@]}" >"$out/x86-f32.jsonl"
# --precision f32 explicitly: `auto` picks f16 here (native fp16 kernels are forced on).
qemu-aarch64 -L /usr/aarch64-linux-gnu "$arm" score --model "$fixture" --threads 1 \
  --precision f32 "${images[@]}" >"$out/arm-f32.jsonl"
qemu-aarch64 -L /usr/aarch64-linux-gnu "$arm" score --model "$fixture" --threads 1 \
  --precision f16 "${images[@]}" >"$out/arm-f16.jsonl"
python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
load = lambda n: {r["image"]: r["score"] for r in map(json.loads, open(f"{d}/{n}.jsonl"))}
x86, a32, a16 = load("x86-f32"), load("arm-f32"), load("arm-f16")
assert x86.keys() == a32.keys() == a16.keys() and len(x86) == 3, (x86, a32, a16)
worst32 = worst16 = 0.0
for k in x86:
    r32 = abs(a32[k] - x86[k]) / abs(x86[k])
    r16 = abs(a16[k] - x86[k]) / abs(x86[k])
    print(f"{k}: x86 f32 {x86[k]:.6f}  arm64 f32 {a32[k]:.6f} ({r32:.1e})  "
          f"arm64 f16 {a16[k]:.6f} ({r16:.1e})")
    worst32, worst16 = max(worst32, r32), max(worst16, r16)
assert worst32 <= 1e-4, f"arm64 f32 vs x86 f32: relative {worst32}"
assert worst16 <= 1e-3, f"arm64 native f16 vs x86 f32: relative {worst16}"
print(f"arm64 daemon binary: f32 within {worst32:.1e}, native f16 within {worst16:.1e} of x86 f32")
PY

# 3. The deploy kit: stage the arm64 daemon with install.sh and have systemd check the unit
#    (any warning fails: unknown keys are only warnings to systemd).
stage=$(mktemp -d)
bash cross/install.sh --root "$stage" --binary "$arm" 2>/dev/null
for f in opt/maeday-edge/bin/maeday-edge opt/maeday-edge/models/default/manifest.toml \
         opt/maeday-edge/models/efficientnet-lite0/extractor.toml \
         etc/maeday-edge/config.toml etc/systemd/system/maeday-edge.service; do
  [ -s "$stage/$f" ] || { echo "install.sh did not stage $f" >&2; exit 1; }
done
if command -v systemd-analyze >/dev/null; then
  sed "s#/opt/maeday-edge/#$stage/opt/maeday-edge/#g" "$stage/etc/systemd/system/maeday-edge.service" \
    >"$stage/maeday-edge.service"
  verdict=$(systemd-analyze verify --man=no "$stage/maeday-edge.service" 2>&1) || true
  [ -z "$verdict" ] || { echo "systemd-analyze verify: $verdict" >&2; exit 1; }
  echo "systemd unit: verified"
fi
echo "arm64: OK"
