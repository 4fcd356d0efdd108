#!/usr/bin/env bash
# Runs a 3-node Tessera cluster on 127.0.0.1.
#
# Usage: ./deploy/local-cluster.sh up|down|status|restart N|kill N
#   up         install deps, build the release preset, start nodes 1-3 (client
#              ports 7001-7003, peer ports 7101-7103) and wait until every node
#              answers and every shard has a leader. Already running: says so.
#   down       SIGTERM every node (they drain), wait, SIGKILL stragglers.
#   status     which nodes run, and the cluster status (tessera-admin).
#   restart N  stop node N (SIGTERM, drain) and start it again.
#   kill N     kill -9 node N (crash test; `restart N` brings it back).
#
# State lives in $TESSERA_CLUSTER_DIR (default ./.local-cluster): nodeN/data,
# nodeN/log, nodeN/pid. TESSERA_SKIP_BUILD=1 skips deps and build;
# TESSERA_BIN_DIR picks another build's binaries (default build/release/server).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${TESSERA_CLUSTER_DIR:-$PWD/.local-cluster}
bin=${TESSERA_BIN_DIR:-build/release/server}
nodes=(1 2 3)
cluster="1=127.0.0.1:7001/127.0.0.1:7101,2=127.0.0.1:7002/127.0.0.1:7102,3=127.0.0.1:7003/127.0.0.1:7103"
endpoints="127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"

pid_of() {  # prints the pid of node $1 if it is running
  local f="$dir/node$1/pid"
  [[ -f $f ]] || return 1
  local pid
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null && grep -q tessera-server "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
  else
    return 1
  fi
}

start_node() {
  local n=$1
  mkdir -p "$dir/node$n"
  if pid=$(pid_of "$n"); then
    echo "node $n already running (pid $pid)"
    return
  fi
  "$bin/tessera-server" --node-id="$n" --data-dir="$dir/node$n/data" \
    --initial-cluster="$cluster" --port-file="$dir/node$n/ports" \
    >>"$dir/node$n/log" 2>&1 &
  echo $! >"$dir/node$n/pid"
  echo "node $n started (pid $!), log $dir/node$n/log"
}

stop_node() {  # SIGTERM, wait up to 15 s, then SIGKILL
  local n=$1 pid
  pid=$(pid_of "$n") || { echo "node $n not running"; rm -f "$dir/node$n/pid"; return 0; }
  kill -TERM "$pid"
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "node $n did not stop in 15 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/node$n/pid"
  echo "node $n stopped"
}

wait_ready() {
  if "$bin/tessera-admin" status --endpoints="$endpoints" --wait-ms=60000 --quiet; then
    echo "cluster ready: every node answers and every shard has a leader"
  else
    "$bin/tessera-admin" status --endpoints="$endpoints" || true
    echo "local-cluster: cluster not ready after 60 s; logs under $dir" >&2
    return 1
  fi
}

check_node_arg() {
  [[ ${1:-} =~ ^[123]$ ]] || { echo "usage: $0 $2 1|2|3" >&2; exit 2; }
}

cmd=${1:-}
case "$cmd" in
  up)
    running=0
    for n in "${nodes[@]}"; do pid_of "$n" >/dev/null && running=$((running + 1)); done
    if [[ $running -eq ${#nodes[@]} ]]; then
      echo "local-cluster: already running"
      "$0" status
      exit 0
    fi
    if [[ -z ${TESSERA_SKIP_BUILD:-} ]]; then
      ./deploy/install-deps.sh
      cmake --preset release >/dev/null
      cmake --build --preset release -j "$(nproc)"
    fi
    mkdir -p "$dir"
    for n in "${nodes[@]}"; do start_node "$n"; done
    wait_ready
    for n in "${nodes[@]}"; do
      echo "node $n: client 127.0.0.1:700$n, peer 127.0.0.1:710$n, pid $(pid_of "$n" || echo '?'), log $dir/node$n/log"
    done
    echo "endpoints: $endpoints"
    ;;
  down)
    for n in "${nodes[@]}"; do stop_node "$n"; done
    ;;
  status)
    for n in "${nodes[@]}"; do
      if pid=$(pid_of "$n"); then
        echo "node $n: running (pid $pid), client 127.0.0.1:700$n, log $dir/node$n/log"
      else
        echo "node $n: not running"
      fi
    done
    if [[ -x $bin/tessera-admin ]]; then
      "$bin/tessera-admin" status --endpoints="$endpoints" || true
    fi
    ;;
  restart)
    check_node_arg "${2:-}" restart
    stop_node "$2"
    start_node "$2"
    wait_ready
    ;;
  kill)
    check_node_arg "${2:-}" kill
    if pid=$(pid_of "$2"); then
      kill -KILL "$pid"
      rm -f "$dir/node$2/pid"
      echo "node $2 killed (kill -9 $pid)"
    else
      echo "node $2 not running"
    fi
    ;;
  *)
    sed -n '2,15p' "$0" >&2
    exit 2
    ;;
esac
