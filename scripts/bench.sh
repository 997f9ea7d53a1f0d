#!/usr/bin/env bash
# Benchmarks the pipeline on this machine and compares it with the peers a user would pick instead:
# end to end (esp-sim load -> MqttServerModule -> edge-dev hub -> AggregatorModule -> upstream, QoS 1),
# MQTT ingest against Debian's Mosquitto, windowed aggregation (workloads A, B, C) against bytewax and DuckDB
# (PyPI), footprint, and the pipeline with 1,000 and 10,000 patient groups (CPU, RSS, disk bytes per message).
# Installs what it needs (apt: mosquitto, mosquitto-clients, python3-venv; a venv bench/.venv with
# bench/requirements.txt), builds the release binaries (into $CARGO_TARGET_DIR when set; not when --bin-dir is
# given), writes bench/results/<UTC date>.json and prints a table. ~40 min on 2 cores (+~4 for a cold build).
# All on 127.0.0.1. Figures: docs/PERFORMANCE.md.
# Usage: scripts/bench.sh [bench/run.py options: --quick, --runs N,
#        --only e2e,latency,ingest,aggregation,groups, --bin-dir DIR, --help]
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n 2,10p "$0"; echo; echo "bench/run.py options:"; exec python3 bench/run.py --help;; esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
need_apt=()
[ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bench: apt-get install ${need_apt[*]}" >&2
  $SUDO apt-get update -qq || echo "bench: apt-get update reported errors (above); trying the install anyway" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

VENV=bench/.venv
if ! "$VENV/bin/python" -c 'import bytewax, duckdb' >/dev/null 2>&1; then
  echo "bench: creating $VENV with bench/requirements.txt (bytewax, duckdb)" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r bench/requirements.txt
fi

# 10,000 simulated devices are 10,000 sockets in esp-sim and in MqttServerModule (which inherits this limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

BIN_ARGS=()
case " $* " in
  *" --bin-dir "*|*" --bin-dir="*|*" --table-from "*|*" --table-from="*) ;;  # binaries given, or no run
  *)
    BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
    BIN_ARGS=(--bin-dir "$BIN_DIR")
    echo "bench: cargo build --release (edge-dev, mqtt-server, aggregator, esp-sim) into $BIN_DIR" >&2
    cargo build --release -q -p edge-dev -p mqtt-server -p aggregator -p esp-sim --bins ;;
esac

exec "$VENV/bin/python" bench/run.py --python "$VENV/bin/python" "${BIN_ARGS[@]}" "$@"
