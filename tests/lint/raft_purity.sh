#!/usr/bin/env bash
# Fails if raft/ reaches for threads, locks, clocks, files, sockets, gRPC or
# RocksDB: raft/ must stay a pure, deterministic state machine. <chrono> is
# allowed for its types (raft::Clock::time_point readings come in from the
# application, RawNode::SetNow); reading any clock is not.
set -euo pipefail
dir=${1:?usage: raft_purity.sh RAFT_DIR}
pattern='#include *[<"](thread|mutex|shared_mutex|condition_variable|future|ctime|time\.h|random|fstream|cstdio|stdio\.h|sys/socket\.h|unistd\.h|grpcpp/[^>"]*|rocksdb/[^>"]*|absl/synchronization/[^>"]*|absl/time/[^>"]*|absl/random/[^>"]*)[>"]'
if hits=$(grep -rnE "$pattern" "$dir" --include='*.h' --include='*.cc'); then
  echo "raft/ must stay pure; forbidden includes:"
  echo "$hits"
  exit 1
fi
if hits=$(grep -rnE '::now *\(|system_clock|high_resolution_clock|absl::Now' "$dir" \
    --include='*.h' --include='*.cc'); then
  echo "raft/ must not read a clock (the application passes readings in):"
  echo "$hits"
  exit 1
fi
if grep -rnE 'rocksdb|grpc' "$dir/CMakeLists.txt"; then
  echo "raft/CMakeLists.txt must link only absl and tessera_proto"
  exit 1
fi
echo "raft/ is pure"
