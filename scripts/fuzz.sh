#!/usr/bin/env bash
# Fuzzes every parser and decoder that takes outside input (the targets in fuzz/, cargo-fuzz and
# libFuzzer), one target after the other, and prints a table: target, executions, seconds, result.
# Exits non-zero when a target crashed (a panic, a hang past 30 s on one input, or a memory blow-up);
# the input that did it is kept in fuzz/artifacts/<target>/ (rerun it with the command printed).
# Installs cargo-fuzz when it is missing. Uses the machine's Rust toolchain with RUSTC_BOOTSTRAP=1
# (cargo-fuzz passes nightly-only flags), or `cargo +$FUZZ_TOOLCHAIN` when FUZZ_TOOLCHAIN is set.
# Runs under `nice -n 10`, one process per target. New corpus entries go to fuzz/corpus-grown/<target>/
# (not committed); the seeds in fuzz/corpus/<target>/ are read, never written. docs/RELIABILITY.md.
# Usage: scripts/fuzz.sh [--seconds N] [--dev] [target...]  (default: 600 s each, every target)
#        scripts/fuzz.sh --list
# --dev builds without optimizations: quicker to build, ~15x slower to run (the CI smoke,
# scripts/test.sh, uses it). FUZZ_TARGET_DIR moves the build out of fuzz/target.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

seconds=600
profile=release
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n 2,13p "$0"; exit 0;;
    --dev) profile=dev; shift;;
    --seconds) seconds="${2:?--seconds needs a number}"; shift 2;;
    --seconds=*) seconds="${1#--seconds=}"; shift;;
    --list) sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^edge-fuzz$'; exit 0;;
    -*) echo "fuzz.sh: unknown option $1; see --help" >&2; exit 2;;
    *) targets+=("$1"); shift;;
  esac
done
case "$seconds" in ''|*[!0-9]*) echo "fuzz.sh: --seconds takes a whole number" >&2; exit 2;; esac
all=($(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^edge-fuzz$'))
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "fuzz.sh: no target $t (targets: ${all[*]})" >&2; exit 2; }
done

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz.sh: cargo install cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  fuzz=(cargo "+$FUZZ_TOOLCHAIN" fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

# Release build with debug assertions and overflow checks, without a sanitizer: the code is safe
# Rust (unsafe_code = "deny"), so AddressSanitizer would find little and halve the speed.
echo "== fuzz build ($profile)"
build_start=$SECONDS
target_dir="${FUZZ_TARGET_DIR:-$root/fuzz/target}"
if [ "$profile" = dev ]; then
  build_args=(--dev); bin="$target_dir/x86_64-unknown-linux-gnu/debug"
else
  build_args=(--debug-assertions); bin="$target_dir/x86_64-unknown-linux-gnu/release"
fi
nice -n 10 "${fuzz[@]}" build --fuzz-dir fuzz --target-dir "$target_dir" --sanitizer none \
  "${build_args[@]}" || { echo "fuzz.sh: the fuzz build failed" >&2; exit 1; }
echo "   built in $((SECONDS - build_start)) s"

# The dictionary of each target, if it has one.
dict_of() {
  case "$1" in
    mqtt_decode|mqtt_session) echo mqtt;; query_parse|query_engine|event_json) echo query;;
    edgehub_wire) echo wire;; *) echo "$1";;
  esac
}

failed=0
passed=0
rows=()
for t in "${targets[@]}"; do
  grown="fuzz/corpus-grown/$t"; seeds="fuzz/corpus/$t"; artifacts="fuzz/artifacts/$t"
  mkdir -p "$grown" "$seeds" "$artifacts"
  log="fuzz/artifacts/$t.log"
  args=(-max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -max_len=16384
        -print_final_stats=1 -artifact_prefix="$artifacts/")
  d="fuzz/dict/$(dict_of "$t").dict"
  [ -f "$d" ] && args+=(-dict="$d")
  echo "== $t: ${seconds} s"
  start=$SECONDS
  rc=0
  nice -n 10 "$bin/$t" "${args[@]}" "$grown" "$seeds" >"$log" 2>&1 || rc=$?
  took=$((SECONDS - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
  if [ "$rc" -eq 0 ]; then
    result=ok
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    result="CRASH (exit $rc)${crash:+: $crash}"
    echo "   $t failed; the end of its log ($log):"
    grep -v '^#\|^INFO\|^\s*$' "$log" | tail -25 | sed 's/^/   | /'
    [ -n "$crash" ] && echo "   rerun: $bin/$t $crash"
  fi
  rows+=("$(printf '%-14s %12s %8s  %s' "$t" "${execs:-?}" "$took" "$result")")
done

echo
printf '%-14s %12s %8s  %s\n' target execs seconds result
for r in "${rows[@]}"; do echo "$r"; done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
