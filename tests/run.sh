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

# Sanitizer runtime options (also in CMakePresets.json's test presets).
# ignore_noninstrumented_modules: RocksDB, gRPC and protobuf come from Debian
# uninstrumented; races are only looked for in our own code. Abseil's
# mutexes are made visible by tests/tsan/absl_sync_annotations.cc, which
# also shows TSan the absl locks inside uninstrumented gRPC: tsan.supp drops
# its lock-state reports there (never data races).
export TSAN_OPTIONS=${TSAN_OPTIONS:-ignore_noninstrumented_modules=1 halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan/tsan.supp}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1 abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1 halt_on_error=1}

jobs=$(nproc)
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j "$jobs"
ctest --test-dir "build/$preset" --output-on-failure -j "$jobs" -L "$labels" "${ctest_args[@]}"
