#!/usr/bin/python3
"""End-to-end observability test of a local cluster.

Starts `deploy/local-cluster.sh up --with-prometheus` (this build's binaries,
ports 27001-27003 / 27101-27103, metrics 29201-29203, Prometheus 29090, in a
temporary directory), then checks:
  - `promtool check metrics` accepts every node's /metrics;
  - through Prometheus' HTTP API: `up` is 1 for every node, and every metric
    the Grafana dashboard's expressions reference has samples (the names are
    extracted from deploy/grafana/dashboards/tessera.json, so a dashboard
    referencing a metric that does not exist fails here);
  - /healthz and /readyz answer 200 on every node;
  - readiness: node 1 turns not ready (503) when nodes 2 and 3 are frozen
    with SIGSTOP, /healthz stays 200, and it is ready again after SIGCONT;
  - `down` stops the nodes and Prometheus.
Every process started is stopped by PID at the end, also on failure.

Usage: observability_test.py SOURCE_DIR SERVER_BIN_DIR
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

SRC, BIN = sys.argv[1], sys.argv[2]
SCRIPT = os.path.join(SRC, "deploy", "local-cluster.sh")
BASE = 27000
NODES = 3
METRICS = {n: BASE + 2200 + n for n in range(1, NODES + 1)}
PROM = f"http://127.0.0.1:{BASE + 2090}"
CLUSTER_DIR = tempfile.mkdtemp(prefix="tessera-observability-test.")
ENV = dict(os.environ, TESSERA_SKIP_BUILD="1", TESSERA_BIN_DIR=BIN,
           TESSERA_PORT_BASE=str(BASE), TESSERA_CLUSTER_DIR=CLUSTER_DIR)


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def run(*args, check=True):
    p = subprocess.run([SCRIPT, *args], env=ENV, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        fail(f"local-cluster.sh {' '.join(args)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p.stdout + p.stderr


def http_get(url, timeout=3):
    """(status, body); status 0 when the server cannot be reached."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError):
        return 0, ""


def wait_for(what, predicate, seconds):
    deadline = time.monotonic() + seconds
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.25)


def pid_of(name):
    path = os.path.join(CLUSTER_DIR, name, "pid")
    with open(path) as f:
        return int(f.read().strip())


def prom_query(expr):
    status, body = http_get(f"{PROM}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if status != 200:
        return None
    data = json.loads(body)
    return data["data"]["result"] if data.get("status") == "success" else None


def dashboard_metrics():
    with open(os.path.join(SRC, "deploy", "grafana", "dashboards", "tessera.json")) as f:
        dashboard = json.load(f)
    names = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            # Drop label matchers and template variables, then take metric names.
            expr = re.sub(r'\{[^}]*\}', "", expr)
            expr = re.sub(r'\[[^\]]*\]', "", expr)
            for token in re.findall(r'[a-zA-Z_:][a-zA-Z0-9_:]*', expr):
                if token.startswith(("tessera_", "process_")) or token == "up":
                    names.add(token)
    if len(names) < 10:
        fail(f"found only {sorted(names)} in the dashboard")
    return sorted(names)


def cleanup():
    for n in range(1, NODES + 1):
        try:
            os.kill(pid_of(f"node{n}"), signal.SIGCONT)
        except (OSError, ValueError):
            pass
    subprocess.run([SCRIPT, "down"], env=ENV, capture_output=True, timeout=120)
    for name in [f"node{n}" for n in range(1, NODES + 1)] + ["prometheus"]:
        try:
            os.kill(pid_of(name), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    shutil.rmtree(CLUSTER_DIR, ignore_errors=True)


def main():
    started = time.monotonic()
    out = run("up", "--with-prometheus")
    for needle in ["cluster ready", f"prometheus: {PROM}", f"http://127.0.0.1:{METRICS[1]}/metrics"]:
        if needle not in out:
            fail(f"'up --with-prometheus' output lacks '{needle}':\n{out}")
    status_out = run("status")
    if "prometheus: running" not in status_out:
        fail(f"status does not show prometheus:\n{status_out}")

    # promtool check metrics on every node.
    for n, port in METRICS.items():
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
        if status != 200 or "tessera_raft_term" not in body:
            fail(f"node {n} /metrics: {status}\n{body[:500]}")
        p = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                           text=True, timeout=30)
        if p.returncode != 0:
            fail(f"promtool check metrics on node {n}:\n{p.stdout}{p.stderr}")
        for path, want in [("/healthz", 200), ("/readyz", 200)]:
            status, body = http_get(f"http://127.0.0.1:{port}{path}")
            if status != want:
                fail(f"node {n} {path}: {status} {body}")
    print(f"promtool check metrics: {NODES} nodes OK", flush=True)

    # Prometheus scrapes every node, and every dashboard metric has samples.
    def all_up():
        result = prom_query('up{job="tessera"}')
        return result is not None and len(result) == NODES and all(
            r["value"][1] == "1" for r in result)
    wait_for("up == 1 for every node in Prometheus", all_up, 40)
    names = dashboard_metrics()
    missing = names
    def none_missing():
        nonlocal missing
        missing = [m for m in missing if not prom_query(f'count({{__name__="{m}"}})')]
        return not missing
    deadline = time.monotonic() + 30
    while not none_missing():
        if time.monotonic() > deadline:
            fail(f"dashboard metrics without samples in Prometheus: {missing}")
        time.sleep(1)
    print(f"prometheus: up=1 on {NODES} nodes; {len(names)} dashboard metrics have samples",
          flush=True)

    # Readiness follows the node's connection to its peers.
    frozen = [pid_of("node2"), pid_of("node3")]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    ready_url = f"http://127.0.0.1:{METRICS[1]}/readyz"
    t0 = time.monotonic()
    wait_for("node 1 /readyz 503 with its peers frozen",
             lambda: http_get(ready_url)[0] == 503, 20)
    print(f"node 1 not ready {time.monotonic() - t0:.1f} s after freezing its peers: "
          f"{http_get(ready_url)[1].strip()}", flush=True)
    if http_get(f"http://127.0.0.1:{METRICS[1]}/healthz")[0] != 200:
        fail("node 1 /healthz must stay 200 while its peers are frozen")
    for pid in frozen:
        os.kill(pid, signal.SIGCONT)
    t0 = time.monotonic()
    wait_for("node 1 /readyz 200 after resuming its peers",
             lambda: http_get(ready_url)[0] == 200, 30)
    print(f"node 1 ready again {time.monotonic() - t0:.1f} s after resuming its peers", flush=True)

    prom_pid = pid_of("prometheus")
    out = run("down")
    if "prometheus stopped" not in out:
        fail(f"down did not stop prometheus:\n{out}")
    time.sleep(0.2)
    try:
        os.kill(prom_pid, 0)
        fail("prometheus still runs after down")
    except OSError:
        pass
    print(f"observability: all checks passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
