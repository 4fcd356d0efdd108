// tessera-bench's Tessera backend: the C++ SDK (client/client.h) through its
// callback forms PutAsync, GetAsync and TxnAsync. Thread-safe.
#ifndef TESSERA_CLIENT_BENCH_TESSERA_BACKEND_H_
#define TESSERA_CLIENT_BENCH_TESSERA_BACKEND_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/bench/backend.h"

namespace tessera::bench {

// A client of the cluster at `endpoints` with ClientOptions::channels_per_node
// = options.conns and default_timeout = options.timeout. Fetches the
// cluster map once (within options.timeout) to check the cluster answers:
// kUnavailable / kDeadlineExceeded when it does not.
absl::StatusOr<std::unique_ptr<Backend>> NewTesseraBackend(
    const std::vector<std::string>& endpoints, BackendOptions options);

}  // namespace tessera::bench

#endif  // TESSERA_CLIENT_BENCH_TESSERA_BACKEND_H_
