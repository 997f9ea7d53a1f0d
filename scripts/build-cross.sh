#!/usr/bin/env bash
# Cross-compiles the three modules for a Raspberry Pi on an amd64 Debian 12 machine without rustup: Debian's
# rustc-web with that architecture's standard library, linked by Debian's gcc cross compiler
# (scripts/install-image-deps.sh --arm32v7 or --arm64v8 installs them). Release build, stripped, into
# target/<platform>/<rust target>/release/{mqtt-server,aggregator,esp-sim}.
# --platform arm32v7: 32-bit Raspberry Pi OS (armv7-unknown-linux-gnueabihf); arm64v8: 64-bit (aarch64).
# With --test it also builds the modules' unit tests and runs them under qemu-user-static.
# Usage: scripts/build-cross.sh --platform arm32v7|arm64v8 [--test]
# Environment: RUSTC (default /usr/bin/rustc, Debian's), CARGO_TARGET_DIR (default target/<platform>).
set -euo pipefail
cd "$(dirname "$0")/.."

platform=""; test=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n 2,9p "$0"; exit 0;;
    --platform) platform="${2:-}"; shift 2;;
    --test) test=1; shift;;
    *) echo "build-cross: unknown option $1; see --help" >&2; exit 2;;
  esac
done
case "$platform" in
  arm32v7) TARGET=armv7-unknown-linux-gnueabihf; gnu=arm-linux-gnueabihf; qemu=qemu-arm-static; deps=--arm32v7;;
  arm64v8) TARGET=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; qemu=qemu-aarch64-static; deps=--arm64v8;;
  *) echo "build-cross: --platform must be arm32v7 or arm64v8; see --help" >&2; exit 2;;
esac
export RUSTC="${RUSTC:-/usr/bin/rustc}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/$platform}"
for tool in cargo "$RUSTC" "$gnu-gcc"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-cross: $tool is missing; run scripts/install-image-deps.sh $deps" >&2; exit 1; }
done
sysroot=$("$RUSTC" --print sysroot)
[ -d "$sysroot/lib/rustlib/$TARGET/lib" ] || {
  echo "build-cross: $RUSTC has no standard library for $TARGET; install Debian's libstd-rust-web-dev for that architecture, of the same version as rustc-web (scripts/install-image-deps.sh $deps)" >&2; exit 1; }
rv=$("$RUSTC" --version)
case "$rv" in "rustc 1.85"*|"rustc 1.8"[6-9]*|"rustc 1.9"*) ;; *) echo "build-cross: $rv is older than the workspace's rust-version 1.85" >&2; exit 1;; esac

env_target=$(echo "$TARGET" | tr 'a-z-' 'A-Z_')
cc_target=$(echo "$TARGET" | tr '-' '_')
export "CARGO_TARGET_${env_target}_LINKER=$gnu-gcc"
export "CC_${cc_target}=$gnu-gcc"
export "AR_${cc_target}=$gnu-ar"
# Test binaries run under qemu; -E LD_LIBRARY_PATH: without it the cross loader reads the host's
# ld.so.cache and threaded programs crash (seen here with Debian's qemu-user-static 7.2).
export "CARGO_TARGET_${env_target}_RUNNER=$qemu -L /usr/$gnu -E LD_LIBRARY_PATH=/usr/$gnu/lib"
export CARGO_PROFILE_RELEASE_STRIP=symbols
# Resolve for Rust 1.85 even where Cargo.lock would allow newer (the workspace's lock is already for 1.85).
export CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback

pkgs=(-p mqtt-server -p aggregator -p esp-sim)
echo "build-cross: $rv, cargo build --release --target $TARGET into $CARGO_TARGET_DIR"
cargo build --locked --release --target "$TARGET" "${pkgs[@]}" --bins
if [ $test -eq 1 ]; then
  command -v "$qemu" >/dev/null 2>&1 || { echo "build-cross: $qemu is missing; run scripts/install-image-deps.sh $deps" >&2; exit 1; }
  # Unit tests (lib and bins); the black-box tests in tests/ start the native edge-dev and are run natively.
  cargo test --locked --release --target "$TARGET" "${pkgs[@]}" --lib --bins
fi
out="$CARGO_TARGET_DIR/$TARGET/release"
for b in mqtt-server aggregator esp-sim; do
  echo "build-cross: $out/$b ($(du -h "$out/$b" | cut -f1), $(readelf -h "$out/$b" | sed -n 's/.*Machine: *//p'))"
done
