#!/usr/bin/env bash
# Runs one fuzz target for a bounded time (the ctest test of tests/fuzz).
#
# Usage: run_fuzz.sh FUZZER SEED_CORPUS WORK_DIR SECONDS [LIBFUZZER_ARGS...]
# The seed corpus (in the tree) is only read; what the run finds goes to
# WORK_DIR (emptied first), crash inputs to WORK_DIR/artifacts/. Exits
# non-zero on a crash, a leak, a hang (-timeout) or an out-of-memory.
# The mutations follow a fixed seed (TESSERA_FUZZ_SEED, default 1), so that
# runs differ only by how far they get: a long session (README.md) is where
# new crashes are looked for, not every test run.
set -euo pipefail
fuzzer=$1 seeds=$2 work=$3 seconds=$4
shift 4
rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1 halt_on_error=1}
# The harnesses' RocksDB directories: on tmpfs when there is one, removed
# here even when the target crashed.
scratch=$(mktemp -d "$( [[ -d /dev/shm ]] && echo /dev/shm || echo "${TMPDIR:-/tmp}")/tessera-fuzz-run-XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export TESSERA_FUZZ_TMPDIR=$scratch
"$fuzzer" -seed="${TESSERA_FUZZ_SEED:-1}" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/" "$@" "$work/corpus" "$seeds"
