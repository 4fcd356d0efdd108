#!/usr/bin/env bash
# Splitting shards under load: a 3-node local cluster of --shards shards
# holding --keys keys, a closed-loop put load, and every shard split once by
# `tessera cluster split-shard` (one after the other) in the middle of it.
# Prints the put latency before and during the splits (tessera-bench's JSON
# lines: "errors" must be 0), and for each split the time from the request
# to the map recording it.
#
# Usage: tests/bench/split.sh [--keys N] [--shards N] [--clients N] [--during S]
#   --keys     keys written first, 256-byte values (default 200000)
#   --shards   shards of the cluster, each split once (default 4)
#   --clients  tessera-bench closed-loop clients during the run (default 16)
#   --during   seconds of put load from 2 s before the first split (default 40)
# Release build (deploy/local-cluster.sh's); ports 7401-7403, state in a
# temporary directory; automatic splits off (--split-shard-bytes=0); stops
# the cluster (by PID) on exit. Needs a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
keys=200000 shards=4 clients=16 during=40
while [[ $# -gt 0 ]]; do
  case $1 in
    --keys) keys=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --during) during=$2; shift 2 ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
  esac
done
export TESSERA_SERVER_FLAGS="--split-shard-bytes=0"
source tests/bench/local_bench_lib.sh
bench_start split

num_shards() {
  "$cli" --endpoints="$endpoints" -o json cluster status 2>/dev/null |
    "$py" -c 'import json, sys; print(len(json.load(sys.stdin)["shards"]))'
}
# Puts for the next --during seconds; the splits start 2 s in.
bench_put --clients="$clients" --duration="${during}s" >"$TESSERA_CLUSTER_DIR/during.json" &
bench_pid=$!
sleep 2
began=$(date +%s.%N)
for ((s = 0; s < shards; s++)); do
  want=$((shards + s + 1))
  start=$(date +%s.%N)
  "$cli" --endpoints="$endpoints" cluster split-shard "$s" >/dev/null
  for _ in $(seq 1500); do
    [[ $(num_shards) == "$want" ]] && break
    sleep 0.1
  done
  [[ $(num_shards) == "$want" ]] || { echo "split of shard $s not recorded in time" >&2; exit 1; }
  printf 'shard %s split in %.2f s\n' "$s" "$(echo "$(date +%s.%N) - $start" | bc)"
done
took=$(echo "$(date +%s.%N) - $began" | bc)
wait "$bench_pid" || true
bench_pid=
printf 'all %s splits in %.1f s; puts during the %s s from 2 s before the first:\n' \
  "$shards" "$took" "$during"
tail -n 1 "$TESSERA_CLUSTER_DIR/during.json"
