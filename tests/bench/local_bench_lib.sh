# Shared by the benchmark scripts that drive a local cluster under a put
# load (rebalance.sh, split.sh); sourced, not run. Release build
# (deploy/local-cluster.sh's), ports 7401-7404, state in a temporary
# directory that is removed on exit unless KEEP is set; the cluster is
# stopped (by PID) on exit.

export TESSERA_SKIP_BUILD=1 TESSERA_PORT_BASE=7400 TESSERA_CLUSTER_DIR
bench=build/release/client/bench/tessera-bench
cli=build/release/client/tessera
# Debian's python3 itself, not a shim (pyenv's forks a few shells per call,
# CPU taken from the load being measured).
py=/usr/bin/python3
endpoints=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
bench_pid=

bench_cleanup() {
  [[ -n $bench_pid ]] && kill "$bench_pid" 2>/dev/null
  ./deploy/local-cluster.sh down >/dev/null 2>&1 || true
  [[ -n ${KEEP:-} ]] || rm -rf "$TESSERA_CLUSTER_DIR"
}

# bench_put ARGS...: tessera-bench put against the cluster, JSON line only.
bench_put() {
  "$bench" --endpoints="$endpoints" --conns=4 --key-space="$keys" --json-only "$@" put
}

# bench_start NAME: a 3-node cluster of $shards shards holding $keys keys,
# then 15 s of puts by $clients clients, printed.
bench_start() {
  TESSERA_CLUSTER_DIR=$(mktemp -d "/tmp/tessera-$1.XXXXXX")
  trap bench_cleanup EXIT
  ./deploy/local-cluster.sh up --shards "$shards" >/dev/null
  echo "filling $keys keys"
  bench_put --clients=64 --fill --total=1 >/dev/null
  echo "puts before (15 s):"
  bench_put --clients="$clients" --duration=15s
}
