#!/usr/bin/env bash
# Installs what the container and arm tests need on Debian 12, from Debian's own archive (no image
# registry, no rustup): Debian's registry server (docker-registry), binutils (readelf) and python3-venv, and
# with --arm32v7 (--arm64v8) the armhf (arm64) cross toolchain: that architecture's standard library of the
# installed Debian rustc-web (same version), its gcc cross compiler and C library, and qemu-user-static.
# Usage: scripts/install-image-deps.sh [--arm32v7 | --arm64v8]
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n 2,6p "$0"; exit 0;;
  "") arch="";;
  --arm32v7) arch=armhf; gcc=gcc-arm-linux-gnueabihf; libc=libc6-dev-armhf-cross;;
  --arm64v8) arch=arm64; gcc=gcc-aarch64-linux-gnu; libc=libc6-dev-arm64-cross;;
  *) echo "install-image-deps: unknown option $1; see --help" >&2; exit 2;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-image-deps: need root (or sudo) for apt-get" >&2; exit 1; }
  SUDO=sudo
fi
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed'; }

need=()
installed docker-registry || need+=(docker-registry)
command -v readelf >/dev/null 2>&1 || need+=(binutils)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

updated=0
# A partly failed update (a mirror mid-sync) is not fatal: the install below says what is really missing.
apt_update() {
  if [ $updated -eq 0 ]; then
    $SUDO apt-get update -qq || echo "install-image-deps: apt-get update reported errors (above); trying the install anyway" >&2
    updated=1
  fi
}

if [ -n "$arch" ]; then
  # The $arch std must be the very version of the amd64 rustc-web (Debian's multiarch rule).
  ver=$(dpkg-query -W -f='${Version}' rustc-web 2>/dev/null || true)
  if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    echo "install-image-deps: dpkg --add-architecture $arch"
    $SUDO dpkg --add-architecture "$arch"
    updated=0
  fi
  if [ -n "$ver" ]; then
    installed "libstd-rust-web-dev:$arch" || need+=("libstd-rust-web-dev:$arch=$ver")
  else
    # No rustc-web yet: take the newest version the archive has for amd64 and for $arch alike. A
    # security update can reach one architecture's index before another's (2026-12-05: rustc-web
    # 1.96 for amd64 while armhf and arm64 still had 1.85), and the two must be the same version.
    apt_update
    versions() { apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}'; }
    common=""
    for v in $(versions "libstd-rust-web-dev:$arch"); do
      versions rustc-web | grep -qxF "$v" || continue
      if [ -z "$common" ] || dpkg --compare-versions "$v" gt "$common"; then common=$v; fi
    done
    if [ -n "$common" ]; then
      echo "install-image-deps: rustc-web $common (the newest version for both amd64 and $arch)"
      need+=("rustc-web=$common" "libstd-rust-web-dev=$common" "libstd-rust-web-dev:$arch=$common")
    else
      need+=(rustc-web libstd-rust-web-dev "libstd-rust-web-dev:$arch")
    fi
  fi
  installed "$gcc" || need+=("$gcc")
  installed "$libc" || need+=("$libc")
  installed qemu-user-static || need+=(qemu-user-static)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "install-image-deps: apt-get install ${need[*]}"
  apt_update
  # An armhf package of a name also installed for amd64 must have the same version ("Multi-Arch: same").
  # When the archive's armhf index is at another version than the installed amd64 one (seen with liblzma5
  # while a security mirror synced), move both to the armhf candidate's version, if amd64 has it too.
  log=$(mktemp)
  for _ in 1 2 3; do
    apt-get install -s --no-install-recommends "${need[@]}" >"$log" 2>&1 && break
    pins=()
    [ -n "$arch" ] || break
    for p in $(sed -n "s/.*Depends: \([^ ]*\):$arch .*but it is not going to be installed.*/\1/p" "$log" | sort -u); do
      v=$(apt-cache policy "$p:$arch" | sed -n 's/^ *Candidate: //p')
      if [ -n "$v" ] && [ "$v" != "(none)" ] && apt-cache madison "$p" | grep -q "| *$v *|.*amd64"; then
        pins+=("$p=$v" "$p:$arch=$v")
      fi
    done
    [ ${#pins[@]} -gt 0 ] || break
    echo "install-image-deps: aligning amd64 and $arch versions: ${pins[*]}"
    need+=("${pins[@]}")
  done
  rm -f "$log"
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/tmp/install-image-deps.log 2>&1; then
    # An armhf package of a name installed for amd64 must have the same version; when the archive's
    # armhf index lags behind (seen with liblzma5), pin the armhf one to the installed amd64 version.
    cat /tmp/install-image-deps.log >&2
    echo "install-image-deps: apt-get failed (log above); if it names a Multi-Arch version conflict, install 'PKG:${arch:-armhf}=<installed amd64 version>' first" >&2
    exit 1
  fi
fi
# The registry package starts a system service on :5000; the tests run their own instance on a free port.
if [ -x /bin/systemctl ] && systemctl is-active --quiet docker-registry 2>/dev/null; then
  $SUDO systemctl stop docker-registry || true
  $SUDO systemctl disable docker-registry >/dev/null 2>&1 || true
fi
exit 0
