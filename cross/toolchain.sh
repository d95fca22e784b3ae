#!/usr/bin/env bash
# The aarch64 cross toolchain on a Debian/Ubuntu x86-64 host (idempotent):
#   Rust's aarch64 standard library, Debian's cross gcc and arm64 libc/kernel headers
#   (linker, ring's C code, the arm64 linux/videodev2.h that tests/v4l2_abi.rs checks the
#   V4L2 layouts against), user-mode qemu to run arm64 test binaries.
# .cargo/config.toml then points cargo at them; see cross/README.md.
set -euo pipefail
rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu \
  || rustup target add aarch64-unknown-linux-gnu
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || need+=(libc6-dev-arm64-cross)
[ -e /usr/aarch64-linux-gnu/include/linux/videodev2.h ] || need+=(linux-libc-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
aarch64-linux-gnu-gcc --version | head -1
qemu-aarch64 --version | head -1
