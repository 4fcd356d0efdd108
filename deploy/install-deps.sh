#!/usr/bin/env bash
# Installs the Debian 12 packages Tessera needs to build, test and run.
# Idempotent: asks dpkg which packages are missing and installs only those
# with apt-get; when everything is present it is a fast no-op (no apt-get
# call at all). Nothing is downloaded from anywhere but Debian's archive.
#
# Usage: deploy/install-deps.sh [--print]   (--print lists missing packages)
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git
  clang clang-format clang-tidy lld libclang-rt-14-dev
  # libraries
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev libssl-dev
  prometheus-cpp-dev libcivetweb-dev libxxhash-dev libspdlog-dev libfmt-dev
  libmicrohttpd-dev  # the /metrics /healthz /readyz HTTP(S) server (server/observability)
  libsodium-dev  # Argon2id password hashes and HMAC tokens (server/security/auth.cc)
  zlib1g-dev  # CRC-32 of the raft log engine (storage/log_engine.cc)
  libjemalloc-dev  # tessera-server's allocator (server/cmd/CMakeLists.txt)
  # runtime helpers for the local cluster and tests (prometheus ships promtool;
  # python3-yaml parses the Compose and Kubernetes files in tests/deploy;
  # python3-grpcio and python3-protobuf run tests/client/error_model_test.py,
  # a client in another language)
  procps iproute2 iptables curl openssl prometheus python3-yaml
  python3-grpcio python3-protobuf
  # the baseline of tests/bench/compare-etcd.sh (it runs its own etcd cluster
  # on other ports; a system etcd that the package may start is left alone)
  etcd-server etcd-client
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || missing+=("$p")
done

if [[ "${1:-}" == "--print" ]]; then
  printf '%s\n' "${missing[@]}"
  exit 0
fi

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

echo "install-deps: installing ${#missing[@]} missing package(s): ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done" >&2
