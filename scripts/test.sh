#!/usr/bin/env bash
# Runs every test of the project: installs what the tests need, checks formatting (cargo fmt --check) and
# lints (cargo clippy -D warnings, all targets), builds the workspace, runs the Rust tests
# (unit, property and black-box tests of every crate and module), a short run of every fuzz target
# (scripts/fuzz.sh, FUZZ_SMOKE_SECONDS each, default 15) and the end-to-end tests in tests/ (real
# processes: edge-dev, the three modules, mosquitto clients, paho-mqtt and Microsoft's azure-iot-device).
# Usage: scripts/test.sh            (everything)
#        scripts/test.sh --rust     (only fmt, clippy and cargo test)
#        scripts/test.sh --e2e      (only the end-to-end tests; builds first)
#        scripts/test.sh --fuzz     (only the fuzz smoke)
# Disk: a whole run needs about TEST_DISK_GB (default 8) GB free where the checkout is; less gets a
# warning first. With CI set (or TEST_FRUGAL=1) it keeps less on disk: no incremental build, and the
# fuzz build is deleted once its smoke has passed. docs/RELIABILITY.md, "Disk the tests need".
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
case "$what" in -h|--help) sed -n 2,13p "$0"; exit 0;; all|--rust|--e2e|--fuzz) ;; *) echo "unknown option $what; see --help" >&2; exit 2;; esac

scripts/install-test-deps.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

frugal=0
if [ -n "${CI:-}" ] || [ "${TEST_FRUGAL:-0}" = 1 ]; then
  frugal=1
  # incremental build data is a third of a debug target and a CI run never builds twice
  export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi
disk() { df -Pk . | awk 'NR==2 {printf "%.1f GB free", $4/1048576}'; }
need_gb="${TEST_DISK_GB:-8}"
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
echo "== disk: $(disk) in $PWD"
if [ "$free_kb" -lt $((need_gb * 1048576)) ]; then
  echo "test.sh: warning: a whole run needs about $need_gb GB free here and there is less; it may stop" \
       "with 'No space left on device'. Free space, or move the builds to a larger disk" \
       "(CARGO_TARGET_DIR, FUZZ_TARGET_DIR), or run a part (--rust, --fuzz, --e2e)." >&2
fi

fuzz_smoke() {
  echo "== fuzz smoke (scripts/fuzz.sh --dev --seconds ${FUZZ_SMOKE_SECONDS:-15})"
  scripts/fuzz.sh --dev --seconds "${FUZZ_SMOKE_SECONDS:-15}"
  if [ "$frugal" = 1 ]; then
    # the instrumented fuzz build is not needed again in this run (only its target triple's
    # folder: FUZZ_TARGET_DIR may be shared with the workspace's builds)
    rm -rf "${FUZZ_TARGET_DIR:-fuzz/target}/x86_64-unknown-linux-gnu"
  fi
  echo "== disk: $(disk)"
}
if [ "$what" = "--fuzz" ]; then
  fuzz_smoke
  exit 0
fi

if [ "$what" != "--e2e" ]; then
  echo "== cargo fmt --check"
  cargo fmt --all --check
  echo "== cargo clippy -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

echo "== build"
cargo build --workspace --bins --locked

if [ "$what" != "--e2e" ]; then
  echo "== cargo test"
  cargo test --workspace --locked --no-fail-fast
  echo "== disk: $(disk)"
fi

if [ "$what" = "all" ]; then
  fuzz_smoke
fi

if [ "$what" != "--rust" ]; then
  echo "== end-to-end tests"
  EDGE_DEV_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/debug" python3 -m pytest -q -p no:cacheprovider tests/
fi
