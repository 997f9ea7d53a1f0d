#!/usr/bin/env bash
# Cross-compiles the three modules for arm32v7 (Raspberry Pi 2/3/4 with 32-bit Raspberry Pi OS); the same as
# `scripts/build-cross.sh --platform arm32v7` (see there), kept for its short name.
# Usage: scripts/build-arm32v7.sh [--test]
set -euo pipefail
case "${1:-}" in -h|--help) sed -n 2,4p "$0"; exit 0;; ""|--test) ;; *) echo "build-arm32v7: unknown option $1; see --help" >&2; exit 2;; esac
exec "$(dirname "$0")/build-cross.sh" --platform arm32v7 "$@"
