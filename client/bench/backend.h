// The system tessera-bench drives, behind one small interface so that one
// driver (driver.h) measures Tessera and etcd the same way.
//
// A backend starts one request per call and reports its outcome exactly once
// through a Completion, from any thread (a gRPC thread, or inline in the
// caller). Implementations are thread-safe; Start() must not block.
#ifndef TESSERA_CLIENT_BENCH_BACKEND_H_
#define TESSERA_CLIENT_BENCH_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace tessera::bench {

enum class Op {
  kPut,  // write `key` = the value
  kGet,  // read `key`; a missing key is a success (a miss), not an error
  kTxn,  // if version(key) > 0 then put key = value else put key = value
};

enum class ReadConsistency { kLinearizable, kLease, kStale };

// Told when a request finished. Must not block.
class Completion {
 public:
  virtual ~Completion() = default;
  // `code` is kOk on success; `miss` is true for a kGet of a missing key;
  // `version` is the version a successful kGet found (the key's writes
  // since it was created; 0 for a miss and for every other op).
  virtual void OnComplete(absl::StatusCode code, bool miss, uint64_t version) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Starts `op` on `key`, sent by virtual client `client` (0-based; a
  // client has at most one request in flight, so per-client scratch space
  // may be reused). `key` only needs to live until Start() returns.
  // `done` runs exactly once, possibly before Start() returns.
  virtual void Start(Op op, const std::string& key, size_t client, Completion* done) = 0;
};

// What every backend is built from.
struct BackendOptions {
  std::string value;  // written by every put (built once)
  ReadConsistency consistency = ReadConsistency::kLinearizable;
  absl::Duration timeout = absl::Seconds(5);  // per request
  int conns = 1;                              // gRPC connections (see README.md)
  bool batch_stream = true;                   // tessera: KV.Batch (else unary RPCs)
  size_t clients = 1;                         // virtual clients (per-client scratch)
};

}  // namespace tessera::bench

#endif  // TESSERA_CLIENT_BENCH_BACKEND_H_
