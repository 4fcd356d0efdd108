#!/usr/bin/env bash
# Drives deploy/local-cluster.sh the way a user does (up, up again, kill,
# start, stop, restart, logs, down) against the binaries of this build, on
# ports 17001-17003/17101-17103 (metrics 19201-19203) in a temporary
# directory; checks each node's /healthz, /metrics and /readyz. Every node started
# is stopped by PID at the end, also on failure.
set -euo pipefail
src=${1:?usage: local_cluster_test.sh SOURCE_DIR SERVER_BIN_DIR}
bin=${2:?usage: local_cluster_test.sh SOURCE_DIR SERVER_BIN_DIR}
script="$src/deploy/local-cluster.sh"
export TESSERA_SKIP_BUILD=1 TESSERA_BIN_DIR=$bin TESSERA_PORT_BASE=17000
TESSERA_CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tessera-local-cluster-test.XXXXXX")
export TESSERA_CLUSTER_DIR

cleanup() {
  "$script" down >/dev/null 2>&1 || true
  for f in "$TESSERA_CLUSTER_DIR"/node*/pid; do
    [[ -f $f ]] && kill -KILL "$(cat "$f")" 2>/dev/null || true
  done
  rm -rf "$TESSERA_CLUSTER_DIR"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
expect() {  # expect "what" "pattern" output
  grep -q -- "$2" <<<"$3" || { echo "$3" >&2; fail "$1: expected '$2'"; }
}

out=$("$script" up 2>&1) || { echo "$out"; fail "up failed"; }
expect "up" "cluster ready" "$out"
expect "up" "endpoints: 127.0.0.1:17001,127.0.0.1:17002,127.0.0.1:17003" "$out"
expect "up" "metrics http://127.0.0.1:19203/metrics" "$out"
for port in 19201 19202 19203; do
  [[ $(curl -fsS "http://127.0.0.1:$port/healthz") == ok ]] || fail "healthz on $port"
  metrics=$(curl -fsS "http://127.0.0.1:$port/metrics") || fail "metrics on $port"
  grep -q '^tessera_raft_term{' <<<"$metrics" || fail "no tessera_raft_term on $port"
done
for n in 1 2 3; do grep -q "^metrics_port=1920$n\$" "$TESSERA_CLUSTER_DIR/node$n/ports" || fail "port file $n"; done

out=$("$script" up 2>&1) || fail "second up failed"
expect "second up" "already running" "$out"

out=$("$script" up --nodes 5 2>&1) && fail "up with another node count must be refused"
expect "up --nodes 5" "holds a cluster of 3 nodes" "$out"

pid2=$(cat "$TESSERA_CLUSTER_DIR/node2/pid")
"$script" kill 2 >/dev/null
for _ in $(seq 50); do kill -0 "$pid2" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid2" 2>/dev/null && fail "kill 2 left the process running"
out=$("$script" status 2>&1)
expect "status after kill" "node 2: not running" "$out"

"$script" start 2 >/dev/null
out=$("$script" restart 3 2>&1) || { echo "$out"; fail "restart 3 failed"; }
expect "restart" "cluster ready" "$out"
out=$("$script" status 2>&1)
expect "status" "shards with a leader: 16/16" "$out"
expect "status" "metrics http://127.0.0.1:19202/metrics" "$out"
# Node 3 was restarted: ready again (every shard has a leader it hears from).
for _ in $(seq 100); do
  [[ $(curl -s "http://127.0.0.1:19203/readyz") == ready ]] && break
  sleep 0.1
done
[[ $(curl -s "http://127.0.0.1:19203/readyz") == ready ]] || fail "node 3 not ready after restart"

out=$("$script" logs 1)
expect "logs" "listening on 127.0.0.1:17001" "$out"

out=$("$script" stop 9 2>&1) && fail "stop 9 must be refused"
out=$("$script" bogus 2>&1) && fail "an unknown command must be refused"
expect "usage" "Usage:" "$out"

pids=$(cat "$TESSERA_CLUSTER_DIR"/node*/pid)
"$script" down >/dev/null
for p in $pids; do
  kill -0 "$p" 2>/dev/null && fail "down left pid $p running"
done
echo "local-cluster.sh: all checks passed"
