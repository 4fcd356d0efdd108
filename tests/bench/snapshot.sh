#!/usr/bin/env bash
# Streamed snapshots under load (issue 13 item 4): a 3-node local cluster,
# one shard filled to --bytes, one of its followers held (SIGSTOP, --mode
# pause, the default) or stopped (SIGTERM, --mode restart) while that shard
# compacts its log past it, then resumed or restarted so that it needs a
# snapshot of the whole shard. Meanwhile a put load runs on the other shards.
# A restarted follower first replays its write-ahead log (hundreds of MiB
# after the fill), which takes its RSS far above its earlier steady state
# before any snapshot byte arrives; a paused one measures the install alone.
#
# Measures, into OUT/result.json and OUT/summary.txt:
#   - the receiving follower's RSS, sampled from /proc every 100 ms: its
#     steady state (median during the baseline load, before it was stopped)
#     and its peak while it receives and installs the snapshot;
#   - the put latency (p50/p99/max) on the other shards without a transfer
#     (baseline load, 20 s, all nodes up) and during the transfer (from the
#     follower's restart until its log says event=snapshot_installed; also
#     without the first 5 s, which hold the restart itself);
#   - the transfer time.
#
# Usage: tests/bench/snapshot.sh [--bytes N] [--out DIR] [--clients N]
#                                [--mode pause|restart]
# Defaults: 1 GiB, /tmp/tessera-snapshot-bench, 8 clients. Uses this build's
# binaries (build/release; TESSERA_BUILD_DIR to change), ports from
# TESSERA_PORT_BASE (default 27000, apart from the tests' 17000: clients
# 27001-27003, peers 27101-27103, metrics 29201-29203), only 127.0.0.1. Every process it starts is stopped by
# PID on exit; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

bytes=$((1 << 30))
out=/tmp/tessera-snapshot-bench
clients=8
mode=pause
while [[ $# -gt 0 ]]; do
  case $1 in
    --mode) mode=$2; shift 2 ;;
    --bytes) bytes=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    *) echo "usage: $0 [--bytes N] [--out DIR] [--clients N] [--mode pause|restart]" >&2; exit 2 ;;
  esac
done

build=${TESSERA_BUILD_DIR:-$root/build/release}
base=${TESSERA_PORT_BASE:-27000}
load_bin=$build/tests/bench/tessera-snapshot-load
for b in "$build/server/tessera-server" "$build/server/tessera-admin" "$load_bin"; do
  [[ -x $b ]] || { echo "snapshot.sh: $b is missing (build it first)" >&2; exit 2; }
done

rm -rf "$out"
mkdir -p "$out/bin"
# The servers, with a compaction interval of 2000 entries (a shard keeps the
# last 1000 entries after each compaction: a follower stopped for 4500 writes
# of the big shard (two compactions) needs a snapshot of it, but not of the
# other shards, which get ~100 writes each while it restarts) and a snapshot
# bound above the shard's size.
max_snapshot=$((2 * bytes + (64 << 20)))
cat >"$out/bin/tessera-server" <<EOF
#!/bin/sh
exec "$build/server/tessera-server" --snapshot-interval-entries=2000 \
  --max-snapshot-bytes=$max_snapshot "\$@"
EOF
chmod +x "$out/bin/tessera-server"
ln -s "$build/server/tessera-admin" "$out/bin/tessera-admin"

export TESSERA_CLUSTER_DIR=$out/cluster TESSERA_SKIP_BUILD=1 TESSERA_BIN_DIR=$out/bin
export TESSERA_PORT_BASE=$base
endpoints="127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
cluster=deploy/local-cluster.sh

sampler_pid=""
load_pid=""
paused_pid=""
cleanup() {
  [[ -n $paused_pid ]] && kill -CONT "$paused_pid" 2>/dev/null || true
  [[ -n $sampler_pid ]] && kill "$sampler_pid" 2>/dev/null || true
  [[ -n $load_pid ]] && kill "$load_pid" 2>/dev/null || true
  "$cluster" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Samples the RSS (kB) of node $1's process every 100 ms into $2, with the
# bytes in its snapshot staging directory ("<unix ms> <kB> <staged bytes>"),
# until it exits; at most 1 hour.
sample_rss() {
  local n=$1 file=$2 pid
  pid=$(node_pid "$n")
  for _ in $(seq 36000); do
    local rss staged
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || break
    [[ -n $rss ]] || break
    staged=$(find "$TESSERA_CLUSTER_DIR/node$n/data/snapshot-staging" -type f -printf '%s\n' \
      2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
    echo "$(date +%s%3N) $rss ${staged:-0}" >>"$file"
    sleep 0.1
  done
}

node_pid() { cat "$TESSERA_CLUSTER_DIR/node$1/pid"; }
now_ms() { date +%s%3N; }

echo "== start (uptime: $(uptime))" | tee "$out/summary.txt"
"$cluster" up >"$out/up.log" 2>&1 || { cat "$out/up.log"; exit 1; }

echo "== fill one shard with $bytes bytes" | tee -a "$out/summary.txt"
fill_start=$(now_ms)
"$load_bin" fill --endpoints="$endpoints" --bytes="$bytes" --tag=big | tee "$out/fill.txt"
fill_ms=$(($(now_ms) - fill_start))
shard=$(awk '/^shard / { print $2; exit }' "$out/fill.txt")
leader=$("$build/server/tessera-admin" map --endpoints="$endpoints" |
  awk -v s="shard $shard:" 'index($0, s) == 1 { print $NF }')
follower=1
while [[ $follower == "$leader" ]]; do follower=$((follower + 1)); done
echo "shard $shard, leader node $leader, the follower to restart: node $follower" |
  tee -a "$out/summary.txt"

echo "== baseline: put load on the other shards for 20 s, no transfer" | tee -a "$out/summary.txt"
sample_rss "$follower" "$out/rss-baseline.txt" &
sampler_pid=$!
"$load_bin" load --endpoints="$endpoints" --out="$out/load-baseline.txt" --seconds=20 \
  --clients="$clients" --tag=big
baseline_end=$(now_ms)
if [[ $mode == restart ]]; then
  kill "$sampler_pid" 2>/dev/null || true
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=""
fi

echo "== $mode node $follower; 4500 writes to shard $shard compact its log past it" |
  tee -a "$out/summary.txt"
if [[ $mode == restart ]]; then
  "$cluster" stop "$follower" >>"$out/cluster.log" 2>&1
else
  paused_pid=$(node_pid "$follower")
  kill -STOP "$paused_pid"
fi
"$load_bin" fill --endpoints="$endpoints" --bytes=4500000 --value-bytes=1000 --tag=big \
  --first=100000000 >>"$out/fill.txt"
sleep 2

echo "== transfer: put load on the other shards; $mode node $follower" | tee -a "$out/summary.txt"
log=$TESSERA_CLUSTER_DIR/node$follower/log
installed_before=$(grep -c "event=snapshot_installed shard=$shard\$" "$log" || true)
"$load_bin" load --endpoints="$endpoints" --out="$out/load-transfer.txt" --seconds=3600 \
  --clients="$clients" --tag=big --stop-file="$out/stop" &
load_pid=$!
sleep 1
restart_ms=$(now_ms)
if [[ $mode == restart ]]; then
  "$cluster" start "$follower" >>"$out/cluster.log" 2>&1
  sample_rss "$follower" "$out/rss-transfer.txt" &
  sampler_pid=$!
else
  kill -CONT "$paused_pid"
  paused_pid=""
fi
installed_ms=""
for _ in $(seq 6000); do  # at most 10 minutes
  n=$(grep -c "event=snapshot_installed shard=$shard\$" "$log" || true)
  if [[ $n -gt $installed_before ]]; then
    installed_ms=$(now_ms)
    break
  fi
  sleep 0.1
done
[[ -n $installed_ms ]] || { echo "no snapshot installed within 10 minutes" >&2; exit 1; }
sleep 5
touch "$out/stop"
wait "$load_pid" || true
load_pid=""
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
echo "== done (uptime: $(uptime))" | tee -a "$out/summary.txt"
grep "event=snapshot_installed" "$log" | tail -n +$((installed_before + 1)) >"$out/installed.txt" || true
echo "snapshots installed by node $follower after its restart: $(wc -l <"$out/installed.txt")" \
  "($(awk '{ print $NF }' "$out/installed.txt" | tr '\n' ' '))" | tee -a "$out/summary.txt"

[[ $mode == pause ]] && cp "$out/rss-baseline.txt" "$out/rss-transfer.txt"
/usr/bin/python3 - "$out" "$bytes" "$fill_ms" "$restart_ms" "$installed_ms" "$baseline_end" "$mode" <<'EOF' | tee -a "$out/summary.txt"
import json, statistics, sys
out, size, fill_ms, restart, installed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
baseline_end, mode = int(sys.argv[6]), sys.argv[7]

def load(path, lo=None, hi=None):
    lat, errors = [], 0
    for line in open(path):
        t, us, ok = (int(x) for x in line.split())
        if (lo is not None and t < lo) or (hi is not None and t > hi):
            continue
        if ok:
            lat.append(us / 1000.0)
        else:
            errors += 1
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
    return {"ops": len(lat), "errors": errors, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "max_ms": lat[-1] if lat else None}

def samples(path):
    return [tuple(int(x) for x in line.split()) for line in open(path)]

def rss(path, lo=None, hi=None):
    return [kb / 1024.0 for t, kb, _ in samples(path)
            if (lo is None or t >= lo) and (hi is None or t <= hi)]

base = load(f"{out}/load-baseline.txt")
during = load(f"{out}/load-transfer.txt", restart, installed)
steady = statistics.median(rss(f"{out}/rss-baseline.txt", None, baseline_end))
transfer_rss = rss(f"{out}/rss-transfer.txt", restart, installed)
peak = max(transfer_rss)
# The restarted process: its RSS when the first snapshot bytes reached its
# staging directory (storage opened, WAL replayed, other shards caught up)
# against its peak until the install.
after = samples(f"{out}/rss-transfer.txt")
first = next((i for i, (t, kb, staged) in enumerate(after) if staged > 0), None)
before_data = after[first - 1][1] / 1024.0 if first else None
peak_data = max(kb for t, kb, _ in after[first:] if t <= installed) / 1024.0 if first else None
result = {
    "mode": mode,
    "shard_bytes": size,
    "fill_seconds": fill_ms / 1000.0,
    "transfer_seconds": (installed - restart) / 1000.0,
    "follower_rss_steady_mib": round(steady, 1),
    "follower_rss_peak_during_transfer_mib": round(peak, 1),
    "follower_rss_growth_mib": round(peak - steady, 1),
    "restarted_follower_rss_when_data_starts_mib": before_data and round(before_data, 1),
    "restarted_follower_rss_peak_until_installed_mib": peak_data and round(peak_data, 1),
    "restarted_follower_rss_growth_during_install_mib":
        before_data and round(peak_data - before_data, 1),
    "data_starts_seconds_after_restart": first and (after[first][0] - restart) / 1000.0,
    "put_other_shards_baseline": base,
    "put_other_shards_during_transfer": during,
    # The same window without its first 5 s, which also hold the follower's
    # own restart (its other shards catching up, leaderships moving to it).
    "put_other_shards_during_transfer_after_5s": load(f"{out}/load-transfer.txt", restart + 5000,
                                                      installed),
    "p99_ratio": round(during["p99_ms"] / base["p99_ms"], 2) if base["p99_ms"] else None,
}
json.dump(result, open(f"{out}/result.json", "w"), indent=1)
print(json.dumps(result, indent=1))
EOF
