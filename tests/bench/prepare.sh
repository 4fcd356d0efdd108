# shellcheck shell=bash disable=SC2154  # $root: set by the sourcing script
# Sourced by the benchmark entry scripts (compare-etcd.sh, scaling.sh), with
# $root set to the repository: `bench_prepare ORCHESTRATOR.py "$@"` hands
# --help to the Python orchestrator; otherwise, unless TESSERA_SKIP_BUILD is
# set, it installs missing Debian packages, configures the release preset if
# needed and builds the binaries the benchmarks run.
bench_prepare() {
  local script=$1
  shift
  for arg in "$@"; do
    if [[ $arg == -h || $arg == --help ]]; then
      exec python3 "$script" --help
    fi
  done
  if [[ -z ${TESSERA_SKIP_BUILD:-} ]]; then
    "$root/deploy/install-deps.sh"
    [[ -f $root/build/release/build.ninja ]] || (cd "$root" && cmake --preset release >/dev/null)
    ninja -C "$root/build/release" -j2 tessera-server tessera-admin tessera-bench
  fi
}
