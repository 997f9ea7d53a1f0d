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
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
case "$what" in -h|--help) sed -n 2,10p "$0"; exit 0;; all|--rust|--e2e|--fuzz) ;; *) echo "unknown option $what; see --help" >&2; exit 2;; esac

scripts/install-test-deps.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

fuzz_smoke() {
  echo "== fuzz smoke (scripts/fuzz.sh --dev --seconds ${FUZZ_SMOKE_SECONDS:-15})"
  scripts/fuzz.sh --dev --seconds "${FUZZ_SMOKE_SECONDS:-15}"
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
fi

if [ "$what" = "all" ]; then
  fuzz_smoke
fi

if [ "$what" != "--rust" ]; then
  echo "== end-to-end tests"
  EDGE_DEV_BIN_DIR="$PWD/target/debug" python3 -m pytest -q -p no:cacheprovider tests/
fi
