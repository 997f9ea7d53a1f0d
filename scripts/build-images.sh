#!/usr/bin/env bash
# Builds the module images for one platform, tagged as module.json says: <repository>:<version>-<platform>
# (e.g. $CONTAINER_REGISTRY_ADDRESS/mqtt-server:0.1.0-arm32v7; versioned, never :latest), which is what
# `edge-dev genconfig` / `iotedgedev genconfig` put into config/deployment.<platform>.json.
#   default      docker buildx build with the module's Dockerfile.<platform> (multi-stage: compiles in a Rust
#                image, cross-compiles for arm; needs buildx and internet). Add --push to push at once.
#   --prebuilt   no base image to pull: compiles here (amd64: cargo --release; arm32v7: scripts/build-arm32v7.sh),
#                makes the root file system with scripts/collect-rootfs.sh and builds the Dockerfile's
#                "prebuilt" stage (FROM scratch) with the classic builder. Same runtime image.
# Usage: scripts/build-images.sh [--platform amd64|arm32v7|arm64v8] [--prebuilt] [--push] [--modules "mqtt-server aggregator esp-sim"]
# Environment: CONTAINER_REGISTRY_ADDRESS (default localhost:5000, as iotedgedev's .env), or read from .env;
#   CONTAINER_TAG (optional, as iotedgedev: <version>-<CONTAINER_TAG>-<platform>).
# Prints each image with its size; --print-tags only prints the tags.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n 2,13p "$0"; }

platform=amd64; prebuilt=0; push=0; print_tags=0; modules="mqtt-server aggregator esp-sim"
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0;;
    --platform) platform="${2:?--platform needs a value}"; shift 2;;
    --prebuilt) prebuilt=1; shift;;
    --push) push=1; shift;;
    --modules) modules="${2:?--modules needs a value}"; shift 2;;
    --print-tags) print_tags=1; shift;;
    *) echo "build-images: unknown option $1; see --help" >&2; exit 2;;
  esac
done
case "$platform" in
  amd64) docker_platform=linux/amd64; arch=amd64; variant="";;
  arm32v7) docker_platform=linux/arm/v7; arch=arm; variant=v7;;
  arm64v8) docker_platform=linux/arm64; arch=arm64; variant=v8;;
  *) echo "build-images: --platform must be amd64, arm32v7 or arm64v8 (got $platform)" >&2; exit 2;;
esac
if [ -z "${CONTAINER_REGISTRY_ADDRESS:-}" ] && [ -f .env ]; then
  CONTAINER_REGISTRY_ADDRESS=$(sed -n 's/^CONTAINER_REGISTRY_ADDRESS=["]*\([^"]*\)["]*$/\1/p' .env | tail -1)
fi
export CONTAINER_REGISTRY_ADDRESS="${CONTAINER_REGISTRY_ADDRESS:-localhost:5000}"

# The tag of a module, from its module.json (the same rule as genconfig: repository:version-platform).
tag_of() {
  python3 - "$1" "$platform" <<'PY'
import json, os, re, sys
folder, platform = sys.argv[1], sys.argv[2]
img = json.load(open(f"modules/{folder}/module.json"))["image"]
repo = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: os.environ.get(m.group(1), m.group(0)), img["repository"])
if "$" in repo:
    sys.exit(f"modules/{folder}/module.json: repository {img['repository']!r} needs a variable that is not set")
if platform not in img["tag"]["platforms"]:
    sys.exit(f"modules/{folder}/module.json has no Dockerfile for platform {platform}")
extra = os.environ.get("CONTAINER_TAG", "")  # iotedgedev's optional extra tag part
print(f"{repo.lower()}:{img['tag']['version']}{'-' + extra if extra else ''}-{platform}")
PY
}
for m in $modules; do [ -f "modules/$m/module.json" ] || { echo "build-images: no modules/$m/module.json" >&2; exit 1; }; done
if [ $print_tags -eq 1 ]; then for m in $modules; do tag_of "$m"; done; exit 0; fi

command -v docker >/dev/null 2>&1 || { echo "build-images: the docker CLI is missing; install Docker Engine" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "build-images: cannot reach the Docker engine (is dockerd running, may this user use it?)" >&2; exit 1; }

if [ $prebuilt -eq 0 ]; then
  docker buildx version >/dev/null 2>&1 || {
    echo "build-images: docker buildx is missing; install it (docker-buildx-plugin) or build from binaries made here with --prebuilt" >&2; exit 1; }
  for m in $modules; do
    t=$(tag_of "$m")
    out=(--load); [ $push -eq 1 ] && out=(--push)
    echo "build-images: $t"
    docker buildx build --platform "$docker_platform" -f "Dockerfile.$platform" --build-arg "MODULE=$m" -t "$t" "${out[@]}" .
  done
else
  case "$platform" in
    amd64)
      export CARGO_TARGET_DIR="${IMAGES_CARGO_TARGET_DIR:-$PWD/target/images}"
      pkgs=(); for m in $modules; do pkgs+=(-p "$m"); done
      CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --locked --release "${pkgs[@]}" --bins
      bindir="$CARGO_TARGET_DIR/release"; sysroot=/;;
    arm32v7)
      scripts/build-arm32v7.sh
      bindir="${CARGO_TARGET_DIR:-$PWD/target/arm32v7}/armv7-unknown-linux-gnueabihf/release"; sysroot=/usr/arm-linux-gnueabihf;;
    arm64v8)
      scripts/build-cross.sh --platform arm64v8
      bindir="${CARGO_TARGET_DIR:-$PWD/target/arm64v8}/aarch64-unknown-linux-gnu/release"; sysroot=/usr/aarch64-linux-gnu;;
  esac
  for m in $modules; do
    t=$(tag_of "$m")
    ctx="$PWD/target/images/context/$platform/$m"
    scripts/collect-rootfs.sh "$bindir/$m" "$ctx/rootfs" "$sysroot" >/dev/null
    echo "build-images: $t (prebuilt)"
    old=$(docker image inspect -f '{{.Id}}' "$t" 2>/dev/null || true)
    DOCKER_BUILDKIT=0 docker build -q --target prebuilt -f "Dockerfile.$platform" -t "$t" "$ctx" >/dev/null
    if [ "$platform" != amd64 ]; then
      # The classic builder records its own platform (amd64) for FROM scratch; set the image's real one.
      built=$(docker image inspect -f '{{.Id}}' "$t")
      docker save "$t" | python3 scripts/lib/set-image-platform.py "$arch" $variant | docker load -q >/dev/null
      [ "$built" != "$(docker image inspect -f '{{.Id}}' "$t")" ] && docker rmi "$built" >/dev/null 2>&1 || true
    fi
    new=$(docker image inspect -f '{{.Id}}' "$t")
    if [ -n "$old" ] && [ "$old" != "$new" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
    [ $push -eq 1 ] && docker push -q "$t" >/dev/null
  done
fi
for m in $modules; do
  t=$(tag_of "$m")
  docker image inspect -f "{{.Size}} {{.Os}}/{{.Architecture}}{{if .Variant}}/{{.Variant}}{{end}}" "$t" 2>/dev/null \
    | awk -v t="$t" '{printf "%-60s %6.1f MB  %s\n", t, $1/1e6, $2}' || echo "$t (not in the local engine; pushed)"
done
