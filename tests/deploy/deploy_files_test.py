#!/usr/bin/python3
"""Static checks of deploy/: what can be verified without Docker or Kubernetes.

- every YAML file parses (Debian's python3-yaml); the dashboard JSON parses;
- `promtool check config` accepts both Prometheus configurations;
- docker-compose.yml and k8s/tessera.yaml pass only flags that
  `tessera-server --help` lists, and their ports, probes, scrape targets and
  --initial-cluster agree with those flags;
- TLS: every node runs the peer port with mutual TLS, the client port with
  --tls-cert/--tls-key/--tls-ca (its own node certificate) and
  --metrics-tls; every file those flags name lies on a volume mounted in its
  container (Kubernetes: a secret volume; Compose: the volume the certs
  service fills with gen-certs.sh, each node's certificate naming its
  hostname); health checks, probes and Prometheus use https (with the CA
  file, mounted in Prometheus) exactly when the nodes use --metrics-tls;
- the Dockerfile's runtime packages exist in the apt cache and provide every
  shared library tessera-server links directly (readelf NEEDED -> dpkg -S),
  its build stage installs every library package of deploy/install-deps.sh,
  and it runs as the non-root uid the Kubernetes securityContext expects;
- --node-id-from-hostname: a hostname ending in -2 makes node 3 (checked in a
  private UTS namespace when unshare is available).

Usage: deploy_files_test.py SOURCE_DIR SERVER_BIN_DIR
"""
import json
import os
import re
import shutil
import subprocess
import sys

import yaml

SRC, BIN = sys.argv[1], sys.argv[2]
DEPLOY = os.path.join(SRC, "deploy")
SERVER = os.path.join(BIN, "tessera-server")
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def load_yaml(*parts):
    with open(os.path.join(DEPLOY, *parts)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def server_flags():
    p = subprocess.run([SERVER, "--help"], capture_output=True, text=True, timeout=10)
    check(p.returncode == 0, f"tessera-server --help exited {p.returncode}")
    flags = set(re.findall(r"--([a-z][a-z0-9-]*)", p.stdout))
    check({"node-id", "metrics-listen", "node-id-from-hostname"} <= flags,
          f"--help lacks expected flags: {sorted(flags)}")
    return flags


def parse_args(args, flags, where):
    """--name=value list -> dict; every name must be a server flag."""
    out = {}
    for a in args:
        m = re.fullmatch(r"--([a-z0-9-_]+)=(.*)", a)
        if not check(m is not None, f"{where}: argument '{a}' is not --flag=value"):
            continue
        name = m.group(1).replace("_", "-")
        check(name in flags, f"{where}: --{name} is not a tessera-server flag")
        out[name] = m.group(2)
    return out


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def check_promtool():
    if not check(shutil.which("promtool") is not None, "promtool not installed"):
        return
    for path in ["prometheus/prometheus.yml", "docker/prometheus.yml"]:
        p = subprocess.run(["promtool", "check", "config", os.path.join(DEPLOY, path)],
                           capture_output=True, text=True, timeout=30)
        check(p.returncode == 0, f"promtool check config {path}:\n{p.stdout}{p.stderr}")


def under(path, mounts):
    """The mount point in `mounts` that holds `path`, or None."""
    return next((m for m in mounts if path.startswith(m.rstrip("/") + "/")), None)


def check_tls(args, mounts, where, name):
    """Peer port: mutual TLS; client port: TLS only; metrics: HTTPS. Every
    file the TLS flags name lies on a mounted volume (mount point -> volume:
    `mounts`); returns the volumes holding them."""
    check("insecure-peers" not in args, f"{where}: --insecure-peers in a deployment file")
    volumes = set()
    for port in ("peer", "tls"):
        files = [args.get(f"{port}-{k}", "") for k in ("cert", "key", "ca")]
        if not check(all(files), f"{where}: --{port}-cert, --{port}-key and --{port}-ca "
                                 "are required"):
            continue
        check(files[0].endswith(f"/{name}.crt") and files[1].endswith(f"/{name}.key"),
              f"{where}: --{port}-cert {files[0]} is not {name}'s")
        for f in files:
            m = under(f, mounts)
            if check(m is not None, f"{where}: {f} is not on a mounted volume {sorted(mounts)}"):
                volumes.add(mounts[m])
    check(args.get("metrics-tls") == "true",
          f"{where}: --metrics-tls=true is required (HTTPS /metrics /healthz /readyz)")
    return volumes


def metrics_scheme(args):
    return "https" if args.get("metrics-tls") == "true" else "http"


def compose_mounts(volumes):
    """Compose volume entries "SOURCE:TARGET[:MODE]" -> {target: source}."""
    return {v.split(":")[1]: v.split(":")[0] for v in volumes}


def check_compose(flags):
    (compose,) = load_yaml("docker", "docker-compose.yml")
    services = compose["services"]
    nodes = {k: v for k, v in services.items() if k.startswith("tessera-")}
    check(len(nodes) == 3, f"compose: expected 3 tessera services, got {sorted(nodes)}")
    targets = []
    tls_volumes, tls_dirs, schemes, cas, hosts = set(), set(), set(), set(), {}
    for name, svc in sorted(nodes.items()):
        where = f"compose {name}"
        args = parse_args(svc["command"], flags, where)
        node_id = args.get("node-id")
        hostname = svc.get("hostname", name)
        client, peer, metrics = (port_of(args[k]) for k in ("listen", "peer-listen",
                                                             "metrics-listen"))
        members = dict(m.split("=", 1) for m in args["initial-cluster"].split(","))
        check(members.get(node_id) == f"{hostname}:{client}/{hostname}:{peer}",
              f"{where}: --initial-cluster entry {members.get(node_id)} does not match "
              f"{hostname} and the listen ports {client}/{peer}")
        published = {int(p.rsplit(":", 1)[1]) for p in svc.get("ports", [])}
        check({client, metrics} <= published, f"{where}: ports {published} miss {client}/{metrics}")
        health = " ".join(svc["healthcheck"]["test"])
        check(any(v.endswith(":/var/lib/tessera") for v in svc["volumes"]) and
              args["data-dir"].startswith("/var/lib/tessera"),
              f"{where}: --data-dir {args['data-dir']} is not on the volume")
        mounts = compose_mounts(svc["volumes"])
        tls_volumes |= check_tls(args, mounts, where, f"node-{node_id}")
        tls_dirs.update(os.path.dirname(args[k]) for k in ("tls-cert", "tls-key", "tls-ca")
                        if k in args)
        scheme = metrics_scheme(args)
        schemes.add(scheme)
        cas.add(args.get("tls-ca"))
        check(re.search(rf"\b{scheme}://(127\.0\.0\.1|localhost):{metrics}/healthz\b", health),
              f"{where}: healthcheck '{health}' is not {scheme}://127.0.0.1:{metrics}/healthz "
              "(https exactly with --metrics-tls)")
        if scheme == "https":
            test = svc["healthcheck"]["test"]
            ca = test[test.index("--cacert") + 1] if "--cacert" in test else ""
            check(ca in (args.get("tls-ca"), args.get("peer-ca")) and under(ca, mounts),
                  f"{where}: healthcheck must verify with --cacert <the mounted CA file>, "
                  f"not '{ca}'")
        # Node certificates must name the host that clients and Prometheus dial.
        hosts[node_id] = hostname
        targets.append(f"{hostname}:{metrics}")
    check(len(tls_volumes) == 1, f"compose: TLS files on several volumes {tls_volumes}")
    check(len(tls_dirs) == 1, f"compose: TLS files in several directories {tls_dirs}")
    tls_volume, tls_dir = next(iter(tls_volumes), None), next(iter(tls_dirs), None)
    # The one-shot service that runs gen-certs.sh into that volume.
    makers = [n for n, svc in services.items()
              if "gen-certs.sh" in " ".join(svc.get("command", [])) and
              compose_mounts(svc.get("volumes", [])).get(tls_dir) == tls_volume]
    if check(len(makers) == 1, f"compose: no single service runs gen-certs.sh into the volume "
                               f"{tls_volume} at {tls_dir}: {makers}"):
        (maker,) = makers
        script = " ".join(services[maker]["command"])
        made, users = {}, set()  # node id -> its TESSERA_CERT_HOSTS; user names
        made_by = r"(?:TESSERA_CERT_HOSTS=(\S*) )?gen-certs\.sh (\S+) ([^&;|]+)"
        for m in re.finditer(made_by, script):
            check(m.group(2) == tls_dir, f"compose {maker}: gen-certs.sh writes {m.group(2)}, "
                                         f"the nodes read {tls_dir}")
            words = m.group(3).split()
            if words[:1] == ["--user"]:
                users.update(words[1:])
            else:
                made.update((w, (m.group(1) or "").split(",")) for w in words)
        for node_id, hostname in sorted(hosts.items()):
            check(hostname in made.get(node_id, []),
                  f"compose {maker}: node-{node_id}'s certificate must name {hostname} "
                  f"(TESSERA_CERT_HOSTS), got {made.get(node_id)}")
        check("root" in users,
              f"compose {maker}: no certificate for user root (gen-certs.sh DIR --user root)")
        # gen-certs.sh makes the directory 0700; Prometheus runs as another user.
        check(re.search(rf"chmod (0?755|a\+rx|go\+rx|o\+rx) {re.escape(tls_dir)}\b", script),
              f"compose {maker}: {tls_dir} must be opened (chmod 755) for Prometheus's user")
        check(all(services[n].get("depends_on", {}).get(maker, {}).get("condition") ==
                  "service_completed_successfully" for n in nodes),
              f"compose: the nodes must wait for the {maker} service that runs gen-certs.sh")
    (prom,) = load_yaml("docker", "prometheus.yml")
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "tessera")
    scraped = sorted(t for c in job["static_configs"] for t in c["targets"])
    check(scraped == sorted(targets), f"compose prometheus scrapes {scraped}, nodes are {targets}")
    check(schemes == {job.get("scheme", "http")},
          f"compose prometheus scrapes with scheme {job.get('scheme', 'http')}, nodes serve "
          f"{sorted(schemes)}")
    if job.get("scheme") == "https":
        ca = job.get("tls_config", {}).get("ca_file", "")
        prom_volumes = services["prometheus"]["volumes"]
        ca_mount = under(ca, compose_mounts(prom_volumes))
        check(ca_mount is not None and f"{tls_volume}:{ca_mount}:ro" in prom_volumes and
              {os.path.basename(c or "") for c in cas} == {os.path.basename(ca)},
              f"compose prometheus: tls_config.ca_file '{ca}' must be the nodes' CA {cas} on "
              f"the volume {tls_volume}, mounted read-only in the prometheus service")
    graf = services["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in graf["volumes"] if v.startswith(".")}
    check(mounts.get("/etc/grafana/provisioning") == "../grafana/provisioning" and
          mounts.get("/var/lib/grafana/dashboards") == "../grafana/dashboards",
          f"compose grafana mounts {mounts}")
    for src in mounts.values():
        check(os.path.isdir(os.path.join(DEPLOY, "docker", src)), f"compose: {src} missing")
    check(os.path.isfile(os.path.join(DEPLOY, "docker", "prometheus.yml")),
          "docker/prometheus.yml missing")
    check(compose["x-tessera"]["build"]["dockerfile"] == "deploy/docker/Dockerfile",
          "compose builds another Dockerfile")


def check_k8s(flags):
    docs = load_yaml("k8s", "tessera.yaml")
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    (sts,) = by_kind["StatefulSet"]
    headless = next(s for s in by_kind["Service"] if s["spec"].get("clusterIP") == "None")
    (pdb,) = by_kind["PodDisruptionBudget"]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    args = parse_args(c["args"], flags, "k8s StatefulSet")
    check(args.get("node-id-from-hostname") == "true" and "node-id" not in args,
          "k8s: the node id must come from the pod ordinal (--node-id-from-hostname=true)")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    tls_volumes = check_tls(args, mounts, "k8s StatefulSet", "node-{id}")
    secrets = sorted(volumes[v]["secret"]["secretName"] for v in tls_volumes
                     if "secret" in volumes.get(v, {}))
    check(len(tls_volumes) == 1 and len(secrets) == 1,
          f"k8s: the TLS files must come from one secret volume, not {sorted(tls_volumes)}")
    mounted_secrets = [v["secret"]["secretName"] for v in volumes.values() if "secret" in v]
    check(mounted_secrets == secrets,
          f"k8s: the pods mount secrets {mounted_secrets}; only the TLS one {secrets} belongs "
          "there (user root's certificate is for admin clients)")
    # The header's commands create the secrets the pods mount, from
    # certificates naming the pods' DNS names and the client Service.
    with open(os.path.join(DEPLOY, "k8s", "tessera.yaml")) as f:
        header = f.read()
    created = re.findall(r"kubectl create secret generic (\S+)", header)
    check(set(secrets) <= set(created) and len(created) >= 2,
          f"k8s: the header creates secrets {created}, the pods mount {secrets} (plus one for "
          "user root's certificate)")
    cert_hosts = re.findall(r"TESSERA_CERT_HOSTS=(.*?) \S*gen-certs\.sh", header)
    client_svc = [svc["metadata"]["name"] for svc in by_kind["Service"] if svc is not headless]
    check(len(cert_hosts) == 1 and
          f"{sts['metadata']['name']}-" in cert_hosts[0] and
          f".{headless['metadata']['name']}," in cert_hosts[0] + "," and
          all(n in cert_hosts[0].split(",") for n in client_svc),
          f"k8s: the header's TESSERA_CERT_HOSTS {cert_hosts} must name the pod's DNS name "
          f"and the client Service {client_svc}")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"client": port_of(args["listen"]), "peer": port_of(args["peer-listen"]),
                    "metrics": port_of(args["metrics-listen"])},
          f"k8s: containerPorts {ports} disagree with the listen flags")
    check(spec["serviceName"] == headless["metadata"]["name"], "k8s: serviceName is not headless")
    check(headless["spec"].get("publishNotReadyAddresses") is True,
          "k8s: peers must resolve before they are ready (publishNotReadyAddresses)")
    check(spec.get("podManagementPolicy") == "Parallel",
          "k8s: pods must start in parallel (readiness needs a quorum)")
    name, svc, n = sts["metadata"]["name"], headless["metadata"]["name"], spec["replicas"]
    expected = ",".join(f"{i + 1}={name}-{i}.{svc}:{ports['client']}/{name}-{i}.{svc}:{ports['peer']}"
                        for i in range(n))
    check(args["initial-cluster"] == expected,
          f"k8s: --initial-cluster {args['initial-cluster']} != {expected}")
    # Later pods (scaled up) join through the founders and add themselves
    # under their own DNS names.
    join = ",".join(f"{name}-{i}.{svc}:{ports['client']}" for i in range(n))
    check(args.get("join") == join, f"k8s: --join {args.get('join')} != {join}")
    check(args.get("advertise-client") == f"{{hostname}}.{svc}:{ports['client']}" and
          args.get("advertise-peer") == f"{{hostname}}.{svc}:{ports['peer']}",
          f"k8s: --advertise-client/--advertise-peer must be the pod's DNS name and ports")
    scheme = metrics_scheme(args).upper()
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        get = c[probe]["httpGet"]
        check(get["path"] == path and get["port"] in ("metrics", ports["metrics"]) and
              get.get("scheme", "HTTP") == scheme,
              f"k8s: {probe} is {get}, want {scheme} {path} on the metrics port")
    check("requests" in c.get("resources", {}), "k8s: no resource requests")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    check(any(name in claims and args["data-dir"].startswith(path)
              for name, path in mounts.items()),
          f"k8s: --data-dir {args['data-dir']} not on a claimed volume {mounts}")
    labels = spec["template"]["metadata"]["labels"]
    for sel, what in [(spec["selector"]["matchLabels"], "StatefulSet"),
                      (headless["spec"]["selector"], "headless Service"),
                      (pdb["spec"]["selector"]["matchLabels"], "PodDisruptionBudget")]:
        check(sel.items() <= labels.items(), f"k8s: {what} selector {sel} misses the pods")
    svc_ports = {p["name"]: p["port"] for p in headless["spec"]["ports"]}
    check(svc_ports == ports, f"k8s: headless Service ports {svc_ports} != {ports}")
    ann = spec["template"]["metadata"].get("annotations", {})
    check(ann.get("prometheus.io/port") == str(ports["metrics"]), "k8s: scrape annotation port")
    check(ann.get("prometheus.io/scheme", "http") == metrics_scheme(args),
          f"k8s: scrape annotation prometheus.io/scheme must be {metrics_scheme(args)}")
    check(pod["securityContext"].get("runAsNonRoot") is True, "k8s: must run as non-root")
    return pod["securityContext"].get("runAsUser")


def check_dockerfile(k8s_uid):
    with open(os.path.join(DEPLOY, "docker", "Dockerfile")) as f:
        text = f.read()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    check(len(stages) == 2 and stages[0].startswith("debian:12") and
          stages[1].startswith("debian:12"), "Dockerfile: two Debian 12 stages expected")
    def apt_packages(stage):
        joined = stage.replace("\\\n", " ")
        m = re.search(r"apt-get install -y --no-install-recommends (.*?)&&", joined)
        return set(m.group(1).split()) if m else set()
    build, runtime = apt_packages(stages[0]), apt_packages(stages[1])
    with open(os.path.join(DEPLOY, "install-deps.sh")) as f:
        deps = f.read()
    libraries = re.search(r"# libraries\n((?:\s+[^#\n]+\n)+)", deps).group(1).split()
    check(set(libraries) <= build,
          f"Dockerfile build stage misses install-deps libraries {set(libraries) - build}")
    for pkg in sorted(runtime):
        p = subprocess.run(["apt-cache", "show", pkg], capture_output=True, text=True)
        check(p.returncode == 0, f"Dockerfile runtime package {pkg} unknown to apt")
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                        subprocess.run(["readelf", "-d", SERVER], capture_output=True,
                                       text=True).stdout)
    ldd = subprocess.run(["ldd", SERVER], capture_output=True, text=True).stdout
    resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, flags=re.M))
    base = {"libc6", "libstdc++6", "libgcc-s1"}  # in debian:12-slim
    for lib in needed:
        path = resolved.get(lib)
        if not check(path is not None, f"ldd cannot resolve {lib}"):
            continue
        real = os.path.realpath(path)
        candidates = [real, real.replace("/usr/lib/", "/lib/", 1),
                      real.replace("/lib/", "/usr/lib/", 1)]
        owner = None
        for cand in candidates:
            p = subprocess.run(["dpkg", "-S", cand], capture_output=True, text=True)
            if p.returncode == 0:
                owner = p.stdout.split(":")[0]
                break
        check(owner in runtime | base,
              f"Dockerfile runtime stage lacks the package of {lib} ({owner})")
    user = re.search(r"^USER (\S+)", stages[1], flags=re.M)
    check(user is not None and user.group(1).split(":")[0] not in ("root", "0"),
          "Dockerfile: the runtime stage must switch to a non-root USER")
    if user and k8s_uid is not None:
        check(user.group(1).split(":")[0] == str(k8s_uid),
              f"Dockerfile USER {user.group(1)} != k8s runAsUser {k8s_uid}")
    check("EXPOSE 7001 7101 9201" in stages[1], "Dockerfile: EXPOSE the three ports")
    check("/healthz" in stages[1], "Dockerfile: HEALTHCHECK on /healthz")


def check_grafana():
    (ds,) = load_yaml("grafana", "provisioning", "datasources", "prometheus.yml")
    (dashboards,) = load_yaml("grafana", "provisioning", "dashboards", "tessera.yml")
    uid = ds["datasources"][0]["uid"]
    check(dashboards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards",
          "grafana: dashboard provider path")
    with open(os.path.join(DEPLOY, "grafana", "dashboards", "tessera.json")) as f:
        dash = json.load(f)
    for panel in dash["panels"]:
        check(panel["datasource"]["uid"] == uid, f"grafana: panel {panel['title']} datasource")
        for t in panel["targets"]:
            check(t["expr"].count("(") == t["expr"].count(")"),
                  f"grafana: unbalanced expression {t['expr']}")


def check_node_id_from_hostname():
    if shutil.which("unshare") is None or os.geteuid() != 0:
        print("skipped --node-id-from-hostname check (needs root and unshare)")
        return
    cmd = (f"hostname tessera-2 && exec {SERVER} --node-id-from-hostname=true --data-dir=/nonexistent "
           "--initial-cluster=1=127.0.0.1:1/127.0.0.1:2,2=127.0.0.1:3/127.0.0.1:4")
    p = subprocess.run(["unshare", "--uts", "sh", "-c", cmd], capture_output=True, text=True,
                       timeout=20)
    check(p.returncode == 2 and "--node-id 3 is not a member" in p.stderr,
          f"--node-id-from-hostname on tessera-2: exit {p.returncode}, {p.stderr.strip()}")
    p = subprocess.run([SERVER, "--node-id-from-hostname=true", "--node-id=1", "--data-dir=x",
                        "--initial-cluster=1=127.0.0.1:1/127.0.0.1:2"],
                       capture_output=True, text=True, timeout=20)
    check(p.returncode == 2, "--node-id-from-hostname with --node-id must be refused")


def main():
    flags = server_flags()
    check_promtool()
    check_compose(flags)
    uid = check_k8s(flags)
    check_dockerfile(uid)
    check_grafana()
    check_node_id_from_hostname()
    if failures:
        for f in failures:
            print(f"FAIL: {f}", file=sys.stderr)
        sys.exit(1)
    print("deploy files: all checks passed")


if __name__ == "__main__":
    main()
