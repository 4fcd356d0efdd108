#!/usr/bin/env bash
# Where a put's server CPU goes, by thread: a 3-node local cluster under a
# closed-loop put load, and per put (summed over the 3 servers) the CPU time
# and the voluntary / involuntary context switches of each kind of thread
# (threads grouped by name: raft-loop, peer-send, gRPC's nexting_thread...),
# from /proc/PID/task/*/{stat,status} over the middle of the run.
#
# Usage: tests/bench/put_profile.sh [--shards N] [--clients N] [--duration S]
#                                   [ENV=VALUE ...]
#   --shards    shards of the cluster (default 16)
#   --clients   tessera-bench closed-loop clients, 4 connections per node (64)
#   --duration  seconds of load (default 22; measured from 6 s to 16 s in)
#   ENV=VALUE   set for the servers (e.g. TESSERA_BIN_DIR=/other/build to
#               compare two builds, run alternately: the machine is noisy)
# Release build (deploy/local-cluster.sh's); ports 7401-7403, state in a
# temporary directory; stops the cluster (by PID) on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
shards=16 clients=64 duration=22
envs=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --shards) shards=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *=*) envs+=("$1"); shift ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
  esac
done
((duration >= 18)) || { echo "put_profile: --duration must be at least 18" >&2; exit 2; }
export TESSERA_SKIP_BUILD=1 TESSERA_PORT_BASE=7400 TESSERA_CLUSTER_DIR
TESSERA_CLUSTER_DIR=$(mktemp -d /tmp/tessera-put-profile.XXXXXX)
work=$TESSERA_CLUSTER_DIR/profile
bench_pid=
cleanup() {
  [[ -n $bench_pid ]] && kill "$bench_pid" 2>/dev/null
  ./deploy/local-cluster.sh down >/dev/null 2>&1 || true
  rm -rf "$TESSERA_CLUSTER_DIR"
}
trap cleanup EXIT
env "${envs[@]}" ./deploy/local-cluster.sh up --shards "$shards" >/dev/null
mkdir -p "$work"
pids=()
for n in 1 2 3; do pids+=("$(cat "$TESSERA_CLUSTER_DIR/node$n/pid")"); done

build/release/client/bench/tessera-bench --endpoints=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403 \
  --clients="$clients" --conns=4 --duration="${duration}s" --json-only put >"$work/bench.json" 2>&1 &
bench_pid=$!

# name utime+stime voluntary nonvoluntary, per thread of the 3 servers
snapshot() {
  local p t
  for p in "${pids[@]}"; do
    for t in /proc/"$p"/task/*; do
      printf '%s %s %s\n' "$(tr ' ' _ <"$t/comm")" "$(awk '{print $14 + $15}' "$t/stat")" \
        "$(awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {printf "%s ", $2}' "$t/status")"
    done 2>/dev/null
  done
}
sleep 6
snapshot >"$work/t0"
sleep 10
snapshot >"$work/t1"
wait "$bench_pid"
bench_pid=

/usr/bin/python3 - "$work" "$shards" "$clients" "$(getconf CLK_TCK)" <<'EOF'
import collections, json, re, sys
work, shards, clients, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ops = json.load(open(f"{work}/bench.json"))["ops_per_sec"]
puts = ops * 10  # the 10 s between the snapshots

def load(path):
    out = collections.defaultdict(lambda: [0, 0, 0, 0])  # cpu ticks, vol, invol, threads
    for line in open(path):
        f = line.split()
        if len(f) < 4:
            continue
        name = re.sub(r"[0-9]+$", "#", f[0])
        row = out[name]
        row[0] += int(f[1]); row[1] += int(f[2]); row[2] += int(f[3]); row[3] += 1
    return out

a, b = load(f"{work}/t0"), load(f"{work}/t1")
print(f"{shards} shards, {clients} clients: {ops:,.0f} puts/s")
print(f"{'threads':18s} {'n':>3s} {'CPU us/put':>11s} {'vol cs/put':>11s} {'invol cs/put':>13s}")
total = [0.0, 0.0, 0.0]
rows = []
for name, (cpu, vol, inv, n) in b.items():
    d = [cpu - a[name][0], vol - a[name][1], inv - a[name][2]]
    us = d[0] / hz * 1e6 / puts
    rows.append((us, name, n, d[1] / puts, d[2] / puts))
    total[0] += us; total[1] += d[1] / puts; total[2] += d[2] / puts
for us, name, n, vol, inv in sorted(rows, reverse=True):
    if us >= 0.05 or vol >= 0.005:
        print(f"{name:18s} {n:3d} {us:11.1f} {vol:11.3f} {inv:13.3f}")
print(f"{'all':18s} {'':3s} {total[0]:11.1f} {total[1]:11.3f} {total[2]:13.3f}")
EOF
