#!/usr/bin/env bash
# Installs missing dependencies, configures, builds and runs Tessera's tests
# through ctest. Exits non-zero if anything fails.
#
# Usage: ./tests/run.sh [--long] [--preset release|debug|asan|tsan] [-- CTEST_ARGS...]
#   --long     also run the long suites (ctest label "long"): big simulation
#              sweeps, long chaos schedules.
#   --preset   build flavour (default: release).
# Everything after `--` goes to ctest (e.g. -- -R storage).
set -euo pipefail
cd "$(dirname "$0")/.."

preset=release
labels=fast
ctest_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --long) labels='fast|long'; shift ;;
    --preset) preset=${2:?--preset needs a value}; shift 2 ;;
    --) shift; ctest_args=("$@"); break ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

./deploy/install-deps.sh

jobs=$(nproc)
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j "$jobs"
ctest --test-dir "build/$preset" --output-on-failure -j "$jobs" -L "$labels" "${ctest_args[@]}"
