#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 machine: Debian's mosquitto (broker and clients) and
# libfaketime (the chaos harness's clock steps), the Python packages of tests/requirements.txt, and
# cargo-fuzz (for the fuzz smoke, scripts/fuzz.sh). Safe to run again; does nothing that is already done.
# Usage: scripts/install-test-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in -h|--help) sed -n 2,4p "$0"; exit 0;; esac

need_apt=()
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
[ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
# the chaos harness's clock steps (tests/chaos): LD_PRELOAD=libfaketimeMT.so.1
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || need_apt+=(libfaketime)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "install-test-deps: need root (or sudo) to apt-get install ${need_apt[*]}" >&2; exit 1
  fi
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "install-test-deps: apt-get install ${need_apt[*]}"
  # a partly failed update (an architecture's index mid-sync on the mirror) is not fatal: the install
  # says whether what is needed was found
  $SUDO apt-get update -qq || echo "install-test-deps: apt-get update reported errors (above); trying the install anyway" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import pytest, paho.mqtt, azure.iot.device, jsonschema' >/dev/null 2>&1; then
  echo "install-test-deps: pip install -r tests/requirements.txt"
  python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "install-test-deps: cargo install cargo-fuzz"
  cargo install -q cargo-fuzz --locked --version 0.13.2
fi
