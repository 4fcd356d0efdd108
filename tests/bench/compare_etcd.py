#!/usr/bin/python3
"""Tessera vs etcd, side by side on one machine (issue 8).

Started by tests/bench/compare-etcd.sh (which installs deps and builds); see
tests/bench/README.md. Python 3 standard library only.

One run:
  1. starts a 3-member etcd cluster (/usr/bin/etcd, fsync on) and a 3-node
     Tessera cluster (tessera-server, fsync on), both with peer mutual TLS
     (throwaway certificates) and plaintext clients, all on 127.0.0.1, on free
     ports below the ephemeral range (never etcd's 2379/2380), data under
     OUT/data (refused on tmpfs);
  2. fills the key space (100k keys) of both with tessera-bench;
  3. runs every cell of the matrix against each system in turn (only one
     system is under load at a time; the order alternates between cells and
     between repeats to cancel drift), sampling every server's CPU time from
     /proc/PID/stat from the end of the warmup to the end of the run;
  4. records each node's peak RSS (VmHWM), compacts etcd's history (what its
     auto-compaction does in production), fills 1M keys into each and
     records each node's VmRSS and the fill throughput;
  5. prints the Tessera/etcd table, writes OUT/compare.md and
     OUT/compare.json (every raw run included), and stops every process it
     started, by pid (SIGTERM, SIGKILL after a bounded wait), also on Ctrl-C,
     SIGTERM or failure; data directories are removed, logs kept.

Per system and cell the reported figure is the median over the repeats of
each metric (with 2 repeats: their mean).

  compare_etcd.py --root REPO --bin-dir BUILD [--duration 20] [--warmup 3]
      [--repeats 2] [--fill-keys 1000000] [--out DIR] [--smoke] [--cells LIST]
      [--tessera-api batch,unary] [--tls]

Tessera is driven through its KV.Batch stream by default (tessera-bench
--api=batch, the SDK's default: a design difference from etcd, which is
driven with one unary RPC per request as clientv3 does); --tessera-api
batch,unary runs every Tessera cell both ways, in rows of their own.
--tls: both systems' client ports speak TLS only (server certificates, no
client certificates; the clients trust the CA through TESSERA_TLS_CA).
  compare_etcd.py --check-smoke OUT/compare.json   (the ctest's assertions)
"""

import argparse
import ctypes
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

SYSTEMS = ("tessera", "etcd")
NODES = 3
ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
KEY_BYTES = 16
VALUE_BYTES = 256
# Every server writes to the real disk; these file systems would not fsync.
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")

# name -> (workload, clients, consistency); the matrix, in run order.
CELLS = {
    "put-1": ("put", 1, None),
    "put-16": ("put", 16, None),
    "put-64": ("put", 64, None),
    "put-256": ("put", 256, None),
    "put-1024": ("put", 1024, None),
    "get-lin-64": ("get", 64, "linearizable"),
    "get-lin-256": ("get", 256, "linearizable"),
    # Tessera's lease reads; etcd has none, so its side is its linearizable
    # read (the cheapest linearizable read each system offers).
    "get-lease-256": ("get", 256, "lease"),
    "get-stale-256": ("get", 256, "stale"),
    "mixed-256": ("mixed", 256, "linearizable"),
}
SMOKE_CELLS = ("put-1", "put-64", "get-lin-64", "get-stale-256", "mixed-256")

# Issue 14's targets: (what, cell or None, metric, comparison, must, goal), as
# Tessera/etcd ratios. "must" is what the issue requires; "goal" what it aims
# at (4x for throughput, 0.25x for CPU and memory, 0.7x for latency). They
# are evaluated on the rows of the first --tessera-api (default batch).
TARGETS = (
    ("put throughput, 64 clients", "put-64", "ops_per_sec", ">=", 1.5, 4.0),
    ("put throughput, 256 clients", "put-256", "ops_per_sec", ">=", 1.5, 4.0),
    ("server CPU s per 1000 puts, 64 clients", "put-64", "cpu_s_per_kop", "<=", 0.6, 0.25),
    ("server CPU s per 1000 puts, 256 clients", "put-256", "cpu_s_per_kop", "<=", 0.6, 0.25),
    ("p50 latency, put, 1 client", "put-1", "p50_ms", "<=", 1.0, 0.7),
    ("p99 latency, put, 64 clients", "put-64", "p99_ms", "<=", 1.0, 0.7),
    ("linearizable get throughput, 256 clients", "get-lin-256", "ops_per_sec", ">=", 2.0, 4.0),
    ("RSS per node after the big fill (mean of the 3 nodes)", None, "rss_mib", "<=", 0.5, 0.25),
)
# How tessera-bench drives Tessera (--api): one KV.Batch stream per node
# carrying many requests per message (the SDK's default), or one unary RPC
# per request. etcd is always driven as clientv3 does: unary RPCs.
TESSERA_APIS = ("batch", "unary")
METRICS = ("ops_per_sec", "p50_ms", "p99_ms", "cpu_s_per_kop")


def log(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def die_with_parent():
    """In a child before exec: SIGKILL it if this script dies (even by kill -9)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def clean_env():
    """Our environment without ETCD_*/ETCDCTL_* settings that would change etcd's flags."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}


def mount_fstype(path):
    """The file system type of the mount holding `path` (from /proc/mounts)."""
    path = os.path.realpath(path)
    best, fstype = "", "?"
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            mnt = fields[1].replace("\\040", " ")
            inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, fstype = mnt, fields[2]
    return fstype


class PortPicker:
    """Free 127.0.0.1 ports below the ephemeral range, each handed out once."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.used = {2379, 2380}
        try:
            with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
                self.high = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            self.high = 32768
        self.low = max(10000, self.high - 12000)

    def pick(self):
        for _ in range(1000):
            port = self.rng.randrange(self.low, self.high)
            if port in self.used:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            self.used.add(port)
            return port
        raise RuntimeError("no free port found on 127.0.0.1")


class Server:
    """One server process that we started; all signals go to its pid only."""

    def __init__(self, system, name, argv, data_dir, log_path):
        self.system, self.name, self.argv = system, name, argv
        self.data_dir, self.log_path = data_dir, log_path
        self.proc = None

    def start(self):
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)  # etcd wants 0700
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=clean_env(),
                                         start_new_session=True, preexec_fn=die_with_parent)
        log(f"{self.system} {self.name}: pid {self.proc.pid}, log {self.log_path}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self):
        """utime + stime of every thread, from /proc/PID/stat."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is stat's 3rd field (state): utime and stime are the 14th and 15th.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status_mib(self, key):
        """A kB line of /proc/PID/status (VmRSS, VmHWM) in MiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
        raise RuntimeError(f"{self.name}: no {key} in /proc/{self.proc.pid}/status")

    def log_tail(self, lines=8):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


class Cluster:
    """The 3 server processes of one system, plus how to reach them.

    client_env: what a client needs in its environment (with --tls, the CA
    in TESSERA_TLS_CA, read by tessera-bench and tessera-admin)."""

    def __init__(self, system, servers, endpoints, client_env=None):
        self.system, self.servers, self.endpoints = system, servers, endpoints
        self.client_env = client_env or {}

    def env(self):
        """The environment of a client of this cluster."""
        env = {k: v for k, v in clean_env().items() if not k.startswith("TESSERA_TLS_")}
        env.update(self.client_env)
        return env

    def start(self):
        for s in self.servers:
            s.start()

    def check_alive(self):
        for s in self.servers:
            if not s.alive():
                raise RuntimeError(f"{self.system} {s.name} exited (code {s.proc.returncode}); "
                                   f"last lines of {s.log_path}:\n{s.log_tail()}")

    def cpu_seconds(self):
        return [s.cpu_seconds() for s in self.servers]

    def stop(self, wait_s=20.0):
        """SIGTERM to every node at once (each drains), SIGKILL to any left after wait_s."""
        running = [s for s in self.servers if s.alive()]
        for s in running:
            s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        for s in running:
            try:
                s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{self.system} {s.name} did not stop within {wait_s:g} s: SIGKILL")
                s.proc.kill()
                s.proc.wait(timeout=10)


def make_etcd_peer_certs(certs):
    """A CA and one peer certificate for 127.0.0.1 (server and client use),
    with the openssl CLI, as deploy/gen-certs.sh makes Tessera's."""
    os.makedirs(certs, exist_ok=True)
    ca, key, crt = (os.path.join(certs, f) for f in ("ca", "peer.key", "peer.crt"))
    ext = os.path.join(certs, "peer.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
                "keyUsage=digitalSignature,keyEncipherment\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for argv in (["req", "-x509", *ec, "-days", "30", "-subj", "/O=etcd/CN=etcd-peer-ca",
                  "-keyout", f"{ca}.key", "-out", f"{ca}.crt"],
                 ["req", *ec, "-subj", "/O=etcd/CN=etcd-peer", "-keyout", key,
                  "-out", f"{crt}.csr"],
                 ["x509", "-req", "-in", f"{crt}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                  "-CAcreateserial", "-days", "30", "-extfile", ext, "-out", crt]):
        subprocess.run(["openssl", *argv], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return f"{ca}.crt", key, crt


def make_etcd(ports, data_root, log_dir, token, tls=False):
    peers = {f"e{n}": (ports.pick(), ports.pick()) for n in range(1, NODES + 1)}
    initial = ",".join(f"{name}=https://127.0.0.1:{pp}" for name, (_, pp) in peers.items())
    # Peer mutual TLS, as Tessera's peers run (make_tessera): the same
    # protection on both sides; client ports are plaintext on both, or with
    # --tls server-authenticated TLS on both (no client certificates).
    ca, key, crt = make_etcd_peer_certs(os.path.join(data_root, "etcd-certs"))
    scheme = "https" if tls else "http"
    servers = []
    for name, (cp, pp) in peers.items():
        data = os.path.join(data_root, f"etcd-{name}")
        client_tls = ["--cert-file", crt, "--key-file", key] if tls else []
        argv = [ETCD, "--name", name, "--data-dir", data, *client_tls,
                "--listen-client-urls", f"{scheme}://127.0.0.1:{cp}",
                "--advertise-client-urls", f"{scheme}://127.0.0.1:{cp}",
                "--listen-peer-urls", f"https://127.0.0.1:{pp}",
                "--initial-advertise-peer-urls", f"https://127.0.0.1:{pp}",
                "--peer-cert-file", crt, "--peer-key-file", key,
                "--peer-trusted-ca-file", ca, "--peer-client-cert-auth",
                "--initial-cluster", initial, "--initial-cluster-token", token,
                "--initial-cluster-state", "new",
                "--quota-backend-bytes", str(8 << 30),
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]
        servers.append(Server("etcd", name, argv, data, os.path.join(log_dir, f"etcd-{name}.log")))
    endpoints = ",".join(f"127.0.0.1:{cp}" for cp, _ in peers.values())
    return Cluster("etcd", servers, endpoints, {"TESSERA_TLS_CA": ca} if tls else None)


def make_tessera(ports, data_root, log_dir, bins, shards, tls=False):
    addrs = {n: (ports.pick(), ports.pick()) for n in range(1, NODES + 1)}
    initial = ",".join(f"{n}=127.0.0.1:{cp}/127.0.0.1:{pp}" for n, (cp, pp) in addrs.items())
    # Peer mutual TLS, as a user runs it (deploy/gen-certs.sh).
    certs = os.path.join(data_root, "tessera-certs")
    subprocess.run([os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "deploy", "gen-certs.sh"), certs,
        *map(str, addrs)], check=True)
    servers = []
    for n, (cp, pp) in addrs.items():
        data = os.path.join(data_root, f"tessera-n{n}")
        argv = [bins["tessera-server"], f"--node-id={n}", f"--data-dir={data}/db",
                f"--initial-cluster={initial}", f"--shards={shards}",
                f"--listen=127.0.0.1:{cp}", f"--peer-listen=127.0.0.1:{pp}",
                "--metrics-listen=127.0.0.1:0", f"--port-file={data}/ports", "--log-level=warn",
                f"--peer-cert={certs}/node-{n}.crt", f"--peer-key={certs}/node-{n}.key",
                f"--peer-ca={certs}/ca.crt"]
        if tls:  # the same files serve the client port
            argv += [f"--tls-cert={certs}/node-{n}.crt", f"--tls-key={certs}/node-{n}.key",
                     f"--tls-ca={certs}/ca.crt"]
        servers.append(Server("tessera", f"n{n}", argv, data,
                              os.path.join(log_dir, f"tessera-n{n}.log")))
    endpoints = ",".join(f"127.0.0.1:{cp}" for cp, _ in addrs.values())
    return Cluster("tessera", servers, endpoints,
                   {"TESSERA_TLS_CA": f"{certs}/ca.crt"} if tls else None)


def etcdctl(cluster, *args, timeout_s=10):
    ca = cluster.client_env.get("TESSERA_TLS_CA")
    endpoints = ",".join(f"https://{e}" for e in cluster.endpoints.split(",")) if ca else \
        cluster.endpoints
    argv = [ETCDCTL, f"--endpoints={endpoints}", "--dial-timeout=2s",
            f"--command-timeout={timeout_s}s", *([f"--cacert={ca}"] if ca else []), *args]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=clean_env(),
                          timeout=timeout_s + 15)


def wait_ready(cluster, bins, wait_s):
    """Waits (bounded) until every member answers; raises otherwise."""
    deadline = time.monotonic() + wait_s
    last = ""
    while time.monotonic() < deadline:
        cluster.check_alive()
        left = max(1, int(deadline - time.monotonic()))
        if cluster.system == "etcd":
            r = etcdctl(cluster, "endpoint", "health", timeout_s=3)
        else:
            r = subprocess.run([bins["tessera-admin"], "status", f"--endpoints={cluster.endpoints}",
                                f"--wait-ms={min(left, 10) * 1000}", "--quiet"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=left + 20,
                               env=cluster.env())
        if r.returncode == 0:
            log(f"{cluster.system}: ready ({cluster.endpoints})")
            return
        last = (r.stdout or "") + (getattr(r, "stderr", "") or "")
        time.sleep(0.5)
    raise RuntimeError(f"{cluster.system} not ready after {wait_s} s: {last.strip()[-500:]}")


class Bench:
    """Runs tessera-bench against one cluster, with /proc CPU sampling."""

    def __init__(self, binary, conns, runs_dir, timeout_s):
        self.binary, self.conns, self.runs_dir, self.timeout_s = binary, conns, runs_dir, timeout_s
        self.proc = None  # the run in progress (stopped on interruption)
        self.count = 0

    def conns_for(self, system):
        """tessera-bench --conns: Tessera's is per node, etcd's in total (spread over the nodes)."""
        return self.conns if system == "tessera" else self.conns * NODES

    def run(self, cluster, label, workload, clients, flags, warmup_s, bound_s, api="batch"):
        """One invocation; returns a dict (the tool's JSON plus our measurements).

        `api` is Tessera's (--api); etcd's is always unary."""
        fill_only = "--total=0" in flags
        self.count += 1
        api = api if cluster.system == "tessera" else "unary"
        suffix = f"-{api}" if cluster.system == "tessera" else ""
        stem = os.path.join(self.runs_dir, f"{self.count:03d}-{label}-{cluster.system}{suffix}")
        argv = [self.binary, f"--backend={cluster.system}", f"--endpoints={cluster.endpoints}",
                f"--clients={clients}", f"--conns={self.conns_for(cluster.system)}",
                f"--key-size={KEY_BYTES}", f"--value-size={VALUE_BYTES}",
                f"--timeout={self.timeout_s}s", *flags]
        if cluster.system == "tessera":
            argv.append(f"--api={api}")
        argv.append(workload)
        cluster.check_alive()
        children0 = os.times()
        with open(stem + ".stdout", "w") as out, open(stem + ".stderr", "w") as err:
            out.write("# " + " ".join(argv) + "\n")
            out.flush()
            t0 = time.monotonic()
            cpu0 = cluster.cpu_seconds()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env=cluster.env(), preexec_fn=die_with_parent)
            try:
                # Server CPU is counted from the end of the warmup (when ops
                # start to count) to the end of the run.
                if warmup_s > 0:
                    try:
                        self.proc.wait(timeout=warmup_s)
                    except subprocess.TimeoutExpired:
                        cpu0 = cluster.cpu_seconds()
                t_measure = time.monotonic()
                try:
                    code = self.proc.wait(timeout=bound_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
                    raise RuntimeError(f"tessera-bench ran over {bound_s:.0f} s; see {stem}.*")
                cpu1 = cluster.cpu_seconds()
                t1 = time.monotonic()
            except BaseException:
                self.stop()
                raise
            finally:
                self.proc = None
        children1 = os.times()
        result = {"label": label, "system": cluster.system, "api": api, "workload": workload,
                  "clients": clients, "conns": self.conns_for(cluster.system), "argv": argv,
                  "exit_code": code, "stdout": stem + ".stdout", "stderr": stem + ".stderr",
                  "wall_s": round(t1 - t0, 3), "cpu_window_s": round(t1 - t_measure, 3),
                  "server_cpu_s": [round(b - a, 3) for a, b in zip(cpu0, cpu1)],
                  "client_cpu_s": round((children1.children_user + children1.children_system)
                                        - (children0.children_user + children0.children_system), 3)}
        result["bench"] = parse_bench_json(stem + ".stdout")
        # A fill-only run (--fill --total=0) reports its puts as fill_ops.
        ops = (result["bench"] or {}).get("fill_ops" if fill_only else "ops") or 0
        result["ops"] = ops
        cpu = sum(result["server_cpu_s"])
        result["server_cpu_s_total"] = round(cpu, 3)
        result["cpu_s_per_kop"] = cpu / ops * 1000 if ops > 0 else None
        result["ok"] = code == 0 and ops > 0
        if not result["ok"]:
            log(f"run {os.path.basename(stem)} failed: exit {code}, ops {ops}; "
                f"stderr: {tail(stem + '.stderr')}")
        cluster.check_alive()
        return result

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def tail(path, chars=400):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:].strip()
    except OSError:
        return ""


def parse_bench_json(path):
    """The last line of tessera-bench's stdout as a dict, or None."""
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("# ")]
    except OSError:
        return None
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def summarize(cell_names, runs, apis=("batch",)):
    """Per cell, Tessera API and system: the median over repeats of each metric; and the
    ratios. One row per (cell, api), in that order; etcd's side is the same in every row
    of a cell (etcd is driven one way only)."""
    cells = []
    for name in cell_names:
        for api in apis:
            workload, clients, consistency = CELLS[name]
            row = {"cell": name, "api": api, "workload": workload, "clients": clients,
                   "consistency": consistency}
            for system in SYSTEMS:
                mine = [r for r in runs if r["label"] == name and r["system"] == system
                        and r["ok"] and (system != "tessera" or r.get("api", "batch") == api)]
                row[system] = {
                    "ops_per_sec": median([r["bench"].get("ops_per_sec") for r in mine]),
                    "p50_ms": median([r["bench"].get("p50_ms") for r in mine]),
                    "p99_ms": median([r["bench"].get("p99_ms") for r in mine]),
                    "cpu_s_per_kop": median([r["cpu_s_per_kop"] for r in mine]),
                    "ops": sum(r["bench"].get("ops", 0) for r in mine),
                    "errors": sum(r["bench"].get("errors", 0) or 0 for r in mine),
                    "misses": sum(r["bench"].get("misses", 0) or 0 for r in mine),
                    "runs": len(mine),
                }
            row["ratio"] = {m: ratio(row["tessera"][m], row["etcd"][m]) for m in METRICS}
            cells.append(row)
    return cells


def geomean(values):
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def evaluate_targets(cells, memory):
    """The TARGETS on the rows of the first API in `cells` (the SDK's default first)."""
    primary = cells[0].get("api", "batch") if cells else "batch"
    by_name = {c["cell"]: c for c in cells if c.get("api", "batch") == primary}
    out = []
    for what, cell, metric, cmp, must, goal in TARGETS:
        if metric == "rss_mib":
            value = (memory or {}).get("ratio_mean")
        elif cell is None:
            value = geomean([c["ratio"][metric] for c in by_name.values()])
        else:
            value = by_name[cell]["ratio"][metric] if cell in by_name else None

        def meets(bound):
            return value >= bound if cmp == ">=" else value <= bound

        if value is None:
            verdict = "n/a"
        elif meets(goal):
            verdict = "MET (goal too)"
        elif meets(must):
            verdict = "MET"
        else:
            verdict = "MISSED"
        out.append({"target": what, "cell": cell, "metric": metric, "api": primary,
                    "must": f"{cmp} {must:g}x", "goal": f"{cmp} {goal:g}x", "ratio": value,
                    "result": verdict})
    return out


def fmt(v, digits=2):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}f}" if abs(v) >= 0.1 or v == 0 else f"{v:.3g}"


def fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def markdown(report):
    m = report["meta"]
    c = report["config"]
    lines = ["# Tessera vs etcd", "",
             f"- date: {m['date']}",
             f"- machine: {m['cpu_model']}, {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM, "
             f"kernel {m['kernel']}",
             f"- etcd: {m['etcd_version']} (Debian etcd-server; fsync on; peer mutual TLS)",
             f"- tessera: commit {m['git_commit']} ({c['shards']} shards, replication 3, fsync on; peer mutual TLS)",
             "- client ports: " + ("TLS on both (server certificates, no client certificates; "
                                   "--tls)" if c.get("client_tls") else "plaintext on both"),
             f"- disk: {m['data_fs']} ({m['data_dir']}); load average at start {m['loadavg_start']}, "
             f"at end {m.get('loadavg_end', '-')}",
             f"- matrix: {c['duration_s']:g} s per run after {c['warmup_s']:g} s warmup, "
             f"{c['repeats']} repeat(s), alternating order; keys {KEY_BYTES} B, values "
             f"{VALUE_BYTES} B, key space {c['key_space']:,} (filled first); "
             f"{c['conns']} client connections per server node; each figure is the median over "
             f"the repeats{' (SMOKE RUN: not a measurement)' if c['smoke'] else ''}",
             "- CPU = utime+stime of the 3 server processes (/proc/PID/stat) from the end of the "
             "warmup to the end of the run, per 1000 ops counted by tessera-bench",
             f"- Tessera API (tessera-bench --api): {', '.join(c.get('tessera_apis', ['batch']))}. "
             "Design difference: `batch` sends Tessera's requests over one KV.Batch stream per "
             "node, many requests per message and the results of one raft cycle in one response "
             "(the Tessera SDK's default); `unary` is one RPC per request, as etcd is driven "
             "(clientv3-style unary calls over its gRPC KV API) in every row",
             "", "## Throughput, latency, CPU (ratio = Tessera / etcd)", "",
             "| cell | clients | tessera api | tessera ops/s | etcd ops/s | ratio | tessera p50 ms "
             "| etcd p50 ms | ratio | tessera p99 ms | etcd p99 ms | ratio | tessera CPU s/1k ops "
             "| etcd CPU s/1k ops | ratio |",
             "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for row in report["cells"]:
        t, e, r = row["tessera"], row["etcd"], row["ratio"]
        lines.append(
            f"| {row['cell']} | {row['clients']} | {row.get('api', 'batch')} | "
            f"{fmt(t['ops_per_sec'])} | "
            f"{fmt(e['ops_per_sec'])} | {fmt_ratio(r['ops_per_sec'])} | {fmt(t['p50_ms'])} | "
            f"{fmt(e['p50_ms'])} | {fmt_ratio(r['p50_ms'])} | {fmt(t['p99_ms'])} | "
            f"{fmt(e['p99_ms'])} | {fmt_ratio(r['p99_ms'])} | {fmt(t['cpu_s_per_kop'], 3)} | "
            f"{fmt(e['cpu_s_per_kop'], 3)} | {fmt_ratio(r['cpu_s_per_kop'])} |")
    notes = []
    for row in report["cells"]:
        for system in SYSTEMS:
            s = row[system]
            if s["errors"] or s["misses"] or s["runs"] < c["repeats"]:
                who = f"{system} ({row.get('api', 'batch')})" if system == "tessera" else system
                notes.append(f"- {row['cell']} {who}: {s['errors']} errors, {s['misses']} "
                             f"misses, {s['runs']}/{c['repeats']} successful runs")
    if notes:
        lines += ["", "Errors and misses (summed over repeats):", ""] + notes
    mem = report.get("memory")
    if mem:
        lines += ["", f"## Memory (RSS per node, MiB)", "",
                  "| | tessera | etcd | ratio |", "|---|--:|--:|--:|"]
        rows = [("peak RSS during the matrix (VmHWM), max of the 3 nodes", "hwm_matrix_max"),
                (f"RSS after the {mem['fill_keys']:,}-key fill, mean of the 3 nodes", "rss_mean"),
                (f"RSS after the {mem['fill_keys']:,}-key fill, max of the 3 nodes", "rss_max"),
                ("peak RSS (VmHWM) after the fill, max of the 3 nodes", "hwm_fill_max"),
                ("fill throughput, ops/s (256 clients)", "fill_ops_per_sec"),
                ("fill: server CPU s per 1000 puts", "fill_cpu_s_per_kop")]
        if mem["fill_keys"] <= 0:
            rows = rows[:1]  # --fill-keys 0: no fill, nothing measured after it
        for title, key in rows:
            tv, ev = mem["tessera"].get(key), mem["etcd"].get(key)
            lines.append(f"| {title} | {fmt(tv)} | {fmt(ev)} | {fmt_ratio(ratio(tv, ev))} |")
        for system in SYSTEMS:
            if "rss_nodes" not in mem[system]:
                continue  # no fill, or it failed: nothing measured after it
            lines.append("")
            lines.append(f"{system} per node after the fill (VmRSS MiB): "
                         + ", ".join(f"{k} {v:.0f}" for k, v in mem[system]["rss_nodes"].items()))
        lines.append("")
        if mem["fill_keys"] <= 0:
            lines.append("No memory fill (--fill-keys 0).")
        else:
            lines.append(f"Before its fill etcd's history was compacted to its current revision "
                         f"(revision {mem.get('etcd_compacted_revision', '-')}), as its "
                         f"auto-compaction would in production; Tessera compacts its raft logs "
                         f"itself.")
    api = report["targets"][0].get("api", "batch") if report["targets"] else "batch"
    lines += ["", f"## Targets (issue 14; Tessera rows with api {api})", "",
              "| target | must (Tessera/etcd) | goal | measured | result |",
              "|---|---|---|--:|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['must']} | {t['goal']} | {fmt_ratio(t['ratio'])} "
                     f"| {t['result']} |")
    return "\n".join(lines) + "\n"


def read_first(path, prefix):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def command_output(argv, cwd=None):
    try:
        r = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine_info(root, data_dir):
    commit = command_output(["git", "rev-parse", "--short=12", "HEAD"], cwd=root)
    if command_output(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root) not in (
            "", "?"):
        commit += " (tracked files modified)"
    mem_kb = int(read_first("/proc/meminfo", "MemTotal").split()[0])
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "kernel": os.uname().release,
            "cpu_model": read_first("/proc/cpuinfo", "model name"),
            "cores": os.cpu_count(),
            "ram_gib": mem_kb / 1024 / 1024,
            "etcd_version": command_output([ETCD, "--version"]).splitlines()[0].replace(
                "etcd Version: ", "") if os.path.exists(ETCD) else "?",
            "git_commit": commit,
            "data_dir": data_dir,
            "data_fs": mount_fstype(data_dir),
            "loadavg_start": loadavg()}


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def find_binaries(bin_dir):
    bins = {}
    for name, subdirs in (("tessera-server", ("server",)), ("tessera-admin", ("server",)),
                          ("tessera-bench", ("client/bench", "../client/bench"))):
        for sub in ("", *subdirs):
            path = os.path.normpath(os.path.join(bin_dir, sub, name))
            if os.access(path, os.X_OK):
                bins[name] = path
                break
        else:
            raise SystemExit(f"compare-etcd: no {name} under {bin_dir} (build it: ninja -C "
                             f"build/release tessera-server tessera-admin tessera-bench)")
    for path in (ETCD, ETCDCTL):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"compare-etcd: {path} missing (deploy/install-deps.sh installs "
                             f"etcd-server and etcd-client)")
    return bins


def parse_args(argv):
    p = argparse.ArgumentParser(prog="compare-etcd.sh", description=(
        "Tessera vs etcd: 3-node clusters of each on 127.0.0.1, the issue-8 matrix, "
        "Tessera/etcd ratios in OUT/compare.md and OUT/compare.json."))
    p.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), help=argparse.SUPPRESS)
    p.add_argument("--bin-dir", help="build dir holding server/ and client/bench/ "
                   "(default ROOT/build/release; env TESSERA_BIN_DIR)")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 20)")
    p.add_argument("--warmup", type=float, help="warmup seconds per run (default 3)")
    p.add_argument("--repeats", type=int, help="runs per cell and system (default 2)")
    p.add_argument("--key-space", type=int, help="keys of the matrix (default 100000)")
    p.add_argument("--fill-keys", type=int,
                   help="keys of the memory fill (default 1000000; 0 skips it)")
    p.add_argument("--cells", help="comma-separated cells (default: all): " + ",".join(CELLS))
    p.add_argument("--shards", type=int, default=16, help="Tessera shards (default 16)")
    p.add_argument("--tls", action="store_true",
                   help="client ports TLS-only on both systems (server certificates, no client "
                        "certificates): the cost of TLS, against a run without")
    p.add_argument("--tessera-api", default="batch",
                   help="how tessera-bench drives Tessera, comma-separated, each its own rows "
                   "(batch, unary; default batch; the first is the one the targets judge)")
    p.add_argument("--conns", type=int, default=4,
                   help="client TCP connections per server node, for both systems (default 4)")
    p.add_argument("--seed", type=int, default=1, help="base seed of tessera-bench (default 1)")
    p.add_argument("--out", help="output dir (default ROOT/build/bench/compare-YYYYmmdd-HHMMSS)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run for the ctest: 1 s runs, key space 2000, fill 5000, 1 repeat, "
                   + ",".join(SMOKE_CELLS))
    p.add_argument("--allow-tmpfs", action="store_true",
                   help="run even if OUT is on tmpfs (fsync is then meaningless)")
    p.add_argument("--keep-data", action="store_true", help="keep the data directories")
    p.add_argument("--check-smoke", metavar="JSON", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    defaults = dict(duration=20.0, warmup=3.0, repeats=2, key_space=100_000, fill_keys=1_000_000,
                    cells=",".join(CELLS))
    if a.smoke:
        defaults = dict(duration=1.0, warmup=0.5, repeats=1, key_space=2000, fill_keys=5000,
                        cells=",".join(SMOKE_CELLS))
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.cell_names = [c.strip() for c in a.cells.split(",") if c.strip()]
    a.apis = [x.strip() for x in a.tessera_api.split(",") if x.strip()]
    if not a.apis or any(x not in TESSERA_APIS for x in a.apis) or len(set(a.apis)) != len(a.apis):
        p.error(f"--tessera-api: a comma-separated subset of {','.join(TESSERA_APIS)}")
    unknown = [c for c in a.cell_names if c not in CELLS]
    if unknown or not a.cell_names:
        p.error(f"unknown cells {unknown}; known: {','.join(CELLS)}")
    if a.duration <= 0 or a.warmup < 0 or a.repeats < 1 or a.key_space < 1 or a.fill_keys < 0:
        p.error("--duration > 0, --warmup >= 0, --repeats >= 1, --key-space >= 1, --fill-keys >= 0")
    if a.bin_dir is None:
        a.bin_dir = os.environ.get("TESSERA_BIN_DIR") or os.path.join(a.root, "build", "release")
    if a.out is None:
        a.out = os.path.join(a.root, "build", "bench",
                             "compare-" + time.strftime("%Y%m%d-%H%M%S"))
    a.out = os.path.abspath(a.out)
    return a


def check_smoke(path):
    """The ctest's assertions on a smoke run's compare.json; returns an exit code."""
    with open(path) as f:
        report = json.load(f)
    problems = []
    cells = {c["cell"]: c for c in report.get("cells", [])}
    for name in SMOKE_CELLS:
        if name not in cells:
            problems.append(f"cell {name} missing")
            continue
        for system in SYSTEMS:
            if not cells[name][system]["ops"] > 0:
                problems.append(f"cell {name}: {system} did no ops")
    runs = report.get("runs", [])
    if not runs or not all(r["ok"] for r in runs):
        problems.append("a run failed (or none ran)")
    if len(report.get("targets", [])) != len(TARGETS):
        problems.append("targets section incomplete")
    for p in problems:
        print(f"check-smoke: {p}", file=sys.stderr)
    print(f"check-smoke: {path}: {'FAILED' if problems else 'ok'} ({len(cells)} cells, "
          f"{len(runs)} runs)")
    return 1 if problems else 0


def measure(a, bins, clusters, bench, report):
    """The fill, the matrix and the memory figure; fills `report` as it goes."""
    bound = a.duration + a.warmup + 120
    common = [f"--key-space={a.key_space}"]
    fill_clients = 256
    for system in SYSTEMS:
        log(f"{system}: filling {a.key_space:,} keys")
        r = bench.run(clusters[system], "fill", "put", fill_clients,
                      common + ["--fill", "--total=0", f"--seed={a.seed}"], 0,
                      max(600, a.key_space / 200), api=a.apis[0])
        report["fills"].append(r)
        if not r["ok"]:
            raise RuntimeError(f"{system}: the fill of the key space failed")
        if r["bench"].get("fill_errors"):
            log(f"{system}: warning: {r['bench']['fill_errors']} fill puts failed (misses follow)")

    for rep in range(a.repeats):
        for i, name in enumerate(a.cell_names):
            workload, clients, consistency = CELLS[name]
            flags = common + [f"--duration={a.duration:g}s", f"--warmup={a.warmup:g}s",
                              f"--seed={a.seed + 1000 * rep + i}"]
            if workload == "mixed":
                flags.append("--read-ratio=0.9")
            order = SYSTEMS if (rep + i) % 2 == 0 else SYSTEMS[::-1]
            # Tessera once per API (in alternating order too), etcd once.
            apis = a.apis if (rep + i) % 2 == 0 else a.apis[::-1]
            runs = [(system, api) for system in order
                    for api in (apis if system == "tessera" else ["unary"])]
            for n, (system, api) in enumerate(runs):
                read = consistency
                if read == "lease" and system == "etcd":
                    read = "linearizable"
                system_flags = flags + ([f"--consistency={read}"] if read else [])
                r = bench.run(clusters[system], name, workload, clients, system_flags, a.warmup,
                              bound, api=api)
                r["repeat"] = rep + 1
                r["order"] = n + 1
                report["runs"].append(r)
                b = r["bench"] or {}
                who = f"{system}/{api}" if system == "tessera" else system
                log(f"repeat {rep + 1}/{a.repeats} {name:14s} {who:13s} "
                    f"{fmt(b.get('ops_per_sec'))} ops/s p50 {fmt(b.get('p50_ms'))} ms "
                    f"p99 {fmt(b.get('p99_ms'))} ms cpu/1k {fmt(r['cpu_s_per_kop'], 3)} s")

    memory = {"fill_keys": a.fill_keys}
    for system in SYSTEMS:
        memory[system] = {
            "hwm_matrix_nodes": {s.name: s.status_mib("VmHWM") for s in clusters[system].servers}}
        memory[system]["hwm_matrix_max"] = max(memory[system]["hwm_matrix_nodes"].values())
    report["memory"] = memory
    if a.fill_keys <= 0:
        return
    rev = etcd_compact(clusters["etcd"])
    memory["etcd_compacted_revision"] = rev
    for system in SYSTEMS:
        log(f"{system}: filling {a.fill_keys:,} keys for the memory figure")
        r = bench.run(clusters[system], "bigfill", "put", fill_clients,
                      [f"--key-space={a.fill_keys}", "--fill", "--total=0",
                       f"--seed={a.seed}"], 0, max(900, a.fill_keys / 200), api=a.apis[0])
        report["fills"].append(r)
        if not r["ok"]:
            raise RuntimeError(f"{system}: the {a.fill_keys}-key fill failed")
        b = r["bench"]
        mine = memory[system]
        mine["fill_ops_per_sec"] = b.get("fill_ops_per_sec")
        mine["fill_seconds"] = b.get("fill_seconds")
        mine["fill_ops"] = b.get("fill_ops")
        mine["fill_errors"] = b.get("fill_errors")
        mine["fill_cpu_s_per_kop"] = r["cpu_s_per_kop"]
        log(f"{system}: {fmt(mine['fill_ops_per_sec'])} puts/s, {mine['fill_errors']} errors")
    time.sleep(0.5 if a.smoke else 3)  # let background flushes settle a little
    for system in SYSTEMS:
        mine = memory[system]
        mine["rss_nodes"] = {s.name: s.status_mib("VmRSS") for s in clusters[system].servers}
        mine["hwm_fill_nodes"] = {s.name: s.status_mib("VmHWM") for s in clusters[system].servers}
        mine["rss_mean"] = statistics.mean(mine["rss_nodes"].values())
        mine["rss_max"] = max(mine["rss_nodes"].values())
        mine["hwm_fill_max"] = max(mine["hwm_fill_nodes"].values())
    memory["ratio_mean"] = ratio(memory["tessera"]["rss_mean"], memory["etcd"]["rss_mean"])
    memory["ratio_max"] = ratio(memory["tessera"]["rss_max"], memory["etcd"]["rss_max"])


def etcd_compact(cluster):
    """Compacts etcd's history to its current revision (physical); returns the revision."""
    r = etcdctl(cluster, "endpoint", "status", "-w", "json")
    if r.returncode != 0:
        raise RuntimeError(f"etcdctl endpoint status: {r.stderr.strip()}")
    rev = max(s["Status"]["header"]["revision"] for s in json.loads(r.stdout))
    r = etcdctl(cluster, "compaction", "--physical", str(rev), timeout_s=300)
    if r.returncode != 0:
        raise RuntimeError(f"etcdctl compaction {rev}: {r.stderr.strip()}")
    log(f"etcd: compacted to revision {rev}")
    return rev


def main(argv):
    a = parse_args(argv)
    if a.check_smoke:
        return check_smoke(a.check_smoke)
    bins = find_binaries(a.bin_dir)
    data_root = os.path.join(a.out, "data")
    log_dir = os.path.join(a.out, "logs")
    runs_dir = os.path.join(a.out, "runs")
    for d in (data_root, log_dir, runs_dir):
        os.makedirs(d, exist_ok=True)
    fstype = mount_fstype(data_root)
    if fstype in MEMORY_FILESYSTEMS and not a.allow_tmpfs:
        raise SystemExit(f"compare-etcd: {data_root} is on {fstype}: fsync would cost nothing; "
                         "pick --out on a real disk (or --allow-tmpfs)")
    report = {"meta": machine_info(a.root, data_root),
              "config": {"duration_s": a.duration, "warmup_s": a.warmup, "repeats": a.repeats,
                         "key_space": a.key_space, "fill_keys": a.fill_keys,
                         "cells": a.cell_names, "shards": a.shards, "conns": a.conns,
                         "tessera_apis": a.apis, "client_tls": a.tls,
                         "seed": a.seed, "smoke": a.smoke, "key_bytes": KEY_BYTES,
                         "value_bytes": VALUE_BYTES, "binaries": bins,
                         "statistic": "median over repeats"},
              "fills": [], "runs": [], "cells": [], "memory": None, "targets": []}
    log(f"output: {a.out}")

    ports = PortPicker(os.getpid() ^ int(time.time()))
    clusters = {"etcd": make_etcd(ports, data_root, log_dir, f"tessera-compare-{os.getpid()}",
                                  a.tls),
                "tessera": make_tessera(ports, data_root, log_dir, bins, a.shards, a.tls)}
    bench = Bench(bins["tessera-bench"], a.conns, runs_dir, 5)
    # Also SIGINT: a shell starts background jobs with it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    failure = None
    try:
        for c in clusters.values():
            c.start()
        for c in clusters.values():
            wait_ready(c, bins, 90)
        measure(a, bins, clusters, bench, report)
    except (Exception, Interrupted) as e:  # report what we have, then clean up
        failure = f"{type(e).__name__}: {e}"
        log(f"FAILED: {failure}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for stop in (bench.stop, clusters["tessera"].stop, clusters["etcd"].stop):
            try:
                stop()
            except Exception as e:  # keep stopping the rest
                log(f"cleanup: {e}")
        if not a.keep_data:
            shutil.rmtree(data_root, ignore_errors=True)

    report["meta"]["loadavg_end"] = loadavg()
    report["cells"] = summarize(a.cell_names, report["runs"], a.apis)
    report["targets"] = evaluate_targets(report["cells"], report["memory"])
    report["failure"] = failure
    text = markdown(report)
    if failure:
        text += f"\n**This run did not complete: {failure}**\n"
    with open(os.path.join(a.out, "compare.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "compare.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(text)
    log(f"wrote {a.out}/compare.md and compare.json; runs in {runs_dir}, server logs in {log_dir}")
    if failure or not all(r["ok"] for r in report["runs"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
