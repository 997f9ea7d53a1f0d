#!/usr/bin/env bash
# Expands deployment.template.json into config/deployment.<platform>.json with `edge-dev genconfig` (the same
# output as `iotedgedev genconfig -P <platform>`): ${MODULES.x} become the versioned image tags of
# modules/x/module.json, $VARS come from .env and the environment (CONTAINER_REGISTRY_ADDRESS, _USERNAME and
# _PASSWORD are needed by the template's registryCredentials).
# Usage: scripts/genconfig.sh [--platform amd64|arm32v7|arm64v8] [--template FILE] [--out-dir DIR]
# Environment: EDGE_DEV (default: target/release/edge-dev, else target/debug/edge-dev, else edge-dev on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
platform=amd64; template=deployment.template.json; out=config
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n 2,7p "$0"; exit 0;;
    --platform) platform="${2:?--platform needs a value}"; shift 2;;
    --template) template="${2:?--template needs a value}"; shift 2;;
    --out-dir) out="${2:?--out-dir needs a value}"; shift 2;;
    *) echo "genconfig: unknown option $1; see --help" >&2; exit 2;;
  esac
done
bin="${EDGE_DEV:-}"
if [ -z "$bin" ]; then
  for c in target/release/edge-dev target/debug/edge-dev "$(command -v edge-dev || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && { bin="$c"; break; }
  done
fi
[ -n "$bin" ] || { echo "genconfig: no edge-dev binary; build it with \`cargo build --release -p edge-dev\` or set EDGE_DEV" >&2; exit 1; }
for v in CONTAINER_REGISTRY_ADDRESS CONTAINER_REGISTRY_USERNAME CONTAINER_REGISTRY_PASSWORD; do
  envfile="$(dirname "$template")/.env"
  if [ -z "${!v:-}" ] && ! { [ -f "$envfile" ] && grep -q "^$v=" "$envfile"; }; then
    echo "genconfig: $v is not set (environment or $envfile); the template's registryCredentials need it" >&2; exit 1
  fi
done
"$bin" genconfig --template "$template" --platform "$platform" --out-dir "$out"
