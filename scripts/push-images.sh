#!/usr/bin/env bash
# Pushes the module images of one platform (built by scripts/build-images.sh) to $CONTAINER_REGISTRY_ADDRESS,
# under the versioned tags of module.json (<repository>:<version>-<platform>, never :latest).
# Checks first: the docker CLI and engine, the registry variable, and (for a registry that is not on this
# machine) a `docker login` for it (Azure Container Registry: `az acr login -n NAME`).
# Usage: scripts/push-images.sh [--platform amd64|arm32v7|arm64v8] [--modules "mqtt-server aggregator esp-sim"]
set -euo pipefail
cd "$(dirname "$0")/.."
platform=amd64; modules="mqtt-server aggregator esp-sim"
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n 2,6p "$0"; exit 0;;
    --platform) platform="${2:?--platform needs a value}"; shift 2;;
    --modules) modules="${2:?--modules needs a value}"; shift 2;;
    *) echo "push-images: unknown option $1; see --help" >&2; exit 2;;
  esac
done
if [ -z "${CONTAINER_REGISTRY_ADDRESS:-}" ] && [ -f .env ]; then
  CONTAINER_REGISTRY_ADDRESS=$(sed -n 's/^CONTAINER_REGISTRY_ADDRESS=["]*\([^"]*\)["]*$/\1/p' .env | tail -1)
fi
[ -n "${CONTAINER_REGISTRY_ADDRESS:-}" ] || {
  echo "push-images: set CONTAINER_REGISTRY_ADDRESS (e.g. myregistry.azurecr.io or localhost:5000), in the environment or .env" >&2; exit 1; }
export CONTAINER_REGISTRY_ADDRESS
command -v docker >/dev/null 2>&1 || { echo "push-images: the docker CLI is missing; install Docker Engine" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "push-images: cannot reach the Docker engine (is dockerd running, may this user use it?)" >&2; exit 1; }
case "$CONTAINER_REGISTRY_ADDRESS" in
  localhost:*|127.0.0.1:*|localhost|127.0.0.1) ;;
  *)
    cfg="${DOCKER_CONFIG:-$HOME/.docker}/config.json"
    if ! [ -f "$cfg" ] || ! grep -q "\"$CONTAINER_REGISTRY_ADDRESS\"" "$cfg"; then
      echo "push-images: no docker login for $CONTAINER_REGISTRY_ADDRESS; run \`docker login $CONTAINER_REGISTRY_ADDRESS\` (ACR: \`az acr login -n ${CONTAINER_REGISTRY_ADDRESS%%.*}\`)" >&2
      exit 1
    fi;;
esac
for t in $(scripts/build-images.sh --print-tags --platform "$platform" --modules "$modules"); do
  docker image inspect "$t" >/dev/null 2>&1 || { echo "push-images: $t is not built; run scripts/build-images.sh --platform $platform" >&2; exit 1; }
  echo "push-images: $t"
  docker push -q "$t" >/dev/null
  echo "push-images: pushed $(docker image inspect -f '{{index .RepoDigests 0}}' "$t" 2>/dev/null || echo "$t")"
done
