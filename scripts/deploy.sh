#!/usr/bin/env bash
# Deploys a generated manifest (scripts/genconfig.sh) with the Azure CLI and its azure-iot extension.
# Usage:
#   one device:  scripts/deploy.sh --hub HUB --device DEVICE_ID [--manifest config/deployment.arm32v7.json]
#                -> az iot edge set-modules --hub-name HUB --device-id DEVICE_ID --content FILE
#   a fleet:     scripts/deploy.sh --hub HUB --deployment-id ID --target-condition "tags.site='home'" \
#                    [--priority 10] [--layered] [--manifest FILE]
#                -> az iot edge deployment create ... (--layered: a layered deployment, which adds modules on
#                   top of a base deployment; its manifest must not carry $edgeAgent's runtime/systemModules)
# --dry-run prints the az command instead of running it (and skips the Azure checks).
# Fails early on: az missing, the azure-iot extension missing, not logged in (az login), missing manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
hub=""; device=""; deployment=""; condition=""; priority=10; layered=0; dry=0; manifest=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n 2,11p "$0"; exit 0;;
    --hub) hub="${2:?--hub needs a value}"; shift 2;;
    --device) device="${2:?--device needs a value}"; shift 2;;
    --deployment-id) deployment="${2:?--deployment-id needs a value}"; shift 2;;
    --target-condition) condition="${2:?--target-condition needs a value}"; shift 2;;
    --priority) priority="${2:?--priority needs a value}"; shift 2;;
    --layered) layered=1; shift;;
    --manifest) manifest="${2:?--manifest needs a value}"; shift 2;;
    --dry-run) dry=1; shift;;
    *) echo "deploy: unknown option $1; see --help" >&2; exit 2;;
  esac
done
hub="${hub:-${IOTHUB_NAME:-}}"
[ -n "$hub" ] || { echo "deploy: give --hub NAME (or set IOTHUB_NAME)" >&2; exit 2; }
if [ -n "$device" ] && [ -n "$deployment" ]; then echo "deploy: give either --device or --deployment-id, not both" >&2; exit 2; fi
if [ -z "$device" ] && [ -z "$deployment" ]; then echo "deploy: give --device ID (one device) or --deployment-id ID --target-condition COND (a fleet)" >&2; exit 2; fi
if [ -n "$deployment" ] && [ -z "$condition" ]; then echo "deploy: a fleet deployment needs --target-condition, e.g. \"tags.site='home'\"" >&2; exit 2; fi
case "$priority" in ''|*[!0-9]*) echo "deploy: --priority must be a whole number >= 0" >&2; exit 2;; esac
if [ -z "$manifest" ]; then
  files=(config/deployment.*.json)
  if [ ${#files[@]} -ne 1 ] || ! [ -f "${files[0]}" ]; then
    echo "deploy: give --manifest FILE (found ${#files[@]} config/deployment.*.json; run scripts/genconfig.sh --platform arm32v7)" >&2; exit 2
  fi
  manifest="${files[0]}"
fi
[ -f "$manifest" ] || { echo "deploy: no manifest $manifest; run scripts/genconfig.sh first" >&2; exit 1; }
if grep -q '\${MODULES\.' "$manifest"; then
  echo "deploy: $manifest is a template (has \${MODULES.x}); deploy the generated config/deployment.<platform>.json" >&2; exit 1
fi

if [ -n "$device" ]; then
  cmd=(az iot edge set-modules --hub-name "$hub" --device-id "$device" --content "$manifest")
else
  cmd=(az iot edge deployment create --hub-name "$hub" --deployment-id "$deployment" --content "$manifest"
       --target-condition "$condition" --priority "$priority")
  [ $layered -eq 1 ] && cmd+=(--layered)
fi
if [ $dry -eq 1 ]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi

command -v az >/dev/null 2>&1 || { echo "deploy: the Azure CLI (az) is missing; install it: https://learn.microsoft.com/cli/azure/install-azure-cli" >&2; exit 1; }
az extension show --name azure-iot >/dev/null 2>&1 || { echo "deploy: the azure-iot extension is missing; run \`az extension add --name azure-iot\`" >&2; exit 1; }
az account show >/dev/null 2>&1 || { echo "deploy: not logged in to Azure; run \`az login\`" >&2; exit 1; }
echo "deploy: ${cmd[*]}"
"${cmd[@]}"
