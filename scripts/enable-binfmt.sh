#!/usr/bin/env bash
# Lets this machine's Docker engine run arm32v7 (and arm64v8) images under emulation: installs Debian's
# qemu-user-static and binfmt-support if missing, mounts binfmt_misc if needed, and enables the qemu-arm and
# qemu-aarch64 handlers with the fix-binary flag (F: the kernel keeps the interpreter open, so it works inside
# containers that do not have it). Safe to run again.
# Exit status: 0 enabled; 2 usage; 3 the kernel (or the container this runs in) does not allow binfmt_misc.
# Usage: scripts/enable-binfmt.sh
set -euo pipefail

case "${1:-}" in -h|--help) sed -n 2,7p "$0"; exit 0;; "") ;; *) echo "usage: scripts/enable-binfmt.sh" >&2; exit 2;; esac

if ! command -v update-binfmts >/dev/null 2>&1 || [ ! -x /usr/bin/qemu-arm-static ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "enable-binfmt: need root to apt-get install qemu-user-static binfmt-support" >&2; exit 1; fi
  echo "enable-binfmt: apt-get install qemu-user-static binfmt-support"
  # A partly failed update (one architecture's index mid-sync on the mirror, seen 2026-12-05) is not
  # fatal: the install says whether what is needed could be found.
  apt-get update -qq || echo "enable-binfmt: apt-get update reported errors (above); trying the install anyway" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support >/dev/null
fi

if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  if ! mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null; then
    echo "enable-binfmt: this kernel (or the container this runs in) does not let binfmt_misc be mounted at /proc/sys/fs/binfmt_misc; arm images cannot run on this Docker engine. Run them on an arm machine, or where binfmt_misc is allowed" >&2
    exit 3
  fi
fi

for arch in arm aarch64; do
  update-binfmts --enable "qemu-$arch" >/dev/null 2>&1 || true
  entry=/proc/sys/fs/binfmt_misc/qemu-$arch
  if [ ! -e "$entry" ] || ! grep -q '^enabled' "$entry"; then
    echo "enable-binfmt: the qemu-$arch handler could not be enabled (the kernel refused to register it); arm images cannot run here" >&2
    exit 3
  fi
  if ! grep -q '^flags:.*F' "$entry"; then
    echo "enable-binfmt: qemu-$arch is registered without the fix-binary flag (F), so containers cannot use it; unregister it (echo -1 > $entry) and run this again" >&2
    exit 3
  fi
done
echo "enable-binfmt: qemu-arm and qemu-aarch64 handlers enabled (flags: $(sed -n 's/^flags: //p' /proc/sys/fs/binfmt_misc/qemu-arm))"
