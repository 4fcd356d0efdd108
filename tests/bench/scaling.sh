#!/usr/bin/env bash
# Tessera's scaling figures (issue 8) on this machine: throughput vs shard
# count (with each node's idle CPU), put throughput vs key space (100k, 1M),
# catch-up of a node that missed 100k writes (via the log, via snapshots) and
# the restart of a node holding 1M keys (after SIGTERM, after kill -9). Each
# figure runs on fresh 3-node clusters on 127.0.0.1 (fsync on, data on the
# real disk under OUT/data); the report is printed and written to
# OUT/scaling.md, the raw numbers to OUT/scaling.json; every tessera-bench
# run's output (OUT/runs/) and the server logs (OUT/logs/) are kept.
# Everything it starts is stopped again by pid, also on Ctrl-C or SIGTERM
# (scaling.py's signal handlers; the servers also die with it on kill -9).
#
# Usage: tests/bench/scaling.sh [--only shards,keys,catchup,restart,idle]
#          [--duration S] [--warmup S] [--out DIR] [--smoke] [--keep-data]
#          [--port-range LO-HI]
#   idle (optional, not in the default list): idle CPU per node with 1,000
#   shards, hibernation on and off.
#   defaults: every figure, 15 s runs after 2 s warmup, out
#   build/bench/scaling-<date>-<time>. --smoke: a tiny run (under 90 s) that
#   the ctest bench_scaling_smoke runs; its numbers mean nothing.
#   --help: every option.
#
# Installs missing Debian packages (deploy/install-deps.sh), configures the
# release preset if needed and builds tessera-server, tessera-admin and
# tessera-bench. TESSERA_SKIP_BUILD=1 skips both; TESSERA_BIN_DIR picks the
# build directory whose binaries are used (default build/release).
# The orchestration is tests/bench/scaling.py (Python 3, stdlib only).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

# shellcheck source=tests/bench/prepare.sh
source "$root/tests/bench/prepare.sh"
bench_prepare "$root/tests/bench/scaling.py" "$@"

# scaling.py reads TESSERA_BIN_DIR itself (default build/release).
exec python3 "$root/tests/bench/scaling.py" "$@"
