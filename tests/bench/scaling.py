#!/usr/bin/python3
"""Tessera's scaling figures (issue 8), on one machine.

Started by tests/bench/scaling.sh (which builds). Python 3 standard library
only. Reuses the Tessera cluster, tessera-bench
and report helpers of compare_etcd.py (imported, not copied).

Figures (each on its own fresh 3-node cluster on 127.0.0.1, fsync on, data
under OUT/data on the real disk, removed after the figure unless --keep-data):
  shards   throughput vs shard count (1, 16, 64, 256): each node's idle CPU %
           (utime+stime from /proc/PID/stat over 5 s with no load), then the
           key space (100k) is filled, then put and linearizable get at 256
           clients;
  keys     put throughput at 256 clients with a 100k and a 1M key space (each
           filled first, fill rate reported), 16 shards;
  catchup  node 3 is stopped (SIGTERM), 100k puts are written, node 3 is
           restarted with the same flags and data dir; time until every
           shard's applied index on node 3 reaches its leader's commit index.
           Twice: via the log (--snapshot-interval-entries=1000000: the
           leaders keep every entry) and via snapshot (the default 10000: the
           logs are compacted). 4 shards, so that 100k writes are 25k entries
           per shard, more than the interval (with 16 shards they would be
           6,250 and no log would be compacted). The writes use 64 clients:
           a leader keeps sending appends to the stopped node until 256 are
           unacknowledged (raft's in-flight window; tessera-server never
           reports a peer unreachable), its transport queues them and
           delivers them when the node is back, so up to 256 x (clients in
           flight on a shard) entries per shard reach it that way; 64
           clients keep that below the leaders' last compaction point
           (>= 25k - 10k - 1024), so that the snapshot path is really taken;
  restart  in a cluster holding 1M keys (the keys figure's cluster when it
           ran), node 1 is stopped with SIGTERM and started again, then node
           2 with kill -9 (both from the same state): time until its /readyz
           is 200 and until it has caught up (as in catchup);
  idle     (optional: --only idle) idle CPU of each node hosting 1,000 shard
           replicas, hibernation on and off (--hibernate-idle-shards): utime+
           stime over 10 s, 5 s after every shard had a leader.

The report is printed and written to OUT/scaling.md, the raw numbers to
OUT/scaling.json; every tessera-bench run's output is in OUT/runs/, server
logs in OUT/logs/<cluster>/. Every process started is stopped by its pid
(SIGTERM, SIGKILL after a bounded wait), also on Ctrl-C, SIGTERM or a
failure; servers die with this script even if it is killed with -9.

  scaling.py [--bin-dir BUILD] [--only shards,keys,catchup,restart]
      [--duration 15] [--warmup 2] [--smoke] [--out DIR]
  scaling.py --check-smoke OUT/scaling.json   (the ctest's assertions)
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_etcd as ce  # noqa: E402  (cluster, tessera-bench and report helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIGURES = ("shards", "keys", "catchup", "restart", "idle")
DEFAULT_FIGURES = ("shards", "keys", "catchup", "restart")  # "idle" only when asked for
CLIENTS = 256
CONNS = 4  # tessera-bench --conns: connections per server node, as compare-etcd.sh
POLL_S = 0.05  # catch-up and readiness polling period

# Sizes of a full run and of --smoke (seconds, key counts, entries).
# catchup_clients x 256 (raft's in-flight appends per follower) must stay below
# catchup_writes / catchup_shards - snapshot_interval - min(1024, interval / 2).
FULL = dict(shard_counts=(1, 16, 64, 256), small_keys=100_000, big_keys=1_000_000,
            catchup_writes=100_000, catchup_shards=4, catchup_clients=64, settle_s=2.0,
            idle_s=5.0, duration=15.0, warmup=2.0, log_interval=1_000_000,
            snapshot_interval=10_000, idle_shards=1000, idle_settle_s=5.0, idle_window_s=10.0)
SMOKE = dict(shard_counts=(1, 4), small_keys=2000, big_keys=20_000, catchup_writes=2000,
             catchup_shards=1, catchup_clients=4, settle_s=0.5, idle_s=1.0, duration=1.0,
             warmup=0.3, log_interval=1_000_000, snapshot_interval=200, idle_shards=8,
             idle_settle_s=0.5, idle_window_s=1.0)

RAFT_METRICS = {"tessera_raft_applied_index": "applied", "tessera_raft_commit_index": "commit",
                "tessera_raft_snapshots_received_total": "snapshots_received"}
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')


def log(msg):
    print(f"[scaling {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# compare_etcd's Server and Bench log through their module's log(): tag those
# lines as ours.
ce.log = log


def find_binaries(bin_dir):
    """The three binaries under a build dir (compare_etcd.find_binaries also demands etcd)."""
    bins = {"tessera-server": os.path.join(bin_dir, "server", "tessera-server"),
            "tessera-admin": os.path.join(bin_dir, "server", "tessera-admin"),
            "tessera-bench": os.path.join(bin_dir, "client", "bench", "tessera-bench")}
    missing = [p for p in bins.values() if not os.access(p, os.X_OK)]
    if missing:
        raise SystemExit(f"scaling: missing {', '.join(missing)} (build them: ninja -C "
                         f"build/release tessera-server tessera-admin tessera-bench)")
    return bins


# ---------------------------------------------------------------- one node


def port_file(server):
    return os.path.join(server.data_dir, "ports")


def metrics_port(server):
    """The node's metrics port from its --port-file, or None before it is written."""
    try:
        with open(port_file(server)) as f:
            for line in f:
                if line.startswith("metrics_port="):
                    return int(line.split("=", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def http_get(server, path):
    """(HTTP status, body) of GET path on the node's metrics port; (None, '') if unreachable."""
    port = metrics_port(server)
    if port is None:
        return None, ""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (OSError, ValueError):
        return None, ""


def raft_view(server):
    """{shard: {applied, commit, leader, snapshots_received}} from /metrics, or None."""
    status, text = http_get(server, "/metrics")
    if status != 200:
        return None
    view = {}
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m or not (m.group(1) in RAFT_METRICS or m.group(1) == "tessera_raft_role"):
            continue
        labels = dict(LABEL.findall(m.group(2) or ""))
        if "shard" not in labels:
            continue
        shard = view.setdefault(labels["shard"], {"applied": None, "commit": None,
                                                  "leader": False, "snapshots_received": 0})
        value = float(m.group(3))
        if m.group(1) == "tessera_raft_role":
            if labels.get("role") == "leader" and value == 1:
                shard["leader"] = True
        else:
            shard[RAFT_METRICS[m.group(1)]] = int(value)
    return view


def behind(views, node_index):
    """Entries node `node_index` still has to apply, summed over shards, or None when some
    shard has no leader, or the node does not report it, in these views."""
    node = views[node_index]
    if node is None:
        return None
    shards = set().union(*(v.keys() for v in views if v))
    total = 0
    for shard in shards:
        commits = [v[shard]["commit"] for v in views if v and v.get(shard, {}).get("leader")]
        mine = node.get(shard, {}).get("applied")
        if not commits or mine is None:
            return None
        total += max(0, max(commits) - mine)
    return total


def stop_server(server, sig, wait_s=30.0):
    """Sends `sig` to the node's pid and waits for it to exit (SIGKILL after wait_s);
    returns the seconds it took."""
    t0 = time.monotonic()
    server.proc.send_signal(sig)
    try:
        server.proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        log(f"{server.name} did not exit within {wait_s:g} s of signal {sig}: SIGKILL")
        server.proc.kill()
        server.proc.wait(timeout=10)
    return time.monotonic() - t0


def restart_and_wait(cluster, index, bound_s):
    """Starts node `index` again (same argv, data dir and log) and polls until its /readyz is
    200 and every shard's applied index on it reaches its leader's commit index. Returns the
    seconds from the start to each milestone and the node's final raft view."""
    node = cluster.servers[index]
    try:
        os.remove(port_file(node))  # rewritten once the new process listens
    except FileNotFoundError:
        pass
    t0 = time.monotonic()
    node.start()
    out = {"listening_s": None, "ready_s": None, "caught_up_s": None, "first_behind": None}
    while out["ready_s"] is None or out["caught_up_s"] is None:
        now = time.monotonic() - t0
        if now > bound_s:
            raise RuntimeError(f"{node.name} not ready and caught up {bound_s:g} s after its "
                               f"restart: {out}")
        cluster.check_alive()
        if out["listening_s"] is None and metrics_port(node) is not None:
            out["listening_s"] = now
        if out["listening_s"] is not None:
            if out["ready_s"] is None and http_get(node, "/readyz")[0] == 200:
                out["ready_s"] = now
            if out["caught_up_s"] is None:
                views = [raft_view(s) for s in cluster.servers]
                left = behind(views, index)
                if out["first_behind"] is None and left is not None:
                    out["first_behind"] = left
                if left == 0:
                    out["caught_up_s"] = now
                    out["view"] = views[index]
        time.sleep(POLL_S)
    for k in ("listening_s", "ready_s", "caught_up_s"):
        out[k] = round(out[k], 3)
    return out


def dir_mib(path):
    total = 0
    for d, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(d, name))
            except OSError:
                pass
    return total / (1 << 20)


# ---------------------------------------------------------------- the figures


class Lab:
    """Starts and discards clusters, runs tessera-bench; remembers what runs for cleanup."""

    def __init__(self, a, bins, report):
        self.a, self.bins, self.report = a, bins, report
        self.ports = ce.PortPicker(os.getpid() ^ int(time.time()))
        if a.ports:
            self.ports.low, self.ports.high = a.ports[0], a.ports[1] + 1
        self.bench = ce.Bench(bins["tessera-bench"], CONNS, os.path.join(a.out, "runs"), 5)
        self.clusters = []  # running clusters (stopped by cleanup())
        self.runs = 0

    def start(self, name, shards, extra_flags=()):
        data = os.path.join(self.a.out, "data", name)
        logs = os.path.join(self.a.out, "logs", name)
        os.makedirs(logs, exist_ok=True)
        cluster = ce.make_tessera(self.ports, data, logs, self.bins, shards)
        cluster.name, cluster.data_root, cluster.shards = name, data, shards
        for s in cluster.servers:  # info: startup steps, drains and snapshot installs
            s.argv += ["--log-level=info", *extra_flags]
        self.clusters.append(cluster)
        log(f"cluster {name}: {shards} shards {' '.join(extra_flags)}")
        cluster.start()
        ce.wait_ready(cluster, self.bins, 120)
        return cluster

    def discard(self, cluster):
        self.clusters.remove(cluster)
        cluster.stop()
        if not self.a.keep_data:
            shutil.rmtree(cluster.data_root, ignore_errors=True)

    def cleanup(self):
        self.bench.stop()
        for cluster in list(self.clusters):
            try:
                self.discard(cluster)
            except Exception as e:  # keep stopping the rest
                log(f"cleanup of {cluster.name}: {e}")

    def run(self, cluster, label, workload, flags, warmup_s=0.0, bound_s=None, clients=CLIENTS):
        """One tessera-bench run; its record goes into report['runs']."""
        if bound_s is None:
            bound_s = self.a.duration + self.a.warmup + 120
        flags = list(flags) + [f"--seed={self.a.seed + self.runs}"]
        self.runs += 1
        r = self.bench.run(cluster, f"{cluster.name}-{label}", workload, clients, flags,
                           warmup_s, bound_s)
        self.report["runs"].append(r)
        b = r["bench"] or {}
        errors = b.get("errors", 0) + (b.get("fill_errors") or 0)
        r["summary"] = {"ops_per_sec": b.get("fill_ops_per_sec" if "--fill" in flags
                                             else "ops_per_sec"),
                        "p50_ms": b.get("p50_ms"), "p99_ms": b.get("p99_ms"),
                        "seconds": b.get("fill_seconds" if "--fill" in flags else "seconds"),
                        "errors": errors, "misses": b.get("misses", 0),
                        "cpu_s_per_kop": r["cpu_s_per_kop"], "ok": r["ok"]}
        log(f"{cluster.name} {label}: {ce.fmt(r['summary']['ops_per_sec'])} ops/s, p99 "
            f"{ce.fmt(b.get('p99_ms'))} ms, {errors} errors")
        if not r["ok"]:
            raise RuntimeError(f"{cluster.name} {label}: tessera-bench failed; see {r['stderr']}")
        return r["summary"]

    def fill(self, cluster, keys):
        return self.run(cluster, f"fill-{keys}", "put",
                        [f"--key-space={keys}", "--fill", "--total=0"],
                        bound_s=max(600, keys / 200))

    def cell(self, cluster, label, workload, keys, consistency=None):
        flags = [f"--key-space={keys}", f"--duration={self.a.duration:g}s",
                 f"--warmup={self.a.warmup:g}s"]
        if consistency:
            flags.append(f"--consistency={consistency}")
        return self.run(cluster, label, workload, flags, warmup_s=self.a.warmup)


def figure_shards(lab, a, out):
    """Throughput vs shard count, and idle CPU per node."""
    for shards in a.sizes["shard_counts"]:
        c = lab.start(f"shards-{shards}", shards)
        time.sleep(a.sizes["settle_s"])
        cpu0, t0 = c.cpu_seconds(), time.monotonic()
        time.sleep(a.sizes["idle_s"])
        cpu1, t1 = c.cpu_seconds(), time.monotonic()
        row = {"shards": shards, "idle_window_s": round(t1 - t0, 3),
               "idle_cpu_pct": [round((y - x) / (t1 - t0) * 100, 2) for x, y in zip(cpu0, cpu1)]}
        log(f"shards-{shards}: idle CPU % per node {row['idle_cpu_pct']}")
        row["fill"] = lab.fill(c, a.sizes["small_keys"])
        row["put"] = lab.cell(c, "put", "put", a.sizes["small_keys"])
        row["get"] = lab.cell(c, "get-lin", "get", a.sizes["small_keys"], "linearizable")
        out.append(row)
        lab.discard(c)


def figure_idle(lab, a, out):
    """Idle CPU per node with many shards, hibernation on and off."""
    shards = a.sizes["idle_shards"]
    for on in (True, False):
        flag = f"--hibernate-idle-shards={'true' if on else 'false'}"
        c = lab.start(f"idle-{'on' if on else 'off'}", shards, [flag])
        time.sleep(a.sizes["idle_settle_s"])
        cpu0, t0 = c.cpu_seconds(), time.monotonic()
        time.sleep(a.sizes["idle_window_s"])
        cpu1, t1 = c.cpu_seconds(), time.monotonic()
        row = {"shards": shards, "hibernate": on, "idle_window_s": round(t1 - t0, 3),
               "idle_cpu_pct": [round((y - x) / (t1 - t0) * 100, 2) for x, y in zip(cpu0, cpu1)]}
        log(f"idle {shards} shards, {flag}: idle CPU % per node {row['idle_cpu_pct']}")
        out.append(row)
        lab.discard(c)


def figure_keys(lab, a, out, keep_big):
    """Put throughput with a small and a big key space; returns the big cluster if kept."""
    for keys in (a.sizes["small_keys"], a.sizes["big_keys"]):
        c = lab.start(f"keys-{keys}", a.shards)
        row = {"key_space": keys, "shards": a.shards, "fill": lab.fill(c, keys)}
        row["put"] = lab.cell(c, "put", "put", keys)
        row["data_mib_per_node"] = [round(dir_mib(s.data_dir), 1) for s in c.servers]
        out.append(row)
        if keys == a.sizes["big_keys"] and keep_big:
            c.keys = keys
            return c
        lab.discard(c)
    return None


def figure_catchup(lab, a, out):
    """A node that missed N writes catches up via the log, then via snapshots."""
    writes = a.sizes["catchup_writes"]
    for path, interval in (("log", a.sizes["log_interval"]),
                           ("snapshot", a.sizes["snapshot_interval"])):
        c = lab.start(f"catchup-{path}", a.sizes["catchup_shards"],
                      [f"--snapshot-interval-entries={interval}"])
        n3 = c.servers[2]
        before = raft_view(n3) or {}
        applied_before = sum(s["applied"] or 0 for s in before.values())
        stop_s = stop_server(n3, signal.SIGTERM)
        log(f"catchup-{path}: node 3 stopped (SIGTERM, {stop_s:.2f} s); writing {writes:,} puts")
        live = ce.Cluster("tessera", c.servers[:2], ",".join(c.endpoints.split(",")[:2]))
        live.name = c.name
        w = lab.run(live, "writes", "put",
                    [f"--total={writes}", "--sequential-keys", f"--key-space={writes}"],
                    bound_s=max(300, writes / 100), clients=a.sizes["catchup_clients"])
        leaders = [raft_view(s) or {} for s in c.servers[:2]]
        commit_total = sum(max(v.get(sh, {}).get("commit") or 0 for v in leaders)
                           for sh in before)
        r = restart_and_wait(c, 2, bound_s=max(120, writes / 200))
        view = r.pop("view")
        row = {"path": path, "snapshot_interval_entries": interval,
               "shards": a.sizes["catchup_shards"], "writes": writes,
               "writes_clients": a.sizes["catchup_clients"], "writes_summary": w,
               "stop_s": round(stop_s, 3),
               "entries_behind": commit_total - applied_before, **r,
               "snapshots_received": sum(s["snapshots_received"] for s in view.values()),
               "snapshots_received_by_shard": {k: v["snapshots_received"]
                                               for k, v in sorted(view.items())}}
        # Snapshot path: a snapshot in every data shard (the metadata group
        # gets no writes); log path: none at all.
        got = [n > 0 for k, n in row["snapshots_received_by_shard"].items() if k in before and
               int(k) < a.sizes["catchup_shards"]]
        row["path_as_expected"] = (all(got) if path == "snapshot" else not any(got)) and bool(got)
        log(f"catchup-{path}: caught up {row['caught_up_s']:.2f} s after the restart "
            f"({row['entries_behind']:,} entries behind), snapshots received "
            f"{row['snapshots_received']}")
        out.append(row)
        lab.discard(c)


def figure_restart(lab, a, out, cluster):
    """Restart of a node holding the big key space: node 1 after SIGTERM, node 2 after kill -9.

    Two nodes, so that both restarts start from the same state (the fill's
    data, partly still in RocksDB's WAL); a restarted node has replayed and
    flushed its WAL, and would restart faster a second time."""
    keys = a.sizes["big_keys"]
    if cluster is None:
        cluster = lab.start(f"restart-{keys}", a.shards)
        lab.fill(cluster, keys)
    for how, sig, index in (("SIGTERM", signal.SIGTERM, 0), ("kill -9", signal.SIGKILL, 1)):
        node = cluster.servers[index]
        ce.wait_ready(cluster, lab.bins, 60)
        data_mib = dir_mib(node.data_dir)
        stop_s = stop_server(node, sig)
        log(f"restart: node {index + 1} stopped ({how}, {stop_s:.2f} s), starting it again")
        r = restart_and_wait(cluster, index, bound_s=max(120, keys / 2000))
        r.pop("view")
        row = {"stop": how, "node": index + 1, "keys": keys, "shards": cluster.shards,
               "data_mib": round(data_mib, 1), "stop_s": round(stop_s, 3), **r}
        log(f"restart after {how}: listening {r['listening_s']:.2f} s, ready {r['ready_s']:.2f} "
            f"s, caught up {r['caught_up_s']:.2f} s")
        out.append(row)
    lab.discard(cluster)


# ---------------------------------------------------------------- report


def snapshots_cell(row):
    data = {k: n for k, n in row["snapshots_received_by_shard"].items()
            if int(k) < row["shards"]}  # not the metadata group
    return (f"{row['snapshots_received']} ({sum(1 for n in data.values() if n > 0)} of "
            f"{len(data)} shards)")


def cells(*values):
    return "| " + " | ".join(values) + " |"


def markdown(report):
    m, c, f = report["meta"], report["config"], report["figures"]
    fmt = ce.fmt
    lines = ["# Tessera scaling (issue 8)", "",
             f"- date: {m['date']}",
             f"- machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM, "
             f"kernel {m['kernel']}",
             f"- tessera: commit {m['git_commit']}; 3 nodes on 127.0.0.1, replication 3, fsync on, "
             f"a fresh cluster per figure (and per shard count)",
             f"- disk: {m['data_fs']} ({m['data_dir']}); load average at start "
             f"{m['loadavg_start']}, at end {m.get('loadavg_end', '-')}",
             f"- load: tessera-bench, {CLIENTS} clients, {CONNS} connections per node, keys 16 B, "
             f"values 256 B, uniform random keys; each throughput figure is one run of "
             f"{c['duration_s']:g} s measured after {c['warmup_s']:g} s warmup"
             + (" (SMOKE RUN: not a measurement)" if c["smoke"] else "")]
    if "shards" in f:
        lines += ["", f"## Throughput vs shard count ({CLIENTS} clients, key space "
                  f"{c['small_keys']:,}, filled first)", "",
                  "| shards | idle CPU % n1 / n2 / n3 | fill ops/s | put ops/s | put p50 ms "
                  "| put p99 ms | put CPU s/1k | get ops/s | get p50 ms | get p99 ms "
                  "| get CPU s/1k |",
                  "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for r in f["shards"]:
            p, g = r["put"], r["get"]
            lines.append(cells(str(r["shards"]), " / ".join(f"{x:.1f}" for x in r["idle_cpu_pct"]),
                               fmt(r["fill"]["ops_per_sec"]), fmt(p["ops_per_sec"]),
                               fmt(p["p50_ms"]), fmt(p["p99_ms"]), fmt(p["cpu_s_per_kop"], 3),
                               fmt(g["ops_per_sec"]), fmt(g["p50_ms"]), fmt(g["p99_ms"]),
                               fmt(g["cpu_s_per_kop"], 3)))
        lines += ["", f"Idle CPU: utime+stime of each node (/proc/PID/stat) over "
                  f"{c['idle_s']:g} s with no load, {c['settle_s']:g} s after every shard had a "
                  f"leader, in % of one core. Gets are linearizable (ReadIndex). CPU s/1k: the "
                  f"3 nodes' CPU seconds per 1000 measured ops."]
    if "idle" in f:
        lines += ["", "## Idle shards (hibernation)", "",
                  "| shards | hibernation | idle CPU % n1 / n2 / n3 |", "|--:|:--|--:|"]
        for r in f["idle"]:
            lines.append(cells(f"{r['shards']:,}", "on" if r["hibernate"] else "off",
                               " / ".join(f"{x:.1f}" for x in r["idle_cpu_pct"])))
        lines += ["", "Idle CPU: utime+stime of each node (/proc/PID/stat) over "
                  f"{c.get('idle_window_s', 10):g} s with no load, "
                  f"{c.get('idle_settle_s', 5):g} s after every shard had a leader, in % of "
                  "one core (server/raftstore/README.md \"Hibernation\")."]
    if "keys" in f:
        lines += ["", f"## Put throughput vs key space ({c['shards']} shards, {CLIENTS} clients)",
                  "", "| key space | fill ops/s | fill s | put ops/s | put p50 ms | put p99 ms "
                  "| put CPU s/1k | data dir MiB per node |", "|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for r in f["keys"]:
            p = r["put"]
            lines.append(cells(f"{r['key_space']:,}", fmt(r["fill"]["ops_per_sec"]),
                               fmt(r["fill"]["seconds"]), fmt(p["ops_per_sec"]), fmt(p["p50_ms"]),
                               fmt(p["p99_ms"]), fmt(p["cpu_s_per_kop"], 3),
                               " / ".join(f"{x:.0f}" for x in r["data_mib_per_node"])))
        lines += ["", "Each key space on its own fresh cluster, filled (every key written once, "
                  f"{CLIENTS} clients) before the put run."]
    if "catchup" in f:
        lines += ["", f"## Catch-up of a node that missed {c['catchup_writes']:,} writes "
                  f"({c['catchup_shards']} shard{'s' if c['catchup_shards'] > 1 else ''})", "",
                  f"| path | --snapshot-interval-entries | writes ops/s ({c['catchup_clients']} "
                  "clients, 2 nodes up) "
                  "| entries behind | listening s | /readyz 200 s | caught up s "
                  "| snapshots received by node 3 | path as expected |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|---|"]
        for r in f["catchup"]:
            lines.append(cells(r["path"], f"{r['snapshot_interval_entries']:,}",
                               fmt(r["writes_summary"]["ops_per_sec"]), f"{r['entries_behind']:,}",
                               fmt(r["listening_s"]), fmt(r["ready_s"]), fmt(r["caught_up_s"]),
                               snapshots_cell(r),
                               "yes" if r["path_as_expected"] else "**NO**"))
        lines += ["", "Node 3 is stopped with SIGTERM, the writes go to nodes 1 and 2 "
                  "(tessera-bench --sequential-keys, each key once), then node 3 is started "
                  "again with the same flags and data dir. Times are from that start: its port "
                  "file written (listening), its /readyz answering 200, and every shard's "
                  "applied index on node 3 at its leader's commit index "
                  "(tessera_raft_applied_index / tessera_raft_commit_index, polled every "
                  f"{POLL_S * 1000:.0f} ms). Entries behind: the leaders' commit indexes then "
                  "minus node 3's applied indexes before it stopped, summed over shards. "
                  "While node 3 is down each leader keeps sending it appends until 256 are "
                  "unacknowledged (raft's in-flight window; the server never reports a peer "
                  "unreachable); the transport queues them and delivers them once node 3 is "
                  "back, so some entries arrive that way even on the snapshot path. The path is "
                  "as expected when every data shard on node 3 installed a snapshot (snapshot) "
                  "or none did (log); snapshots received: "
                  "tessera_raft_snapshots_received_total on node 3."]
    if "restart" in f:
        rows = f["restart"]
        keys = rows[0]["keys"] if rows else c["big_keys"]
        lines += ["", f"## Restart of a node holding {keys:,} keys ({c['shards']} shards)", "",
                  "| stopped by | node | data dir MiB | stop took s | listening s "
                  "| /readyz 200 s | caught up s |", "|---|--:|--:|--:|--:|--:|--:|"]
        for r in rows:
            lines.append(cells(r["stop"], str(r["node"]), fmt(r["data_mib"]), fmt(r["stop_s"]),
                               fmt(r["listening_s"]), fmt(r["ready_s"]), fmt(r["caught_up_s"])))
        lines += ["", "Node 1 is stopped with SIGTERM (it hands its leaderships over and "
                  "drains), started again at once with the same flags and data dir and waited "
                  "for; then node 2 the same way with kill -9 (a second restart of node 1 would "
                  "start from a WAL its first restart already replayed and flushed). No writes "
                  "in between. Data dir MiB: the node's data dir (apparent size, WAL included) "
                  "when it was stopped. Times are from the start, as in the catch-up figure."]
    for name, failure in report["failures"].items():
        lines += ["", f"**Figure {name} did not complete: {failure}**"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(prog="scaling.sh", description=(
        "Tessera's scaling figures (issue 8) on fresh 3-node clusters on 127.0.0.1: "
        "OUT/scaling.md and OUT/scaling.json."))
    p.add_argument("--bin-dir", default=os.environ.get("TESSERA_BIN_DIR") or os.path.join(
        ROOT, "build", "release"), help="build dir holding server/ and client/bench/ "
                   "(default: env TESSERA_BIN_DIR, else build/release)")
    p.add_argument("--only", default=",".join(DEFAULT_FIGURES),
                   help="comma-separated figures (default " + ",".join(DEFAULT_FIGURES) +
                   "): " + ",".join(FIGURES))
    p.add_argument("--port-range", metavar="LO-HI",
                   help="pick the clusters' 127.0.0.1 ports in [LO, HI] (default: below the "
                   "ephemeral range)")
    p.add_argument("--duration", type=float,
                   help="measured seconds per throughput run (default 15)")
    p.add_argument("--warmup", type=float, help="warmup seconds per throughput run (default 2)")
    p.add_argument("--shards", type=int, default=16,
                   help="shards of the keys and restart figures (default 16)")
    p.add_argument("--seed", type=int, default=1, help="base seed of tessera-bench (default 1)")
    p.add_argument("--out", default=os.path.join(
        ROOT, "build", "bench", "scaling-" + time.strftime("%Y%m%d-%H%M%S")),
                   help="output dir (default build/bench/scaling-YYYYmmdd-HHMMSS)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run for the ctest (under 90 s): shards 1 and 4, key spaces "
                   "2000/20000, catch-up after 2000 writes (1 shard, 4 clients, snapshot "
                   "interval 200), restart with 20000 keys, 1 s runs")
    p.add_argument("--keep-data", action="store_true", help="keep the data directories")
    p.add_argument("--check-smoke", metavar="JSON", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.sizes = dict(SMOKE if a.smoke else FULL)
    for k in ("duration", "warmup"):
        if getattr(a, k) is None:
            setattr(a, k, a.sizes[k])
    a.figures = [x.strip() for x in a.only.split(",") if x.strip()]
    unknown = [x for x in a.figures if x not in FIGURES]
    if unknown or not a.figures:
        p.error(f"--only: unknown figures {unknown}; known: {','.join(FIGURES)}")
    if a.duration <= 0 or a.warmup < 0 or a.shards < 1:
        p.error("--duration > 0, --warmup >= 0, --shards >= 1")
    a.out = os.path.abspath(a.out)
    a.ports = None
    if a.port_range:
        m = re.fullmatch(r"(\d+)-(\d+)", a.port_range)
        if not m or not 1024 <= int(m[1]) < int(m[2]) <= 65535:
            p.error("--port-range LO-HI with 1024 <= LO < HI <= 65535")
        a.ports = (int(m[1]), int(m[2]))
    return a


def check_smoke(path):
    """The ctest's assertions on a smoke run's scaling.json; returns an exit code."""
    with open(path) as f:
        report = json.load(f)
    f = report.get("figures", {})
    problems = [f"figure {name} failed: {why}" for name, why in report.get("failures", {}).items()]

    def positive(where, value):
        if not (isinstance(value, (int, float)) and value > 0):
            problems.append(f"{where}: {value!r} is not a positive number")

    shards = {r["shards"]: r for r in f.get("shards", [])}
    for n in SMOKE["shard_counts"]:
        if n not in shards:
            problems.append(f"shards: no row for {n} shards")
            continue
        r = shards[n]
        for what in ("fill", "put", "get"):
            positive(f"shards {n} {what} ops/s", r[what]["ops_per_sec"])
        idle = r["idle_cpu_pct"]  # may be 0 over a short window: only its presence is checked
        if len(idle) != 3 or not all(isinstance(x, (int, float)) and x >= 0 for x in idle):
            problems.append(f"shards {n}: idle CPU {idle!r}")
    keys = {r["key_space"]: r for r in f.get("keys", [])}
    for n in (SMOKE["small_keys"], SMOKE["big_keys"]):
        if n not in keys:
            problems.append(f"keys: no row for key space {n}")
            continue
        positive(f"keys {n} fill ops/s", keys[n]["fill"]["ops_per_sec"])
        positive(f"keys {n} put ops/s", keys[n]["put"]["ops_per_sec"])
    catchup = {r["path"]: r for r in f.get("catchup", [])}
    for how in ("log", "snapshot"):
        if how not in catchup:
            problems.append(f"catchup: no row for the {how} path")
            continue
        r = catchup[how]
        for k in ("listening_s", "ready_s", "caught_up_s", "entries_behind"):
            positive(f"catchup {how} {k}", r[k])
        if not r["path_as_expected"]:
            problems.append(f"catchup {how}: snapshots received {r['snapshots_received_by_shard']}")
    restart = {r["stop"]: r for r in f.get("restart", [])}
    for how in ("SIGTERM", "kill -9"):
        if how not in restart:
            problems.append(f"restart: no row for {how}")
            continue
        for k in ("listening_s", "ready_s", "caught_up_s", "data_mib"):
            positive(f"restart {how} {k}", restart[how][k])
    runs = report.get("runs", [])
    if not runs or not all(r["ok"] for r in runs):
        problems.append("a tessera-bench run failed (or none ran)")
    for p in problems:
        print(f"check-smoke: {p}", file=sys.stderr)
    print(f"check-smoke: {path}: {'FAILED' if problems else 'ok'} ({len(runs)} runs)")
    return 1 if problems else 0


def main(argv):
    a = parse_args(argv)
    if a.check_smoke:
        return check_smoke(a.check_smoke)
    bins = find_binaries(a.bin_dir)
    for d in ("data", "logs", "runs"):
        os.makedirs(os.path.join(a.out, d), exist_ok=True)
    data_root = os.path.join(a.out, "data")
    fstype = ce.mount_fstype(data_root)
    if fstype in ce.MEMORY_FILESYSTEMS:
        raise SystemExit(f"scaling: {data_root} is on {fstype}: fsync would cost nothing; "
                         "pick --out on a real disk")
    meta = ce.machine_info(ROOT, data_root)
    meta.pop("etcd_version", None)
    report = {"meta": meta,
              "config": {"figures": a.figures, "duration_s": a.duration, "warmup_s": a.warmup,
                         "shards": a.shards,
                         "clients": CLIENTS, "conns": CONNS, "seed": a.seed, "smoke": a.smoke,
                         "binaries": bins, **a.sizes},
              "figures": {}, "failures": {}, "runs": []}
    log(f"output: {a.out}")
    lab = Lab(a, bins, report)
    # Also SIGINT: a shell starts background jobs with it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, ce.on_signal)
    t_start = time.monotonic()
    big = None  # the keys figure's 1M-key cluster, handed to the restart figure
    try:
        for name in FIGURES:
            if name not in a.figures:
                continue
            t0 = time.monotonic()
            rows = report["figures"].setdefault(name, [])
            try:
                if name == "shards":
                    figure_shards(lab, a, rows)
                elif name == "keys":
                    big = figure_keys(lab, a, rows, keep_big="restart" in a.figures)
                elif name == "catchup":
                    figure_catchup(lab, a, rows)
                elif name == "idle":
                    figure_idle(lab, a, rows)
                else:
                    figure_restart(lab, a, rows, big)
                    big = None
            except ce.Interrupted:
                raise
            except Exception as e:  # record it, clean up that figure's clusters, go on
                report["failures"][name] = f"{type(e).__name__}: {e}"
                log(f"figure {name} FAILED: {report['failures'][name]}")
                lab.cleanup()
                big = None
            log(f"figure {name}: {time.monotonic() - t0:.0f} s")
    except ce.Interrupted as e:
        report["failures"]["(all)"] = f"interrupted: {e}"
        log(f"interrupted: {e}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        lab.cleanup()
    report["meta"]["loadavg_end"] = ce.loadavg()
    report["meta"]["elapsed_s"] = round(time.monotonic() - t_start, 1)
    text = markdown(report)
    with open(os.path.join(a.out, "scaling.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "scaling.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(text)
    log(f"wrote {a.out}/scaling.md and scaling.json in {report['meta']['elapsed_s']:.0f} s; "
        f"runs in {a.out}/runs, server logs in {a.out}/logs")
    return 1 if report["failures"] or not all(r["ok"] for r in report["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
