#!/usr/bin/env bash
# Installs missing dependencies, configures, builds and runs Tessera's tests
# through ctest. Exits non-zero if anything fails.
#
# Usage: ./tests/run.sh [--long] [--preset release|debug|asan|tsan] [--no-fuzz] [-- CTEST_ARGS...]
#   --long     also run the long suites (ctest label "long"): big simulation
#              sweeps, long chaos schedules.
#   --preset   build flavour (default: release).
#   --no-fuzz  skip the fuzz targets (tests/fuzz: built by the `fuzz` preset
#              with clang, each run for a bounded time; on by default).
# Everything after `--` goes to ctest (e.g. -- -R storage).
set -euo pipefail
cd "$(dirname "$0")/.."

preset=release
labels=fast
ctest_args=()
fuzz=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --long) labels='fast|long'; shift ;;
    --preset) preset=${2:?--preset needs a value}; shift 2 ;;
    --no-fuzz) fuzz=0; shift ;;
    --) shift; ctest_args=("$@"); break ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
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
status=0
ctest --test-dir "build/$preset" --output-on-failure -j "$jobs" -L "$labels" "${ctest_args[@]}" || status=$?

# The fuzz targets (tests/fuzz/README.md): a second build tree, clang with
# libFuzzer, ASan and UBSan, holding only what the fuzz targets need.
if [[ $fuzz -eq 1 ]]; then
  if command -v clang++ >/dev/null && compgen -G '/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a' >/dev/null; then
    cmake --preset fuzz >/dev/null
    cmake --build --preset fuzz -j "$jobs"
    ctest --test-dir build/fuzz --output-on-failure -j "$jobs" -L fuzz "${ctest_args[@]}" || status=$?
  else
    echo "run.sh: clang++ or libFuzzer (libclang-rt-14-dev) missing: fuzz targets skipped" >&2
  fi
fi
exit $status
