#!/usr/bin/env bash
# Installs missing dependencies, configures, builds and runs Tessera's tests
# through ctest. Exits non-zero if anything fails.
#
# Usage: ./tests/run.sh [--long] [--preset release|debug|asan|tsan] [--no-fuzz] [--no-tsan]
#                       [-- CTEST_ARGS...]
#   --long     also run the long suites (ctest label "long"): big simulation
#              sweeps, long chaos schedules.
#   --preset   build flavour (default: release).
#   --no-fuzz  skip the fuzz targets (tests/fuzz: built by the `fuzz` preset
#              with clang, each run for a bounded time; on by default).
#   --no-tsan  skip the ThreadSanitizer stage (on by default): the `tsan`
#              preset (clang, -Wthread-safety -Werror) builds everything under
#              server/ and client/ and runs the concurrent suites under TSan
#              (node, peer transports, kv service, client end-to-end,
#              the node simulator's targeted cases; the regex is
#              tsan_tests below). About 5 min from a
#              cold ccache on 2 cores (half a minute of it the tests), under
#              a minute warm.
# Everything after `--` goes to ctest (e.g. -- -R storage) for the main and
# fuzz runs; the TSan stage always runs its own selection.
set -euo pipefail
cd "$(dirname "$0")/.."

preset=release
labels=fast
ctest_args=()
fuzz=1
tsan=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --long) labels='fast|long'; shift ;;
    --preset) preset=${2:?--preset needs a value}; shift 2 ;;
    --no-fuzz) fuzz=0; shift ;;
    --no-tsan) tsan=0; shift ;;
    --) shift; ctest_args=("$@"); break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

./deploy/install-deps.sh

# Sanitizer runtime options (also in CMakePresets.json's test presets).
# ignore_noninstrumented_modules: RocksDB, gRPC and protobuf come from Debian
# uninstrumented; races are only looked for in our own code. Abseil's
# mutexes are made visible by tests/tsan/absl_sync_annotations.cc, which
# also shows TSan the absl locks inside uninstrumented gRPC: tsan.supp drops
# its lock-state reports there (never data races). The hand-offs of gRPC's
# callback API are made visible by tests/tsan/grpc_sync_annotations.cc.
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

# The TSan stage: a third build tree (`tsan` preset: clang, ThreadSanitizer,
# -Wthread-safety -Werror on our code). It builds every target under server/
# and client/ (so clang's lock analysis checks all of it) and the test
# binaries of tsan_tests, then runs those: the suites where our threads meet.
# Not here: client_cli_scan_memory_test (its peak-RSS bounds mean nothing
# under TSan's shadow memory, and its 1M-key fill would take many minutes)
# and client_python_error_model (a Python client; its servers' paths are
# covered by client_e2e_test and the kv service suite). Of the node
# simulator only sim_node_test (targeted cases: it runs real Nodes in step
# mode, one thread): its seed sweeps find logic bugs, not races, and the
# release build runs them.
tsan_tests='^(server_node_test|server_grpc_transport_test|server_local_transport_test|server_kv_service_test|server_watch_hub_test|server_lease_keeper_test|client_e2e_test|sim_node_test)$'
if [[ $tsan -eq 1 && $preset != tsan ]]; then
  if command -v clang++ >/dev/null; then
    cmake --preset tsan >/dev/null
    # A test made by tessera_test() is named after its executable's target;
    # the others run programs that server/all and client/all build.
    mapfile -t tsan_targets < <(ctest --test-dir build/tsan -N -L "$labels" -R "$tsan_tests" |
      sed -n 's/^ *Test *#[0-9]*: *//p' |
      while read -r t; do ninja -C build/tsan -t query "$t" >/dev/null 2>&1 && echo "$t"; done)
    cmake --build --preset tsan -j "$jobs" --target server/all client/all "${tsan_targets[@]}"
    # Every report goes to a file, also from the tessera-server processes the
    # end-to-end tests start (a server halted by a report could otherwise go
    # unnoticed by a test that tolerates a dead node). No halting: a test
    # runs to its end (and stops the servers it started), then exits with
    # TSan's exit code 66 if it found a race.
    tsan_logs=$PWD/build/tsan/tsan-reports
    rm -rf "$tsan_logs" && mkdir -p "$tsan_logs"
    TSAN_OPTIONS="$TSAN_OPTIONS halt_on_error=0 log_path=$tsan_logs/report" \
      ctest --test-dir build/tsan --output-on-failure -j "$jobs" -L "$labels" -R "$tsan_tests" ||
      status=$?
    if compgen -G "$tsan_logs/report.*" >/dev/null; then
      echo "run.sh: ThreadSanitizer reports (one file per process, in $tsan_logs):" >&2
      cat "$tsan_logs"/report.* >&2
      status=1
    fi
  else
    echo "run.sh: clang++ missing: TSan stage not run" >&2
    status=1
  fi
fi
exit $status
