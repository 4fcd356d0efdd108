#!/usr/bin/env bash
# Tessera vs etcd, side by side on this machine (issue 8): a 3-member etcd
# cluster (Debian's etcd-server, fsync on) and a 3-node Tessera cluster
# (fsync on), both on 127.0.0.1, the same tessera-bench matrix against each,
# Tessera/etcd ratios printed and written to OUT/compare.md and
# OUT/compare.json. Everything it starts is stopped again (by pid), also on
# Ctrl-C; data directories are removed, logs and per-run outputs kept.
#
# Usage: tests/bench/compare-etcd.sh [--duration S] [--warmup S] [--repeats N]
#          [--fill-keys N] [--out DIR] [--smoke] [--cells LIST] [--shards N] [--tls]
#   defaults: 20 s runs after 3 s warmup, 2 repeats, key space 100k, a
#   1M-key fill for the memory figure, out build/bench/compare-<date>-<time>.
#   --smoke: a tiny run (seconds, a few cells) that the ctest
#   bench_compare_smoke runs; its numbers mean nothing. --tls: both systems'
#   client ports TLS-only (the cost of TLS, against a run without).
#   --help: every option.
#
# Installs missing Debian packages (deploy/install-deps.sh, includes etcd),
# configures the release preset if needed and builds tessera-server,
# tessera-admin and tessera-bench. TESSERA_SKIP_BUILD=1 skips the build (and
# the install unless etcd is missing); TESSERA_BIN_DIR picks the build
# directory whose binaries are used (default build/release).
# The orchestration is tests/bench/compare_etcd.py (Python 3, stdlib only).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

# shellcheck source=tests/bench/prepare.sh
source "$root/tests/bench/prepare.sh"
bench_prepare "$root/tests/bench/compare_etcd.py" "$@"
# Skipping the build still needs etcd.
if [[ ! -x /usr/bin/etcd || ! -x /usr/bin/etcdctl ]]; then
  "$root/deploy/install-deps.sh"
fi

exec python3 "$root/tests/bench/compare_etcd.py" --root "$root" \
  --bin-dir "${TESSERA_BIN_DIR:-$root/build/release}" "$@"
