#!/usr/bin/python3
"""Tessera chaos run: a netns cluster, the SDK workload, seeded nemeses, checks.

Started by tests/chaos/run.sh (which checks for root); see tests/chaos/README.md.

  run.sh --nodes 3 --duration 60 --nemesis partition,kill,pause --seed S

Layout of one run (run id R = this process's pid; subnet 10.77.<R % 200 + 20>.0/24):
  tsr-R-hub   namespace with bridge br0 (10.77.x.254); the workload and
              tessera-admin run here, so clients reach every node.
  tsr-R-nN    one namespace per node: eth0 (10.77.x.N) is one end of a veth
              pair whose other end (vN) is a port of br0 in the hub.
Nothing is created in the root namespace, and nothing is routed off it.
Faults: iptables DROP rules inside node namespaces (partitions), tc netem on a
node's eth0, signals to the node's pid (kill -9 / SIGSTOP / SIGCONT).
Cleanup (also on failure, Ctrl-C, SIGTERM): every process we started is killed
by pid, the namespaces are deleted by name. At start, namespaces tsr-<pid>-*
whose <pid> no longer runs (leftovers of a crashed run) are removed too, after
killing the processes inside them (`ip netns pids`).
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

PREFIX = "tsr-"
CLIENT_PORT = 7001
PEER_PORT = 7101
NEMESES = ("partition", "kill", "pause", "netem", "snapshot", "pause-isolated", "membership",
           "grow-shrink")


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(args, check=True, quiet=False, timeout=30):
    """Runs a command (a list) with a time bound; raises on failure if check."""
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    if not quiet and r.returncode != 0:
        log(f"warning: {' '.join(args)}: {r.stderr.strip()}")
    return r


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def cleanup_leftovers():
    """Removes namespaces of earlier runs whose harness no longer runs."""
    out = sh(["ip", "netns", "list"], check=False, quiet=True).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(r"^tsr-(\d+)-", name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and os.path.exists(f"/proc/{pid}"):
            continue  # a live run owns it
        pids = sh(["ip", "netns", "pids", name], check=False, quiet=True).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGCONT)
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh(["ip", "netns", "del", name], check=False, quiet=True)
        log(f"removed leftover namespace {name}")


class Cluster:
    def __init__(self, args, run_dir, nemlog):
        self.args = args
        self.founders = args.nodes  # started with --initial-cluster
        self.slots = args.nodes + args.spares  # namespaces, addresses, certificates
        self.members = list(range(1, args.nodes + 1))  # in the cluster now
        self.run_id = os.getpid()
        self.subnet = f"10.77.{self.run_id % 200 + 20}"
        self.hub = f"{PREFIX}{self.run_id}-hub"
        self.run_dir = run_dir
        self.nemlog = nemlog
        self.procs = {}  # node -> Popen
        self.paused = set()
        self.peer_isolated = set()  # nodes with isolate_peer_port rules
        self.namespaces = []
        self.logs = {}
        self.has_netem = False

    def ns(self, i):
        return f"{PREFIX}{self.run_id}-n{i}"

    def ip(self, i):
        return f"{self.subnet}.{i}"

    def endpoints(self):
        return ",".join(f"{self.ip(i)}:{CLIENT_PORT}" for i in self.members)

    # ---- network -------------------------------------------------------
    def create_network(self):
        hub = self.hub
        sh(["ip", "netns", "add", hub])
        self.namespaces.append(hub)
        sh(["ip", "-n", hub, "link", "set", "lo", "up"])
        sh(["ip", "-n", hub, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", hub, "addr", "add", f"{self.subnet}.254/24", "dev", "br0"])
        sh(["ip", "-n", hub, "link", "set", "br0", "up"])
        for i in range(1, self.slots + 1):
            ns = self.ns(i)
            sh(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            # Both ends are created inside the namespaces: never in the root one.
            sh(["ip", "-n", hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
                "netns", ns])
            sh(["ip", "-n", hub, "link", "set", f"v{i}", "master", "br0"])
            sh(["ip", "-n", hub, "link", "set", f"v{i}", "up"])
            sh(["ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0"])
            sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        self.probe_netem()
        log(f"network: hub {hub}, nodes {self.ns(1)}..{self.ns(self.slots)}, {self.subnet}.0/24")

    def nsexec(self, ns, cmd, **kw):
        return ["ip", "netns", "exec", ns] + cmd

    # ---- processes -----------------------------------------------------
    def cluster_flag(self):
        return ",".join(f"{i}={self.ip(i)}:{CLIENT_PORT}/{self.ip(i)}:{PEER_PORT}"
                        for i in range(1, self.founders + 1))

    def make_certs(self):
        """Certificates of every slot (naming its address, for the client port
        too) and, with --tls, of user root; made once by deploy/gen-certs.sh."""
        certs = os.path.join(self.run_dir, "certs")
        if not getattr(self, "_certs_fresh", False):
            # An earlier run's certificates name an earlier run's addresses.
            shutil.rmtree(certs, ignore_errors=True)
            self._certs_fresh = True
        script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), "deploy", "gen-certs.sh")
        env = dict(os.environ,
                   TESSERA_CERT_HOSTS=",".join(self.ip(i) for i in range(1, self.slots + 1)))
        subprocess.run([script, certs, *map(str, range(1, self.slots + 1))], check=True, env=env)
        if self.args.tls:
            subprocess.run([script, certs, "--user", "root"], check=True)
        return certs

    def node_tls_flags(self, i):
        """Member i's peer-TLS flags, and with --tls its client-port TLS flags."""
        certs = self.make_certs()
        flags = [f"--peer-cert={certs}/node-{i}.crt", f"--peer-key={certs}/node-{i}.key",
                 f"--peer-ca={certs}/ca.crt"]
        if self.args.tls:
            flags += [f"--tls-cert={certs}/node-{i}.crt", f"--tls-key={certs}/node-{i}.key",
                      f"--tls-ca={certs}/ca.crt"]
        return flags

    def enable_auth(self):
        """With --tls: user root (signing in with its certificate, which every
        client here presents) holds role root, and auth is enabled."""
        for args in (["user", "add", "root", "--no-password"], ["user", "grant-role", "root", "root"],
                     ["auth", "enable"]):
            r = self.cli(args, timeout=60)
            if r is None or r.returncode != 0:
                raise RuntimeError(f"tessera {' '.join(args)} failed: "
                                   f"{r.stderr.strip() if r is not None else 'timed out'}")
        # Each node follows the metadata group on its own (within ~100 ms).
        for _ in range(100):
            r = self.cli(["auth", "status"])
            if r is not None and "auth enabled; you are root" in r.stdout:
                return
            time.sleep(0.1)
        raise RuntimeError("auth did not come on in 10 s")

    def start(self, i):
        d = os.path.join(self.run_dir, "data", f"n{i}")
        os.makedirs(d, exist_ok=True)
        logf = open(os.path.join(self.run_dir, "logs", f"node{i}.log"), "a")
        logf.write(f"==== start {time.strftime('%H:%M:%S')} ====\n")
        logf.flush()
        # Founders bootstrap from --initial-cluster; a node added later
        # (add_node) joins through the members (and keeps --join on restarts).
        membership = ([f"--initial-cluster={self.cluster_flag()}"] if i <= self.founders else
                      ["--join=" + ",".join(f"{self.ip(m)}:{CLIENT_PORT}"
                                           for m in self.members if m != i)])
        cmd = [self.args.server, f"--node-id={i}", f"--data-dir={d}", *membership,
               f"--shards={self.args.shards}",
               f"--tick-ms={self.args.tick_ms}", f"--election-ticks={self.args.election_ticks}",
               f"--snapshot-interval-entries={self.args.snapshot_interval}",
               "--drain-timeout-ms=2000", *self.node_tls_flags(i)]
        # `ip netns exec` execs the command: the pid is the server's.
        self.procs[i] = subprocess.Popen(self.nsexec(self.ns(i), cmd), stdout=logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()
        self.paused.discard(i)

    def alive(self, i):
        p = self.procs.get(i)
        return p is not None and p.poll() is None

    def signal(self, i, sig):
        p = self.procs.get(i)
        if p is not None and p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass

    def kill9(self, i):
        self.signal(i, signal.SIGKILL)
        p = self.procs.get(i)
        if p is not None:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log(f"warning: node {i} (pid {p.pid}) did not die")
        self.paused.discard(i)

    def wipe(self, i):
        """kill -9 node i and delete its data directory (a lost disk)."""
        self.kill9(i)
        shutil.rmtree(os.path.join(self.run_dir, "data", f"n{i}"), ignore_errors=True)

    def admin_status(self, wait_ms=0, timeout=20):
        cmd = self.nsexec(self.hub, [self.args.admin, "status", f"--endpoints={self.endpoints()}"] +
                          ([f"--wait-ms={wait_ms}"] if wait_ms else []))
        try:
            return sh(cmd, check=False, quiet=True, timeout=timeout + wait_ms / 1000)
        except subprocess.TimeoutExpired:
            return None

    def cli(self, args, timeout=20):
        """The `tessera` CLI against the cluster, from the hub namespace."""
        cmd = self.nsexec(self.hub, [self.args.cli, f"--endpoints={self.endpoints()}",
                                     "--timeout=5s", *args])
        try:
            return sh(cmd, check=False, quiet=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def cluster_status(self):
        """`tessera cluster status -o json`, parsed; None if it did not answer."""
        r = self.cli(["-o", "json", "cluster", "status"])
        if r is None or not r.stdout:
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            return None

    def wait_ready(self, wait_s):
        r = self.admin_status(wait_ms=int(wait_s * 1000), timeout=30)
        return r is not None and r.returncode == 0

    def leader(self, rng):
        """The node leading the most shards (ties: lowest id), else a random live node."""
        r = self.admin_status(timeout=5)
        best, best_count = None, 0
        if r is not None:
            for m in re.finditer(r"node (\d+), epoch .* leading (\d+)", r.stdout):
                node, count = int(m.group(1)), int(m.group(2))
                if count > best_count:
                    best, best_count = node, count
        if best is None:
            best = rng.choice(self.members)
        return best

    # ---- faults --------------------------------------------------------
    def drop_from(self, i, sources):
        """Node i drops every packet from `sources` (node ids)."""
        for s in sorted(sources):
            sh(self.nsexec(self.ns(i), ["iptables", "-w", "-A", "INPUT", "-s", self.ip(s),
                                        "-j", "DROP"]))

    def heal_partitions(self):
        for i in range(1, self.slots + 1):
            sh(self.nsexec(self.ns(i), ["iptables", "-w", "-F", "INPUT"]), check=False)

    # Rules of isolate_peer_port: (chain, match) pairs, both directions.
    PEER_PORT_RULES = [(chain, flag) for chain in ("INPUT", "OUTPUT")
                       for flag in ("--dport", "--sport")]

    def isolate_peer_port(self, i):
        """Node i drops all traffic on the peer port, in and out (its own peer
        server and its connections to the others' peer servers); its client
        port stays reachable."""
        for chain, flag in self.PEER_PORT_RULES:
            sh(self.nsexec(self.ns(i), ["iptables", "-w", "-A", chain, "-p", "tcp", flag,
                                        str(PEER_PORT), "-j", "DROP"]))
        self.peer_isolated.add(i)

    def heal_peer_port(self, i):
        """Removes isolate_peer_port's rules of node i (one -D per rule added)."""
        for chain, flag in self.PEER_PORT_RULES:
            sh(self.nsexec(self.ns(i), ["iptables", "-w", "-D", chain, "-p", "tcp", flag,
                                        str(PEER_PORT), "-j", "DROP"]), check=False, quiet=True)
        self.peer_isolated.discard(i)

    def probe_netem(self):
        """Whether the kernel has sch_netem (some VMs and containers lack it)."""
        r = sh(self.nsexec(self.ns(1), ["tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                                        "delay", "1ms"]), check=False, quiet=True)
        sh(self.nsexec(self.ns(1), ["tc", "qdisc", "del", "dev", "eth0", "root"]), check=False,
           quiet=True)
        self.has_netem = r.returncode == 0
        if not self.has_netem:
            log("tc netem is not available in this kernel: the netem nemesis falls back to "
                "iptables random loss and tbf rate limits (no reordering)")

    def netem(self, i, spec):
        sh(self.nsexec(self.ns(i), ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem"] +
                       spec))

    def random_loss(self, i, probability):
        """Fallback without netem: drop outgoing packets at random (OUTPUT chain)."""
        sh(self.nsexec(self.ns(i), ["iptables", "-w", "-A", "OUTPUT", "-m", "statistic",
                                    "--mode", "random", "--probability", str(probability),
                                    "-j", "DROP"]))

    def rate_limit(self, i, rate):
        """Fallback without netem: a token bucket, so queues (and delay) build up."""
        sh(self.nsexec(self.ns(i), ["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
                                    "rate", rate, "burst", "8kbit", "latency", "300ms"]))

    def heal_netem(self):
        for i in range(1, self.slots + 1):
            sh(self.nsexec(self.ns(i), ["tc", "qdisc", "del", "dev", "eth0", "root"]),
               check=False, quiet=True)
            sh(self.nsexec(self.ns(i), ["iptables", "-w", "-F", "OUTPUT"]), check=False)

    def heal_all(self):
        for i in list(self.paused):
            self.signal(i, signal.SIGCONT)
        self.paused.clear()
        for i in list(self.peer_isolated):
            self.heal_peer_port(i)
        self.heal_partitions()
        self.heal_netem()

    # ---- membership ----------------------------------------------------
    def spare(self):
        """The next slot never used, or None."""
        used = set(self.procs) | set(self.members)
        free = [i for i in range(1, self.slots + 1) if i not in used]
        return free[0] if free else None

    def add_node(self, i):
        """`tessera cluster add-node`, then node i starts with --join. The
        CLI's one-line answer (or the error)."""
        r = self.cli(["cluster", "add-node", str(i), f"{self.ip(i)}:{CLIENT_PORT}",
                      f"{self.ip(i)}:{PEER_PORT}"])
        answer = (r.stdout or r.stderr or "").strip().splitlines()[:1] if r else ["timed out"]
        if r is None or r.returncode != 0:
            return False, " ".join(answer)
        self.members.append(i)
        self.start(i)
        return True, " ".join(answer)

    def remove_node(self, i, deadline):
        """`tessera cluster remove-node`, then waits (until `deadline`) for
        node i to hand its replicas over and exit by itself."""
        r = self.cli(["cluster", "remove-node", str(i)])
        answer = (r.stdout or r.stderr or "").strip().splitlines()[:1] if r else ["timed out"]
        if r is None or r.returncode != 0:
            return False, " ".join(answer)
        p = self.procs.get(i)
        while p is not None and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if p is not None and p.poll() is None:
            return False, f"node {i} still runs {' '.join(answer)}"
        self.members.remove(i)
        return True, f"node {i} exited with status {p.returncode if p else '?'}"

    def balanced(self, status):
        """Whether the map has exactly the members, nothing moving, splitting
        or being replaced, every group whole, replicas spread within one."""
        if status is None:
            return False
        members = sorted(m["id"] for m in status.get("members", []))
        if members != sorted(self.members) or status.get("replaced") != []:
            return False
        meta = status.get("meta", {})
        if "moving" in meta:
            return False
        held = {m: 0 for m in members}
        for sh in status["shards"]:
            if "moving" in sh or "splitting_at" in sh:
                return False
            if len(sh["replicas"]) != status.get("replication"):
                return False
            for r in sh["replicas"]:
                held[r["node"]] = held.get(r["node"], 0) + 1
        return max(held.values()) - min(held.values()) <= 1

    def wait_balanced(self, deadline):
        while time.monotonic() < deadline:
            if self.balanced(self.cluster_status()):
                return True
            time.sleep(0.5)
        return False

    # ---- teardown ------------------------------------------------------
    def destroy(self):
        for i, p in self.procs.items():
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    log(f"warning: node {i} (pid {p.pid}) did not exit")
        for ns in reversed(self.namespaces):
            # Anything else still inside (e.g. a tessera-admin) is ours too.
            for pid in sh(["ip", "netns", "pids", ns], check=False, quiet=True).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh(["ip", "netns", "del", ns], check=False, quiet=True)
        self.namespaces = []


class Nemesis:
    """Seeded schedule: pick a fault from the enabled set, hold it, heal."""

    def __init__(self, cluster, kinds, rng, logf):
        self.c = cluster
        self.kinds = kinds
        self.rng = rng
        self.logf = logf
        self.counts = {}
        self.t0 = time.monotonic()

    def note(self, msg):
        line = f"{time.monotonic() - self.t0:8.3f}s {time.strftime('%H:%M:%S')} {msg}"
        self.logf.write(line + "\n")
        self.logf.flush()
        log("nemesis: " + msg)

    def target(self):
        if self.rng.random() < 0.5:
            return self.c.leader(self.rng), "leader"
        return self.rng.choice(self.c.members), "random"

    def sleep(self, seconds, deadline):
        time.sleep(max(0.0, min(seconds, deadline - time.monotonic())))

    def run(self, deadline):
        rng = self.rng
        while time.monotonic() < deadline - 1:
            nodes = list(self.c.members)
            n = len(nodes)
            self.sleep(rng.uniform(1.0, 4.0), deadline)  # quiet gap
            if time.monotonic() >= deadline - 1:
                break
            kind = rng.choice(self.kinds)
            hold = rng.uniform(2.0, 10.0)
            if kind == "kill":
                node, how = self.target()
                sub = f"kill-{how}"
                self.note(f"start {sub}: kill -9 node {node}")
                self.c.kill9(node)
                self.sleep(hold, deadline)
                self.c.start(node)
                self.note(f"end {sub}: restarted node {node}")
            elif kind == "pause":
                node, how = self.target()
                sub = f"pause-{how}"
                self.note(f"start {sub}: SIGSTOP node {node}")
                self.c.signal(node, signal.SIGSTOP)
                self.c.paused.add(node)
                self.sleep(hold, deadline)
                self.c.signal(node, signal.SIGCONT)
                self.c.paused.discard(node)
                self.note(f"end {sub}: SIGCONT node {node}")
            elif kind == "pause-isolated":
                if not self.pause_isolated(deadline):
                    break
            elif kind == "membership":
                self.membership(hold, deadline)
            elif kind == "partition":
                sub, desc = self.partition()
                self.note(f"start partition-{sub}: {desc}")
                self.sleep(hold, deadline)
                self.c.heal_partitions()
                self.note(f"end partition-{sub}: healed")
            elif kind == "netem" and not self.c.has_netem:
                sub = rng.choice(["loss", "slow"])
                victims = rng.sample(nodes, rng.randint(1, n))
                p = rng.choice([0.05, 0.2, 0.4])
                rate = rng.choice(["64kbit", "256kbit", "1mbit"])
                what = f"drop {p:.0%} of sent packets" if sub == "loss" else f"tbf rate {rate}"
                self.note(f"start netem-{sub} (fallback): nodes {victims}: {what}")
                for v in victims:
                    if sub == "loss":
                        self.c.random_loss(v, p)
                    else:
                        self.c.rate_limit(v, rate)
                self.sleep(hold, deadline)
                self.c.heal_netem()
                self.note(f"end netem-{sub}: removed")
            elif kind == "netem":
                sub, spec = rng.choice([
                    ("delay", ["delay", "100ms", "50ms", "distribution", "normal"]),
                    ("loss", ["loss", "20%", "25%"]),
                    ("reorder", ["delay", "30ms", "reorder", "25%", "50%"]),
                    ("mixed", ["delay", "50ms", "30ms", "loss", "5%", "reorder", "10%"]),
                ])
                victims = rng.sample(nodes, rng.randint(1, n))
                self.note(f"start netem-{sub}: nodes {victims}: {' '.join(spec)}")
                for v in victims:
                    self.c.netem(v, spec)
                self.sleep(hold, deadline)
                self.c.heal_netem()
                self.note(f"end netem-{sub}: removed")
            elif kind == "snapshot":
                # Crash during snapshot transfer: isolate a follower-to-be long
                # enough that the leader compacts past it (small
                # --snapshot-interval-entries), heal so it catches up by
                # snapshot, and kill -9 it (or the leader) a moment later.
                node = rng.choice(nodes)
                self.note(f"start snapshot: isolate node {node} to make it lag")
                for other in nodes:
                    if other != node:
                        self.c.drop_from(other, [node])
                self.c.drop_from(node, [o for o in nodes if o != node])
                self.sleep(hold + 3, deadline)
                self.c.heal_partitions()
                delay = rng.uniform(0.05, 1.5)
                time.sleep(delay)
                victim = node if rng.random() < 0.7 else self.c.leader(rng)
                self.note(f"snapshot: healed; {delay:.2f}s later kill -9 node {victim} "
                          f"({'lagging' if victim == node else 'leader'})")
                self.c.kill9(victim)
                self.sleep(rng.uniform(1.0, 4.0), deadline + 5)
                self.c.start(victim)
                self.note(f"end snapshot: restarted node {victim}")
                sub = "snapshot"
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def membership(self, hold, deadline):
        """The cluster's layout changes under the load, sometimes with a crash.

        Splits a random shard (`tessera cluster split-shard`), or, when some
        node lacks a replica of a shard (more nodes than replicas), moves
        one of its replicas there (`move-replica`); half the time it then
        kill -9s a node that takes part (the shard's leader, or the move's
        source or target) 0.1-1.5 s later and restarts it after `hold`. The
        scheduler finishes the change whatever the crash hit. A quarter of
        the time, when every group is whole (no replacement, move or missing
        replica, every node up), it wipes a node instead: kill -9, data
        directory deleted, restarted empty; the cluster replaces its lost
        replicas (one lost disk at a time, as 3 replicas allow).
        """
        rng = self.rng
        status = self.c.cluster_status()
        if status is None:
            self.note("membership: skipped (no cluster status)")
            return
        shards = status["shards"]
        if self.wipe_allowed(status) and rng.random() < 0.25:
            victim = rng.choice(self.c.members)
            self.note(f"start membership-wipe: kill -9 node {victim}, delete its data directory, "
                      f"restart it empty")
            self.c.wipe(victim)
            self.c.start(victim)
            self.sleep(hold, deadline)
            self.note(f"end membership-wipe: node {victim}")
            return
        spare = self.c.spare()
        if spare is not None and rng.random() < 0.4:
            ok, answer = self.c.add_node(spare)
            self.note(f"start membership-add: node {spare}: {answer}")
            self.sleep(hold, deadline)
            self.note(f"end membership-add: node {spare}")
            return
        if len(self.c.members) > 3 and self.wipe_allowed(status) and rng.random() < 0.4:
            victim = rng.choice(self.c.members)
            self.note(f"start membership-remove: node {victim}")
            ok, answer = self.c.remove_node(victim, time.monotonic() + 120)
            if not ok:
                raise RuntimeError(f"membership-remove: node {victim} did not leave in 120 s: "
                                   f"{answer}")
            self.note(f"end membership-remove: {answer}")
            return
        movable = [(sh, n) for sh in shards for n in self.c.members
                   if n not in [r["node"] for r in sh["replicas"]] and "moving" not in sh]
        if movable and rng.random() < 0.5:
            sh, to = rng.choice(movable)
            voters = [r["node"] for r in sh["replicas"]]
            frm = rng.choice(voters)
            sub = "move"
            desc = f"shard {sh['id']} from node {frm} to node {to}"
            involved = [frm, to] + [r["node"] for r in sh["replicas"] if r.get("role") == "leader"]
            args = ["move-replica", str(sh["id"]), str(frm), str(to)]
        else:
            sh = rng.choice(shards)
            sub = "split"
            desc = f"shard {sh['id']}"
            involved = [r["node"] for r in sh["replicas"] if r.get("role") == "leader"] or [
                r["node"] for r in sh["replicas"]]
            args = ["split-shard", str(sh["id"])]
        r = self.c.cli(["cluster", *args])
        answer = (r.stdout or r.stderr or "").strip().splitlines()[:1] if r else ["timed out"]
        self.note(f"start membership-{sub}: {desc}: {' '.join(answer)}")
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0.1, 1.5))
            victim = rng.choice(involved)
            self.note(f"membership-{sub}: kill -9 node {victim} during it")
            self.c.kill9(victim)
            self.sleep(hold, deadline)
            self.c.start(victim)
            self.note(f"end membership-{sub}: restarted node {victim}")
        else:
            self.sleep(hold, deadline)
            self.note(f"end membership-{sub}")

    def grow_shrink(self, deadline):
        """The scripted elastic run: adds every spare node in turn, each time
        waiting for a balanced map, then removes a random member and waits
        for it to exit and the map to balance again. Raises if a step does
        not finish before `deadline`."""
        while (spare := self.c.spare()) is not None:
            ok, answer = self.c.add_node(spare)
            self.note(f"start grow: add node {spare}: {answer}")
            if not ok:
                raise RuntimeError(f"grow: add-node {spare} failed: {answer}")
            if not self.c.wait_balanced(deadline):
                raise RuntimeError(f"grow: not balanced after adding node {spare}")
            self.note(f"end grow: node {spare} added, map balanced, members {self.c.members}")
            self.counts["grow"] = self.counts.get("grow", 0) + 1
        victim = self.rng.choice(self.c.members)
        self.note(f"start shrink: remove node {victim}")
        ok, answer = self.c.remove_node(victim, deadline)
        if not ok:
            raise RuntimeError(f"shrink: node {victim} did not leave: {answer}")
        if not self.c.wait_balanced(deadline):
            raise RuntimeError(f"shrink: not balanced after removing node {victim}")
        self.note(f"end shrink: {answer}; map balanced, members {self.c.members}")
        self.counts["shrink"] = 1

    def wipe_allowed(self, status):
        """Whether every group is whole: safe to lose one more disk."""
        meta = status.get("meta", {})
        n = len(status.get("members", []))
        meta_size = min(5, n) if min(5, n) % 2 else min(5, n) - 1
        return (status.get("replaced") == [] and "moving" not in meta and
                len(meta.get("replicas", [])) >= meta_size and
                all(m.get("up") for m in status.get("members", [])) and
                all("moving" not in sh and len(sh["replicas"]) == status.get("replication") and
                    all(r.get("role") != "down" for r in sh["replicas"]) for sh in status["shards"]))

    def pause_isolated(self, deadline):
        """A stalled leader that resumes before it hears of its successors.

        Cuts the peer port of the node leading the most shards (both
        directions; clients still reach it), SIGSTOPs it for 2.5-4 s (more
        than one election timeout, so the others elect new leaders and
        acknowledge new writes), SIGCONTs it while its peer links are still
        cut, so for a moment it believes it still leads (and, with a lease
        counted in ticks, that its lease still holds), and heals 2 s later.
        """
        stop_s = self.rng.uniform(2.5, 4.0)
        if time.monotonic() + stop_s + 2.5 > deadline:
            # The clients stop at the deadline: a round that ends after it
            # would resume the node with nobody reading.
            self.note(f"pause-isolated: skipped ({stop_s:.2f}s + 2s do not fit before the end)")
            return False
        node = self.c.leader(self.rng)
        self.note(f"start pause-isolated: cut peer port {PEER_PORT} of node {node} (leader), "
                  f"both directions")
        self.c.isolate_peer_port(node)
        self.c.signal(node, signal.SIGSTOP)
        self.c.paused.add(node)
        self.note(f"pause-isolated: SIGSTOP node {node} for {stop_s:.2f}s")
        time.sleep(stop_s)  # not cut short by the deadline: the SIGCONT is the point
        self.c.signal(node, signal.SIGCONT)
        self.c.paused.discard(node)
        self.note(f"pause-isolated: SIGCONT node {node}, peer port still cut")
        time.sleep(2.0)
        self.c.heal_peer_port(node)
        self.note(f"end pause-isolated: healed peer port of node {node}")
        return True

    def partition(self):
        rng = self.rng
        nodes = list(self.c.members)
        n = len(nodes)
        sub = rng.choice(["isolate-leader", "majority-minority", "bridge", "one-way"])
        if sub == "isolate-leader":
            lead = self.c.leader(rng)
            side_a, side_b = [lead], [o for o in nodes if o != lead]
        elif sub == "majority-minority" or (sub == "bridge" and n < 3):
            sub = "majority-minority"
            shuffled = rng.sample(nodes, n)
            side_a, side_b = shuffled[:n // 2], shuffled[n // 2:]
        if sub in ("isolate-leader", "majority-minority"):
            for a in side_a:
                self.c.drop_from(a, side_b)
            for b in side_b:
                self.c.drop_from(b, side_a)
            return sub, f"{sorted(side_a)} | {sorted(side_b)}"
        if sub == "bridge":
            # Two halves that only the bridge node sees both of.
            shuffled = rng.sample(nodes, n)
            bridge = shuffled[0]
            rest = shuffled[1:]
            half_a, half_b = rest[:len(rest) // 2], rest[len(rest) // 2:]
            for a in half_a:
                self.c.drop_from(a, half_b)
            for b in half_b:
                self.c.drop_from(b, half_a)
            return sub, f"{sorted(half_a)} <-> {bridge} <-> {sorted(half_b)}"
        # one-way: the victim hears nobody, but the others still hear it.
        victim = self.c.leader(rng) if rng.random() < 0.5 else rng.choice(nodes)
        self.c.drop_from(victim, [o for o in nodes if o != victim])
        return sub, f"node {victim} drops all incoming peer traffic (its sends still arrive)"


def main():
    ap = argparse.ArgumentParser(description="Tessera chaos run (see tests/chaos/README.md)")
    ap.add_argument("--nodes", type=int, default=3, choices=[3, 5])
    ap.add_argument("--duration", type=int, default=60, help="seconds of workload + nemesis")
    ap.add_argument("--nemesis", default="partition,kill,pause",
                    help=f"comma-separated subset of {','.join(NEMESES)}, or all (every one "
                         "but grow-shrink, which runs alone), or none")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--bin-dir", required=True, help="build dir with the binaries")
    ap.add_argument("--out", default=None, help="artifacts folder (default: ./chaos-artifacts/...)")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--bank-threads", type=int, default=2)
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--tick-ms", type=int, default=50)
    ap.add_argument("--election-ticks", type=int, default=20)
    ap.add_argument("--snapshot-interval", type=int, default=500)
    ap.add_argument("--op-timeout-ms", type=int, default=2000)
    ap.add_argument("--think-ms", type=int, default=20,
                    help="each client waits a random 0..N ms between calls")
    ap.add_argument("--read-consistency", default="linearizable",
                    choices=["linearizable", "lease"],
                    help="consistency of the register gets (lease: served from the leader's "
                         "lease; still checked as linearizable)")
    ap.add_argument("--clients-per-thread", type=int, default=1,
                    help="independent SDK clients per register worker, a random one per call "
                         "(many mostly idle clients keep stale leader caches)")
    ap.add_argument("--testing-stale-gets", action="store_true",
                    help="NEGATIVE CONTROL: stale reads recorded as gets; expects a violation")
    ap.add_argument("--keep", action="store_true", help="also keep the data directories of the nodes")
    ap.add_argument("--spares", type=int, default=0, choices=range(0, 5),
                    help="extra node slots (namespace, address, certificate) that the "
                         "membership and grow-shrink nemeses add as new members")
    ap.add_argument("--bench-clients", type=int, default=0,
                    help="also run tessera-bench (mixed, half puts, --verify --watch --locks=3) "
                         "with this many clients for the whole run: a key whose version is not "
                         "its acknowledged writes (plus at most its failed ones), a write a "
                         "prefix watcher saw twice or never, or two lock holders at once (a "
                         "fenced write refused while its holder's lease was live) or a leased "
                         "key missing while its lease lives or left after it ended, fails the "
                         "run, and with grow-shrink any client error does too")
    ap.add_argument("--bench-keys", type=int, default=2000, help="tessera-bench's key space")
    ap.add_argument("--tls", action="store_true",
                    help="client port TLS-only and auth enabled; every client presents user "
                         "root's certificate")
    args = ap.parse_args()

    if args.testing_stale_gets and args.read_consistency != "linearizable":
        ap.error("--testing-stale-gets replaces the gets' consistency: drop --read-consistency")
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "little")
    kinds = [] if args.nemesis == "none" else (
        [k for k in NEMESES if k != "grow-shrink"] if args.nemesis == "all"
        else args.nemesis.split(","))
    for k in kinds:
        if k not in NEMESES:
            ap.error(f"unknown nemesis {k!r} (known: {', '.join(NEMESES)})")
    if "grow-shrink" in kinds and (kinds != ["grow-shrink"] or args.spares < 1):
        ap.error("grow-shrink runs alone (not with --nemesis all or others) and needs --spares")
    bindir = os.path.abspath(args.bin_dir)
    args.server = os.path.join(bindir, "server", "tessera-server")
    args.admin = os.path.join(bindir, "server", "tessera-admin")
    args.workload = os.path.join(bindir, "tests", "chaos", "tessera-chaos-workload")
    args.check = os.path.join(bindir, "tests", "chaos", "tessera-check")
    args.cli = os.path.join(bindir, "client", "tessera")
    args.bench = os.path.join(bindir, "client", "bench", "tessera-bench")
    for b in (args.server, args.admin, args.workload, args.check, args.cli, args.bench):
        if not os.access(b, os.X_OK):
            print(f"chaos: missing binary {b} (build it first)", file=sys.stderr)
            return 2

    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.abspath(args.out or os.path.join(
        "chaos-artifacts", f"{stamp}-n{args.nodes}-seed{args.seed}"))
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    log(f"seed {args.seed}, nodes {args.nodes}, duration {args.duration}s, "
        f"nemesis {','.join(kinds) or 'none'}, {args.read_consistency} reads, "
        f"artifacts {run_dir}")
    with open(os.path.join(run_dir, "command.txt"), "w") as f:
        f.write(" ".join(sys.argv) + f"\n# seed {args.seed}\n")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    cleanup_leftovers()
    rng = random.Random(args.seed)
    nemlog = open(os.path.join(run_dir, "nemesis.log"), "w")
    cluster = Cluster(args, run_dir, nemlog)
    workload = None
    verdict = "ERROR"
    history = os.path.join(run_dir, "history.txt")
    gate = os.path.join(run_dir, "final.gate")
    nem = None
    bench = None
    bench_out = os.path.join(run_dir, "bench.json")
    try:
        cluster.create_network()
        if args.tls:
            # Every client started from here (workload, bench, CLI, admin)
            # speaks TLS and signs in as root with its certificate.
            certs = cluster.make_certs()
            os.environ.update(TESSERA_TLS_CA=f"{certs}/ca.crt",
                              TESSERA_TLS_CERT=f"{certs}/user-root.crt",
                              TESSERA_TLS_KEY=f"{certs}/user-root.key")
        for i in range(1, args.nodes + 1):
            cluster.start(i)
        if not cluster.wait_ready(60):
            raise RuntimeError("the cluster did not become ready in 60 s")
        if args.tls:
            cluster.enable_auth()
            log("client TLS on, auth enabled (clients sign in as root with a certificate)")
        log("cluster ready")
        wl_log = open(os.path.join(run_dir, "logs", "workload.log"), "w")
        wcmd = [args.workload, f"--endpoints={cluster.endpoints()}", f"--history={history}",
                f"--duration_s={args.duration}", f"--threads={args.threads}",
                f"--bank_threads={args.bank_threads}", f"--keys={args.keys}",
                f"--op_timeout_ms={args.op_timeout_ms}", f"--final_gate={gate}",
                f"--think_ms={args.think_ms}", f"--seed={args.seed}",
                f"--consistency={args.read_consistency}",
                f"--clients_per_thread={args.clients_per_thread}"]
        if args.testing_stale_gets:
            wcmd.append("--testing_stale_gets")
        workload = subprocess.Popen(cluster.nsexec(cluster.hub, wcmd), stdout=wl_log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        # The workload prints "started" after the bank accounts exist.
        t_start = time.monotonic()
        while time.monotonic() - t_start < 90:
            with open(os.path.join(run_dir, "logs", "workload.log")) as f:
                if "workload: started" in f.read():
                    break
            if workload.poll() is not None:
                raise RuntimeError("the workload exited early (logs/workload.log)")
            time.sleep(0.2)
        else:
            raise RuntimeError("the workload did not start in 90 s")
        if args.bench_clients > 0:
            bcmd = [args.bench, f"--endpoints={cluster.endpoints()}",
                    f"--clients={args.bench_clients}", f"--key-space={args.bench_keys}",
                    "--fill", "--verify", "--watch", "--locks=3", "--read-ratio=0.5",
                    f"--duration={args.duration}s",
                    f"--seed={args.seed}", "--json-only", "mixed"]
            with open(bench_out, "w") as out, open(os.path.join(run_dir, "logs", "bench.log"),
                                                   "w") as err:
                bench = subprocess.Popen(cluster.nsexec(cluster.hub, bcmd), stdout=out,
                                         stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + args.duration
        nem = Nemesis(cluster, kinds, rng, nemlog)
        if kinds == ["grow-shrink"]:
            nem.grow_shrink(deadline)
        elif kinds:
            nem.run(deadline)
        time.sleep(max(0.0, deadline - time.monotonic()))
        if bench is not None:
            # Its last reads (--verify) before the restart below.
            try:
                bench.wait(timeout=180)
            except subprocess.TimeoutExpired:
                raise RuntimeError("tessera-bench did not finish (logs/bench.log)")
        nem.note("heal: all faults removed; kill -9 and restart every node")
        cluster.heal_all()
        for i in cluster.members:
            cluster.kill9(i)
        for i in cluster.members:
            cluster.start(i)
        if not cluster.wait_ready(90):
            raise RuntimeError("the cluster did not recover after heal + restart in 90 s")
        nem.note("healed: every shard has a leader; final reads")
        open(gate, "w").close()
        try:
            rc = workload.wait(timeout=args.op_timeout_ms / 1000 * 2 + 200)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the workload did not finish its final reads")
        if rc != 0:
            raise RuntimeError(f"the workload failed (exit {rc}, logs/workload.log)")
        check_out = os.path.join(run_dir, "check.txt")
        with open(check_out, "w") as f:
            r = subprocess.run([args.check, history], stdout=f, stderr=subprocess.STDOUT,
                               timeout=1800)
        with open(check_out) as f:
            text = f.read()
        verdict = {0: "OK", 1: "VIOLATION"}.get(r.returncode, "UNKNOWN")
        if bench is not None:
            # Its JSON line: errors and --verify's verdict.
            with open(bench_out) as f:
                lines = f.read().strip().splitlines()
            result = json.loads(lines[-1]) if lines else {}
            log(f"tessera-bench: exit {bench.returncode}, {result.get('ops', 0)} ops, "
                f"{result.get('errors', '?')} errors {result.get('errors_by_code', {})}, "
                f"{result.get('verify_keys', '?')} keys verified, "
                f"{result.get('verify_acked_writes', '?')} acknowledged writes, "
                f"{result.get('verify_mismatches', '?')} mismatches, "
                f"{result.get('verify_unreadable', '?')} unreadable, "
                f"watch: {result.get('watch_events', '?')} events, "
                f"{result.get('watch_mismatches', '?')} lost or repeated, "
                f"{result.get('watch_restarts', '?')} restarts, "
                f"locks: {result.get('lock_acquisitions', '?')} acquired, "
                f"{result.get('lock_fenced_writes', '?')} fenced writes, "
                f"{result.get('lock_refused', '?')} refused after a lost lease, "
                f"{result.get('lock_sessions_lost', '?')} sessions lost, "
                f"{result.get('lock_violations', '?')} violations, "
                f"p99 {result.get('p99_ms', '?')} ms")
            # Under faults clients see (kills, partitions) a request may fail
            # (its write's outcome unknown, which --verify allows for); with
            # grow-shrink none may.
            strict = kinds == ["grow-shrink"]
            if (bench.returncode != 0 or result.get("verify_mismatches") != 0 or
                    result.get("watch_mismatches") != 0 or
                    result.get("lock_violations") != 0 or
                    result.get("verify_unreadable") != 0 or
                    (strict and (result.get("errors") != 0 or result.get("fill_errors") != 0))):
                log("tessera-bench saw a version mismatch" + (" or an error" if strict else "") +
                    " (bench.json, logs/bench.log)")
                if verdict == "OK":
                    verdict = "VIOLATION"
        summary = [l for l in text.splitlines()
                   if l.startswith(("history", "result", "linear", "durab", "bank", "  "))]
        print("\n".join(summary[:40]), flush=True)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(nem.counts.items())) or "none"
        log(f"nemesis counts: {counts}")
        with open(os.path.join(run_dir, "summary.txt"), "w") as f:
            f.write(f"seed {args.seed}\nverdict {verdict}\nnemesis {counts}\n")
    except Interrupted as e:
        log(f"interrupted ({e})")
        verdict = "INTERRUPTED"
    except Exception as e:  # noqa: BLE001 -- any failure keeps the artifacts
        log(f"error: {e}")
        verdict = "ERROR"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in (workload, bench):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        cluster.destroy()
        nemlog.close()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    expect_violation = args.testing_stale_gets
    passed = (verdict == "VIOLATION") if expect_violation else (verdict == "OK")
    if not args.keep:
        # Node data is large; logs, history, check output and nemesis log stay.
        shutil.rmtree(os.path.join(run_dir, "data"), ignore_errors=True)
    log(f"result: {verdict}{' (expected: negative control)' if expect_violation else ''}; "
        f"seed {args.seed}; artifacts {run_dir}")
    if verdict in ("ERROR", "INTERRUPTED"):
        return 3
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
