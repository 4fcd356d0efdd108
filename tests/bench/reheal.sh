#!/usr/bin/env bash
# Healing after a node dies: a 4-node local cluster (3 + one added and
# balanced) holding --keys keys under a closed-loop put load; node 4 is
# killed (kill -9) and stays down. Prints the time from the kill until the
# map lists no replica on node 4 with every shard back at 3 voters (the
# scheduler declares the node dead after --dead-node-timeout-ms, then
# re-creates its replicas on the others, one move at a time), that time
# minus the timeout (the moves alone), and the puts of the --during seconds
# from 2 s before the kill.
#
# Usage: tests/bench/reheal.sh [--keys N] [--shards N] [--clients N] [--dead-ms MS]
#                              [--during S]
#   --keys     keys written first, 256-byte values (default 200000)
#   --shards   shards of the cluster (default 16)
#   --clients  tessera-bench closed-loop clients during the run (default 16)
#   --dead-ms  --dead-node-timeout-ms of the servers (default 10000)
#   --during   seconds of put load from 2 s before the kill (default 60)
# Release build (deploy/local-cluster.sh's); ports 7401-7404, state in a
# temporary directory; stops the cluster (by PID) on exit. Needs a quiet
# machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
keys=200000 shards=16 clients=16 dead_ms=10000 during=60
while [[ $# -gt 0 ]]; do
  case $1 in
    --keys) keys=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --dead-ms) dead_ms=$2; shift 2 ;;
    --during) during=$2; shift 2 ;;
    *) sed -n '2,21p' "$0" >&2; exit 2 ;;
  esac
done
export TESSERA_SERVER_FLAGS="--dead-node-timeout-ms=$dead_ms --split-shard-bytes=0"
source tests/bench/local_bench_lib.sh
bench_start reheal

# 0: every shard has 3 voters, none on node $1, and nothing moves.
healed_without() {  # (status exits 3 while a member is down: its JSON is what counts)
  { "$cli" --endpoints="$endpoints" -o json cluster status 2>/dev/null || true; } | "$py" -c '
import json, sys
s = json.load(sys.stdin)
ok = all(len(sh["replicas"]) == 3 and "moving" not in sh and
         all(r["node"] != int(sys.argv[1]) for r in sh["replicas"]) for sh in s["shards"])
sys.exit(0 if ok else 1)' "$1"
}
./deploy/local-cluster.sh add >/dev/null
for _ in $(seq 3000); do  # balanced: node 4 holds replicas, nothing moves
  if "$cli" --endpoints="$endpoints" -o json cluster status 2>/dev/null | "$py" -c '
import json, sys
s = json.load(sys.stdin)
held = sum(1 for sh in s["shards"] for r in sh["replicas"] if r["node"] == 4)
sys.exit(0 if held >= len(s["shards"]) * 3 // 4 - 1 and
         not any("moving" in sh for sh in s["shards"]) else 1)'; then
    break
  fi
  sleep 0.2
done
held=$("$cli" --endpoints="$endpoints" -o json cluster status | "$py" -c '
import json, sys
print(sum(1 for sh in json.load(sys.stdin)["shards"] for r in sh["replicas"] if r["node"] == 4))')
echo "node 4 holds $held replicas; killing it"

bench_put --clients="$clients" --duration="${during}s" >"$TESSERA_CLUSTER_DIR/during.json" &
bench_pid=$!
sleep 2
start=$(date +%s.%N)
kill -KILL "$(cat "$TESSERA_CLUSTER_DIR/node4/pid")"
healed=""
for _ in $(seq 1200); do  # once a second: polling takes CPU from the load
  if healed_without 4; then healed=$(date +%s.%N); break; fi
  sleep 1
done
[[ -n $healed ]] || { echo "reheal: not healed within 20 minutes" >&2; exit 1; }
took=$(echo "$healed - $start" | bc)
printf 'healed %.1f s after the kill (timeout %.1f s, moves %.1f s) for %s replicas\n' \
  "$took" "$(echo "$dead_ms / 1000" | bc -l)" "$(echo "$took - $dead_ms / 1000" | bc -l)" "$held"
wait "$bench_pid" || true
bench_pid=
echo "puts during the $during s from 2 s before the kill:"
tail -n 1 "$TESSERA_CLUSTER_DIR/during.json"
