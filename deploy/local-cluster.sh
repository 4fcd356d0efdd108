#!/usr/bin/env bash
# Runs a local Tessera cluster on 127.0.0.1.
#
# Usage: ./deploy/local-cluster.sh COMMAND
#   up [--nodes 3|5] [--shards N] [--tls] [--with-prometheus]
#              install missing deps, build the release preset, start the nodes
#              (node N: client port 700N, peer port 710N, /metrics /healthz
#              /readyz on 920N) and wait until every node answers and every
#              shard has a leader. Running: says so. --tls: the client port
#              speaks only TLS, with a throwaway CA and node and user
#              certificates made under $TESSERA_CLUSTER_DIR/tls/, and users
#              and permissions are enabled (user root signs in with the
#              certificate tls/user-root.crt); the settings for the CLI are
#              in tls/env (`source` it; the script prints the line);
#              /metrics, /healthz and /readyz are HTTPS (curl --cacert
#              tls/ca.crt). The choice is kept with the cluster.
#              --with-prometheus also
#              runs Debian's prometheus on 127.0.0.1:9090 scraping the nodes
#              (config generated from deploy/prometheus/prometheus.yml, data
#              under the cluster dir).
#   down       SIGTERM every node (each drains), wait, SIGKILL stragglers;
#              stops prometheus if it runs.
#   status     which nodes run, and the cluster's shards and leaders.
#   stop N     SIGTERM node N (drain).       start N    start node N again.
#   restart N  stop + start node N.          kill N     kill -9 node N.
#   restart-all  rolling restart: each node in turn is stopped (it hands its
#              leaderships away and drains), started, and waited for until
#              the cluster is ready and the node leads shards again; clients
#              see no errors.
#   logs N     print node N's log (logs N -f follows it).
#   add        add a node (the next number): `tessera cluster add-node`, then
#              start it with --join; the scheduler moves replicas to it until
#              every node holds within one of the mean.
#   remove N   decommission node N (`tessera cluster remove-node`): its
#              replicas move to the others, then it exits; waits for that.
#              A node holding a metadata replica (the founders) leaves
#              once some staying node holds none (after an `add`).
#
# State lives in $TESSERA_CLUSTER_DIR (default ./.tessera): cluster.env (the
# founding node count and shard count chosen by `up`, the node count `add`
# grew it to, tls=1 after up --tls), certs/ (the peer port's cluster
# CA and node-N certificates, made by deploy/gen-certs.sh), tls/ (with --tls:
# the client port's CA, node and user certificates, and env), nodeN/data, nodeN/log,
# nodeN/pid, prometheus/{prometheus.yml,data,log,pid}. TESSERA_SKIP_BUILD=1
# skips deps and build; TESSERA_BIN_DIR picks another build's server binaries
# (default build/release/server); TESSERA_SERVER_FLAGS adds flags to every
# node's command line (split on spaces); TESSERA_PORT_BASE moves the ports (default
# 7000: client base+N, peer base+100+N, metrics base+2200+N, prometheus
# base+2090).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${TESSERA_CLUSTER_DIR:-$PWD/.tessera}
bin=${TESSERA_BIN_DIR:-build/release/server}
base=${TESSERA_PORT_BASE:-7000}
cli=build/release/client/tessera
prom_port=$((base + 2090))
prom_dir=$dir/prometheus
metrics_port() { echo $((base + 2200 + $1)); }

usage() { awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0" >&2; exit 2; }

load_config() {  # sets founders/nodes/shards from cluster.env (or defaults)
  local n
  nodes=3
  shards=16
  founders=""
  tls=""
  if [[ -f $dir/cluster.env ]]; then
    # shellcheck disable=SC1091
    source "$dir/cluster.env"
  fi
  founders=${founders:-$nodes}
  removed=${removed:-}  # decommissioned node numbers, space-separated
  cluster=""  # the founders: --initial-cluster
  join=""     # their client ports: --join of the nodes added later
  endpoints=""
  for ((n = 1; n <= nodes; n++)); do
    if ((n <= founders)); then
      cluster+="${cluster:+,}$n=127.0.0.1:$((base + n))/127.0.0.1:$((base + 100 + n))"
      join+="${join:+,}127.0.0.1:$((base + n))"
    fi
    is_removed "$n" || endpoints+="${endpoints:+,}127.0.0.1:$((base + n))"
  done
}

is_removed() { [[ " $removed " == *" $1 "* ]]; }

save_config() {
  printf 'founders=%s\nnodes=%s\nshards=%s\nremoved="%s"\ntls=%s\n' "$founders" "$nodes" \
    "$shards" "$removed" "$tls" >"$dir/cluster.env"
}

# With tls=1: the client port's certificates (node-N for the nodes, a client
# certificate for user "root"), made once, and tls/env for the CLI and the
# tools (tessera, tessera-admin, tessera-bench read TESSERA_TLS_*).
client_tls() {
  [[ -n $tls ]] || return 0
  deploy/gen-certs.sh "$dir/tls" $(seq 1 "$nodes")
  deploy/gen-certs.sh "$dir/tls" --user root
  printf 'export TESSERA_ENDPOINTS=%s\nexport TESSERA_TLS_CA=%s\nexport TESSERA_TLS_CERT=%s\nexport TESSERA_TLS_KEY=%s\n' \
    "$endpoints" "$dir/tls/ca.crt" "$dir/tls/user-root.crt" "$dir/tls/user-root.key" >"$dir/tls/env"
  # shellcheck disable=SC1091
  source "$dir/tls/env"
}

pid_of() {  # prints the pid of node $1 if it is running
  local f="$dir/node$1/pid" pid
  [[ -f $f ]] || return 1
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null && grep -q tessera-server "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
  else
    return 1
  fi
}

start_node() {
  local n=$1 pid
  if is_removed "$n"; then
    echo "node $n was removed from the cluster"
    return
  fi
  mkdir -p "$dir/node$n"
  if pid=$(pid_of "$n"); then
    echo "node $n already running (pid $pid)"
    return
  fi
  # Peer mutual TLS: a cluster CA and one certificate per member, made once.
  deploy/gen-certs.sh "$dir/certs" $(seq 1 "$nodes")
  # Founders bootstrap from --initial-cluster; nodes added later fetch the
  # cluster map from the founders.
  local membership=(--initial-cluster="$cluster" --shards="$shards")
  ((n <= founders)) || membership=(--join="$join")
  local client_tls_flags=()
  if [[ -n $tls ]]; then
    client_tls
    client_tls_flags=(--tls-cert="$dir/tls/node-$n.crt" --tls-key="$dir/tls/node-$n.key"
      --tls-ca="$dir/tls/ca.crt" --metrics-tls)
  fi
  "$bin/tessera-server" --node-id="$n" --data-dir="$dir/node$n/data" \
    "${membership[@]}" --port-file="$dir/node$n/ports" \
    --peer-cert="$dir/certs/node-$n.crt" --peer-key="$dir/certs/node-$n.key" \
    --peer-ca="$dir/certs/ca.crt" "${client_tls_flags[@]}" \
    --metrics-listen="127.0.0.1:$(metrics_port "$n")" \
    ${TESSERA_SERVER_FLAGS:-} `# split on spaces on purpose` \
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
    echo "node $n did not stop within 15 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/node$n/pid"
  echo "node $n stopped"
}

prometheus_pid() {  # prints the pid of our prometheus if it is running
  local pid
  [[ -f $prom_dir/pid ]] || return 1
  pid=$(cat "$prom_dir/pid")
  if kill -0 "$pid" 2>/dev/null && grep -q prometheus "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
  else
    return 1
  fi
}

start_prometheus() {
  local pid targets="" template=deploy/prometheus/prometheus.yml
  if pid=$(prometheus_pid); then
    echo "prometheus already running (pid $pid): http://127.0.0.1:$prom_port"
    return
  fi
  command -v prometheus >/dev/null ||
    { echo "local-cluster: prometheus not installed (deploy/install-deps.sh installs it)" >&2; return 1; }
  mkdir -p "$prom_dir/data"
  for ((n = 1; n <= nodes; n++)); do targets+="${targets:+, }'127.0.0.1:$(metrics_port "$n")'"; done
  # The template's targets are the default ports of a 3-node cluster.
  # With --tls the nodes' endpoints are HTTPS, signed by the cluster's CA.
  local https="s|^    metrics_path: /metrics$|&|"
  [[ -z $tls ]] || https="s|^    metrics_path: /metrics$|&\n    scheme: https\n    tls_config: {ca_file: '$dir/tls/ca.crt'}|"
  sed -e "s|\['127.0.0.1:9201', '127.0.0.1:9202', '127.0.0.1:9203'\]|[$targets]|" \
    -e "s|'127.0.0.1:9090'|'127.0.0.1:$prom_port'|" -e "$https" "$template" >"$prom_dir/prometheus.yml"
  grep -qF "[$targets]" "$prom_dir/prometheus.yml" ||
    { echo "local-cluster: $template has no default targets line to rewrite" >&2; return 1; }
  prometheus --config.file="$prom_dir/prometheus.yml" --storage.tsdb.path="$prom_dir/data" \
    --web.listen-address="127.0.0.1:$prom_port" >>"$prom_dir/log" 2>&1 &
  echo $! >"$prom_dir/pid"
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$prom_port/-/ready" >/dev/null 2>&1 && break
    kill -0 "$(cat "$prom_dir/pid")" 2>/dev/null || break
    sleep 0.2
  done
  if ! curl -fsS "http://127.0.0.1:$prom_port/-/ready" >/dev/null 2>&1; then
    echo "local-cluster: prometheus did not become ready; log $prom_dir/log" >&2
    tail -n 5 "$prom_dir/log" >&2 || true
    return 1
  fi
  echo "prometheus: http://127.0.0.1:$prom_port (pid $(cat "$prom_dir/pid"), log $prom_dir/log)"
}

stop_prometheus() {
  local pid
  pid=$(prometheus_pid) || { rm -f "$prom_dir/pid"; return 0; }
  kill -TERM "$pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  rm -f "$prom_dir/pid"
  echo "prometheus stopped"
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

node_arg() {  # validates node number $1 for command $2
  [[ ${1:-} =~ ^[0-9]+$ ]] && ((${1} >= 1 && ${1} <= nodes)) ||
    { echo "local-cluster: $2 needs a node number 1..$nodes" >&2; exit 2; }
}

cmd=${1:-}
[[ -n $cmd ]] || usage
shift
load_config
# shellcheck disable=SC1091
[[ -z $tls || ! -f $dir/tls/env ]] || source "$dir/tls/env"
case "$cmd" in
  up)
    want_nodes=$founders
    want_shards=$shards
    with_prometheus=""
    want_tls=$tls
    while [[ $# -gt 0 ]]; do
      case "$1" in
        --nodes) want_nodes=${2:-}; shift 2 ;;
        --tls) want_tls=1; shift ;;
        --shards) want_shards=${2:-}; shift 2 ;;
        --with-prometheus) with_prometheus=1; shift ;;
        *) echo "local-cluster: unknown option '$1'" >&2; usage ;;
      esac
    done
    [[ $want_nodes == 3 || $want_nodes == 5 ]] || { echo "local-cluster: --nodes must be 3 or 5" >&2; exit 2; }
    [[ $want_shards =~ ^[0-9]+$ ]] && ((want_shards >= 1 && want_shards <= 4096)) ||
      { echo "local-cluster: --shards must be 1..4096" >&2; exit 2; }
    if [[ -f $dir/cluster.env ]] &&
      [[ $want_nodes != "$founders" || $want_shards != "$shards" || $want_tls != "$tls" ]]; then
      echo "local-cluster: $dir holds a cluster of $founders nodes and $shards shards" \
        "(${tls:+with}${tls:-without} --tls); run 'down' and remove $dir to create a different one" >&2
      exit 2
    fi
    running=0
    [[ -f $dir/cluster.env ]] || nodes=$want_nodes
    active=0
    for ((n = 1; n <= nodes; n++)); do
      is_removed "$n" && continue
      active=$((active + 1))
      pid_of "$n" >/dev/null && running=$((running + 1))
    done
    if [[ $running -eq $active ]]; then
      echo "local-cluster: already running"
      [[ -z $with_prometheus ]] || start_prometheus
      exec "$0" status
    fi
    if [[ -z ${TESSERA_SKIP_BUILD:-} ]]; then
      ./deploy/install-deps.sh
      cmake --preset release >/dev/null
      cmake --build --preset release -j "$(nproc)"
    fi
    mkdir -p "$dir"
    if [[ ! -f $dir/cluster.env ]]; then
      founders=$want_nodes nodes=$want_nodes shards=$want_shards tls=$want_tls
      save_config
    fi
    load_config
    for ((n = 1; n <= nodes; n++)); do start_node "$n"; done
    wait_ready
    if [[ -n $tls && -x $cli ]]; then
      # Users and permissions on: user root signs in with the client
      # certificate tls/user-root.crt (tls/env points the CLI at it).
      if ! "$cli" auth status 2>/dev/null | grep -q '^auth enabled'; then
        "$cli" user add root --no-password >/dev/null 2>&1 || true
        "$cli" user grant-role root root >/dev/null
        "$cli" auth enable >/dev/null
      fi
      echo "auth enabled: user root (client certificate $dir/tls/user-root.crt) may do anything;" \
        "add users with: $cli user add NAME"
    fi
    echo
    for ((n = 1; n <= nodes; n++)); do
      echo "node $n: client 127.0.0.1:$((base + n))  peer 127.0.0.1:$((base + 100 + n))  metrics http${tls:+s}://127.0.0.1:$(metrics_port "$n")/metrics  pid $(pid_of "$n" || echo '?')  log $dir/node$n/log"
    done
    echo "endpoints: $endpoints  ($shards shards, replication 3${tls:+, client port TLS only})"
    if [[ -x $cli ]]; then
      ep=""
      [[ $base == 7000 && $nodes == 3 ]] || ep=" --endpoints=$endpoints"
      [[ -z $tls ]] || { ep=""; echo "settings:  source $dir/tls/env"; }
      echo "try:       $cli$ep put hello world && $cli$ep get hello"
    fi
    [[ -z $with_prometheus ]] || start_prometheus
    echo "stop with: $0 down"
    ;;
  down)
    for ((n = 1; n <= nodes; n++)); do stop_node "$n"; done
    stop_prometheus
    ;;
  status)
    for ((n = 1; n <= nodes; n++)); do
      if is_removed "$n"; then
        echo "node $n: removed from the cluster"
      elif pid=$(pid_of "$n"); then
        echo "node $n: running (pid $pid), client 127.0.0.1:$((base + n)), metrics http${tls:+s}://127.0.0.1:$(metrics_port "$n")/metrics, log $dir/node$n/log"
      else
        echo "node $n: not running"
      fi
    done
    if pid=$(prometheus_pid); then echo "prometheus: running (pid $pid), http://127.0.0.1:$prom_port"; fi
    if [[ -x $bin/tessera-admin ]]; then
      "$bin/tessera-admin" status --endpoints="$endpoints" || true
    fi
    ;;
  stop)
    node_arg "${1:-}" stop
    stop_node "$1"
    ;;
  start)
    node_arg "${1:-}" start
    start_node "$1"
    ;;
  restart)
    node_arg "${1:-}" restart
    stop_node "$1"
    start_node "$1"
    wait_ready
    ;;
  restart-all)
    for ((n = 1; n <= nodes; n++)); do
      stop_node "$n"
      start_node "$n"
      wait_ready
      # Leaders rebalance onto the returning node (an election timeout or
      # three of stable layout, then one transfer per second per node).
      for _ in $(seq 60); do
        led=$("$cli" --endpoints="$endpoints" cluster status 2>/dev/null |
          grep -cE "^ +[0-9]+ +leader $n " || true)
        ((led > 0)) && break
        sleep 0.5
      done
      echo "node $n leads ${led:-0} shards"
    done
    ;;
  kill)
    node_arg "${1:-}" kill
    if pid=$(pid_of "$1"); then
      kill -KILL "$pid"
      rm -f "$dir/node$1/pid"
      echo "node $1 killed (kill -9 $pid)"
    else
      echo "node $1 not running"
    fi
    ;;
  add)
    n=$((nodes + 1))
    [[ -x $cli ]] || { echo "local-cluster: $cli is not built" >&2; exit 1; }
    "$cli" --endpoints="$endpoints" cluster add-node "$n" "127.0.0.1:$((base + n))" \
      "127.0.0.1:$((base + 100 + n))"
    nodes=$n
    save_config
    load_config
    start_node "$n"
    wait_ready
    echo "node $n: client 127.0.0.1:$((base + n))  peer 127.0.0.1:$((base + 100 + n))  log $dir/node$n/log"
    echo "replicas move to it now; watch: $cli --endpoints=$endpoints cluster status"
    ;;
  remove)
    node_arg "${1:-}" remove
    "$cli" --endpoints="$endpoints" cluster remove-node "$1"
    pid=$(pid_of "$1") || pid=""
    if [[ -n $pid ]]; then
      echo "waiting (up to 10 minutes) for node $1 to hand its replicas over and exit"
      for _ in $(seq 6000); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$pid" 2>/dev/null && { echo "local-cluster: node $1 still runs; see its log" >&2; exit 1; }
    fi
    rm -f "$dir/node$1/pid"
    removed="${removed:+$removed }$1"
    save_config
    echo "node $1 removed"
    ;;
  logs)
    node_arg "${1:-}" logs
    [[ -f $dir/node$1/log ]] || { echo "local-cluster: node $1 has no log yet" >&2; exit 1; }
    if [[ ${2:-} == -f ]]; then exec tail -n 50 -f "$dir/node$1/log"; fi
    cat "$dir/node$1/log"
    ;;
  *)
    usage
    ;;
esac
