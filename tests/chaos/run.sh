#!/usr/bin/env bash
# Jepsen-style chaos run of a Tessera cluster in network namespaces.
#
#   tests/chaos/run.sh --nodes 3 --duration 60 --nemesis partition,kill,pause --seed S
#       [--bin-dir BUILD] [--out DIR] [--threads 8] [--keys 10] [--keep]
#       [--read-consistency linearizable|lease] [--clients-per-thread N]
#       [--testing-stale-gets]      (negative control: must find a violation)
#
# Needs root (ip netns, iptables, tc). The binaries come from --bin-dir, else
# $TESSERA_BUILD_DIR, else build/release or build/ of the repository. Exit: 0
# checked OK (or, for the negative control, a violation found), 1 the
# opposite, 2 usage, 3 setup error or interrupted. See tests/chaos/README.md.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [[ $(id -u) -ne 0 ]]; then
  echo "run.sh: needs root (creates network namespaces, iptables rules and tc qdiscs);" \
       "run it with sudo, as CI does" >&2
  exit 2
fi
for tool in ip iptables tc; do
  command -v "$tool" >/dev/null || { echo "run.sh: missing $tool (deploy/install-deps.sh)" >&2; exit 2; }
done

args=("$@")
have_bin=0
for a in "$@"; do [[ "$a" == --bin-dir* ]] && have_bin=1; done
if [[ $have_bin -eq 0 ]]; then
  bin=${TESSERA_BUILD_DIR:-}
  if [[ -z "$bin" ]]; then
    for d in "$repo/build/release" "$repo/build"; do
      [[ -x "$d/tests/chaos/tessera-chaos-workload" ]] && { bin=$d; break; }
    done
  fi
  [[ -n "$bin" ]] || { echo "run.sh: no build found: pass --bin-dir or set TESSERA_BUILD_DIR" >&2; exit 2; }
  args+=(--bin-dir "$bin")
fi
exec /usr/bin/python3 "$here/chaos.py" "${args[@]}"
