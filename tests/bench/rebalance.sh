#!/usr/bin/env bash
# Growing a loaded cluster: a 3-node local cluster holding --keys keys, a
# closed-loop put load, and a 4th node added (`local-cluster.sh add`) in the
# middle of it. Prints the put latency before and while the replicas move
# (tessera-bench's JSON lines), the time from `add` to a balanced map with
# no move left, the replicas moved against the ideal (a quarter of them),
# and the bytes the new node holds afterwards (what its snapshots carried).
#
# Usage: tests/bench/rebalance.sh [--keys N] [--shards N] [--clients N]
#   --keys     keys written first, 256-byte values (default 200000)
#   --shards   shards of the cluster (default 16)
#   --clients  tessera-bench closed-loop clients during the run (default 16)
#   --during   seconds of put load from 2 s before the add (default 60)
# Release build (deploy/local-cluster.sh's); ports 7401-7404, state in a
# temporary directory; stops the cluster (by PID) on exit. Needs a quiet
# machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
keys=200000 shards=16 clients=16 during=60
while [[ $# -gt 0 ]]; do
  case $1 in
    --keys) keys=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --during) during=$2; shift 2 ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
  esac
done
source tests/bench/local_bench_lib.sh
bench_start rebalance

# Puts for the next --during seconds (tessera-bench runs to its end), the
# node added now.
bench_put --clients="$clients" --duration="${during}s" >"$TESSERA_CLUSTER_DIR/during.json" &
bench_pid=$!
sleep 2
start=$(date +%s.%N)
./deploy/local-cluster.sh add >/dev/null
balanced=""
for _ in $(seq 600); do
  # Balanced: no move in the map, and replicas spread within one. (Polled
  # once a second: the CLI and Python take CPU from the load being measured.)
  if "$cli" --endpoints="$endpoints" -o json cluster status 2>/dev/null | "$py" -c '
import json, sys, collections
s = json.load(sys.stdin)
held = collections.Counter(r["node"] for sh in s["shards"] for r in sh["replicas"])
moving = any("moving" in sh for sh in s["shards"])
sys.exit(0 if not moving and len(held) == 4 and max(held.values()) - min(held.values()) <= 1 else 1)
'; then
    balanced=$(date +%s.%N)
    break
  fi
  sleep 1
done
wait "$bench_pid" || true
bench_pid=
[[ -n $balanced ]] || { echo "rebalance: not balanced within 10 minutes" >&2; exit 1; }
echo "puts during the ${during} s from 2 s before the add:"
tail -n 1 "$TESSERA_CLUSTER_DIR/during.json"
replicas=$(( shards * 3 ))
moved=$("$cli" --endpoints="$endpoints" -o json cluster status | "$py" -c '
import json, sys
s = json.load(sys.stdin)
print(sum(1 for sh in s["shards"] for r in sh["replicas"] if r["node"] == 4))')
printf 'balanced %.1f s after add; node 4 took %s of %s replicas (ideal %s); node 4 data: %s\n' \
  "$(echo "$balanced - $start" | bc)" "$moved" "$replicas" "$(( replicas / 4 ))" \
  "$(du -sh "$TESSERA_CLUSTER_DIR/node4/data" | cut -f1)"
