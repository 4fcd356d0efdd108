#!/usr/bin/env bash
# Measures how long an idle tessera-server takes from SIGTERM to exit (it
# drains: hands its leaderships away, finishes calls, closes storage).
#
# Usage: tests/bench/sigterm_exit.sh [ROUNDS]   (default 5)
# Runs a 3-node local cluster (deploy/local-cluster.sh, release build,
# ports 7001-7003, state in a temporary directory), then ROUNDS times: wait
# until the cluster is ready, SIGTERM node 3 and time it until the process
# has exited (gone or a zombie: its parent, not the server, reaps it).
# Prints one line per round and the maximum. Stops the cluster at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
export TESSERA_SKIP_BUILD=1
export TESSERA_CLUSTER_DIR
TESSERA_CLUSTER_DIR=$(mktemp -d /tmp/tessera-sigterm.XXXXXX)
trap './deploy/local-cluster.sh down >/dev/null 2>&1 || true; rm -rf "$TESSERA_CLUSTER_DIR"' EXIT

max=0
for ((r = 1; r <= rounds; r++)); do
  ./deploy/local-cluster.sh up >/dev/null  # starts what is missing, waits until ready
  pid=$(cat "$TESSERA_CLUSTER_DIR/node3/pid")
  start=$(date +%s%N)
  kill -TERM "$pid"
  for ((i = 0; i < 6000; i++)); do  # at most 30 s
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
    [[ $state == gone || $state == Z ]] && break
    sleep 0.005
  done
  ms=$((($(date +%s%N) - start) / 1000000))
  ((ms > max)) && max=$ms
  echo "round $r: SIGTERM to exit ${ms} ms"
done
echo "max ${max} ms over $rounds rounds"
