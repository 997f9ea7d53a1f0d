#!/usr/bin/env bash
# Runs the whole seed pipeline on this machine: builds the workspace, then `edge-dev up` starts the local
# edge runtime (hub, routes, twins, store-and-forward) and the three modules from deployment.template.json:
# ESPSimModule publishes a temperature every 2 s to MqttServerModule on port 1889, edgeHub's routes carry it
# to AggregatorModule, and each one-minute average goes $upstream: it is printed here and appended to
# .edge-dev/upstream.jsonl. Stop with Ctrl-C.
# Usage: scripts/run-pipeline.sh [extra edge-dev up options, e.g. --duration 150]
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n 2,7p "$0"; exit 0;; esac
cargo build --workspace --bins --release
exec target/release/edge-dev up --manifest deployment.template.json --upstream-log .edge-dev/upstream.jsonl "$@"
