#!/usr/bin/env bash
# Cross-compiles the three modules for arm32v7 (Raspberry Pi 2/3/4 with 32-bit Raspberry Pi OS) on an amd64
# Debian 12 machine without rustup: Debian's rustc-web 1.85 with its armhf standard library, linked by
# gcc-arm-linux-gnueabihf (scripts/install-image-deps.sh --arm32v7 installs them). Release build, stripped,
# into target/arm32v7/armv7-unknown-linux-gnueabihf/release/{mqtt-server,aggregator,esp-sim}.
# With --test it also builds the modules' unit tests and runs them under qemu-arm-static.
# Usage: scripts/build-arm32v7.sh [--test]
# Environment: RUSTC (default /usr/bin/rustc, Debian's), CARGO_TARGET_DIR (default target/arm32v7).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n 2,8p "$0"; exit 0;; ""|--test) ;; *) echo "build-arm32v7: unknown option $1; see --help" >&2; exit 2;; esac

TARGET=armv7-unknown-linux-gnueabihf
export RUSTC="${RUSTC:-/usr/bin/rustc}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/arm32v7}"
for tool in cargo "$RUSTC" arm-linux-gnueabihf-gcc; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-arm32v7: $tool is missing; run scripts/install-image-deps.sh --arm32v7" >&2; exit 1; }
done
sysroot=$("$RUSTC" --print sysroot)
[ -d "$sysroot/lib/rustlib/$TARGET/lib" ] || {
  echo "build-arm32v7: $RUSTC has no standard library for $TARGET; install libstd-rust-web-dev:armhf of the same version as rustc-web (scripts/install-image-deps.sh --arm32v7)" >&2; exit 1; }
rv=$("$RUSTC" --version)
case "$rv" in "rustc 1.85"*|"rustc 1.8"[6-9]*|"rustc 1.9"*) ;; *) echo "build-arm32v7: $rv is older than the workspace's rust-version 1.85" >&2; exit 1;; esac

export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
export AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar
# Test binaries run under qemu; -E LD_LIBRARY_PATH: without it the cross loader reads the host's
# ld.so.cache and threaded programs crash (seen here with Debian's qemu-user-static 7.2).
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm-static -L /usr/arm-linux-gnueabihf -E LD_LIBRARY_PATH=/usr/arm-linux-gnueabihf/lib"
export CARGO_PROFILE_RELEASE_STRIP=symbols
# Resolve for Rust 1.85 even where Cargo.lock would allow newer (the workspace's lock is already for 1.85).
export CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback

pkgs=(-p mqtt-server -p aggregator -p esp-sim)
echo "build-arm32v7: $rv, cargo build --release --target $TARGET into $CARGO_TARGET_DIR"
cargo build --locked --release --target "$TARGET" "${pkgs[@]}" --bins
if [ "${1:-}" = "--test" ]; then
  command -v qemu-arm-static >/dev/null 2>&1 || { echo "build-arm32v7: qemu-arm-static is missing; run scripts/install-image-deps.sh --arm32v7" >&2; exit 1; }
  # Unit tests (lib and bins); the black-box tests in tests/ start the native edge-dev and are run natively.
  cargo test --locked --release --target "$TARGET" "${pkgs[@]}" --lib --bins
fi
out="$CARGO_TARGET_DIR/$TARGET/release"
for b in mqtt-server aggregator esp-sim; do
  echo "build-arm32v7: $out/$b ($(du -h "$out/$b" | cut -f1), $(readelf -h "$out/$b" | sed -n 's/.*Machine: *//p'))"
done
