#!/usr/bin/env bash
# Install maeday-edge on a device (run there, as root), or stage the same tree under a
# folder (--root) to copy onto an image.
#
#   sudo cross/install.sh --binary maeday-edge [--config my.toml] [--model models/default]
#   cross/install.sh --root /tmp/stage --binary target/aarch64-unknown-linux-gnu/release/maeday-edge
#
# Lays out:
#   /opt/maeday-edge/bin/maeday-edge        the daemon
#   /opt/maeday-edge/models/default/        the default model ($MAEDAY_MODEL in the unit)
#   /opt/maeday-edge/models/efficientnet-lite0/  the memory bank's feature extractor
#                                           ($MAEDAY_EXTRACTOR; enrollment needs it)
#   /etc/maeday-edge/config.toml            the config (kept if it exists)
#   /etc/systemd/system/maeday-edge.service the unit (cross/maeday-edge.service)
#   /var/lib/maeday-edge/                   spool and bundle slots (systemd StateDirectory)
# and, without --root: a system user `maeday` in the video group, then enables and
# (re)starts the service after checking the config with the installed binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
root="" binary="" config="" model="$repo/models/default" start=1

while [ $# -gt 0 ]; do
  case $1 in
    --root) root=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$binary" ] || { echo "install.sh: --binary is required" >&2; exit 2; }
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }
[ -f "$model/manifest.toml" ] || { echo "install.sh: no manifest.toml in $model" >&2; exit 1; }
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (or stage with --root DIR)" >&2; exit 1
fi

opt=$root/opt/maeday-edge
install -d -m 0755 "$opt/bin" "$opt/models" "$root/etc/maeday-edge" "$root/etc/systemd/system"
install -m 0755 "$binary" "$opt/bin/maeday-edge.new"
mv -f "$opt/bin/maeday-edge.new" "$opt/bin/maeday-edge"
# The model: copied beside, then renamed over the old one (never a half-copied model).
rm -rf "$opt/models/default.new"
cp -r "$model" "$opt/models/default.new"
# Training checkpoints stay on the workstation: the device needs the graph and manifest.
rm -f "$opt/models/default.new"/*.pth
rm -rf "$opt/models/default.old"
[ -d "$opt/models/default" ] && mv "$opt/models/default" "$opt/models/default.old"
mv "$opt/models/default.new" "$opt/models/default"
rm -rf "$opt/models/default.old"
# The extractor, the same way (a bank records its sha256: a changed one is refused).
rm -rf "$opt/models/efficientnet-lite0.new" "$opt/models/efficientnet-lite0.old"
cp -r "$repo/models/efficientnet-lite0" "$opt/models/efficientnet-lite0.new"
[ -d "$opt/models/efficientnet-lite0" ] && mv "$opt/models/efficientnet-lite0" "$opt/models/efficientnet-lite0.old"
mv "$opt/models/efficientnet-lite0.new" "$opt/models/efficientnet-lite0"
rm -rf "$opt/models/efficientnet-lite0.old"
install -m 0644 "$repo/README.md" "$opt/README.md"
install -m 0644 "$here/maeday-edge.service" "$root/etc/systemd/system/maeday-edge.service"

cfg=$root/etc/maeday-edge/config.toml
if [ -n "$config" ]; then
  install -m 0640 "$config" "$cfg"
elif [ ! -e "$cfg" ]; then
  install -m 0640 "$repo/firmware-config/conveyor.toml" "$cfg"
  echo "install.sh: $cfg is the conveyor example: edit device_id, camera and broker" >&2
fi

if [ -n "$root" ]; then
  echo "staged under $root"
  exit 0
fi

getent group video >/dev/null || groupadd --system video
if ! id maeday >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /var/lib/maeday-edge \
    --shell /usr/sbin/nologin --user-group --groups video maeday
fi
chgrp maeday "$cfg"
# The config must load (unknown keys, bad values, missing files) before systemd runs it.
MAEDAY_MODEL=$opt/models/default "$opt/bin/maeday-edge" run --check --config "$cfg"
systemctl daemon-reload
systemctl enable maeday-edge.service
if [ "$start" = 1 ]; then
  systemctl restart maeday-edge.service
  systemctl --no-pager status maeday-edge.service | head -5 || true
fi
