// tessera-bench's etcd backend: etcd's v3 gRPC API (etcdserverpb.KV Put,
// Range, Txn; client/bench/etcd_kv.proto) through the gRPC callback API,
// one heap-allocated call (context, request, response) per request.
// Thread-safe.
//
// Connections: options.conns channels, channel i to endpoint
// i % endpoints.size(), each with a subchannel pool of its own so that every
// channel is its own TCP connection; virtual client j sends on channel
// j % conns. A request that reaches a follower is forwarded by etcd to its
// leader (etcd's normal behaviour). Reads: kLinearizable is a linearizable
// Range, kStale a serializable one; etcd has no lease reads.
#ifndef TESSERA_CLIENT_BENCH_ETCD_BACKEND_H_
#define TESSERA_CLIENT_BENCH_ETCD_BACKEND_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/bench/backend.h"

namespace tessera::bench {

// kInvalidArgument for kLease reads or no endpoints; kUnavailable when a
// channel does not connect within options.timeout.
absl::StatusOr<std::unique_ptr<Backend>> NewEtcdBackend(const std::vector<std::string>& endpoints,
                                                        BackendOptions options);

}  // namespace tessera::bench

#endif  // TESSERA_CLIENT_BENCH_ETCD_BACKEND_H_
