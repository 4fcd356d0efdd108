// tessera-bench's closed-loop driver, shared by every backend.
//
// `clients` virtual clients each keep exactly one request in flight: the
// completion of one request (on whatever gRPC thread runs it) records its
// latency and issues the client's next request, so 1024 clients need no
// thread of their own. A run has an optional warmup (same loop, its
// requests not recorded: a request counts if it was issued after the
// switch), then the measured phase, which ends after `total` requests were
// issued or after `duration`, whichever comes first; then the requests in
// flight drain and the run returns. The hot path takes no lock: a few
// atomics per request, per-thread histogram stripes, keys formatted into a
// per-client buffer.
#ifndef TESSERA_CLIENT_BENCH_DRIVER_H_
#define TESSERA_CLIENT_BENCH_DRIVER_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/bench/backend.h"
#include "client/bench/histogram.h"

namespace tessera::bench {

enum class Workload { kPut, kGet, kMixed, kTxn };

// Keys of exactly `key_size` bytes: 'k' then the index in decimal,
// zero-padded (index 42 of size 8: "k0000042"). Immutable.
class KeyFormat {
 public:
  // kInvalidArgument if `key_size` cannot hold 'k' plus the digits of the
  // largest index (key_space - 1), or key_space is 0.
  static absl::StatusOr<KeyFormat> Create(size_t key_size, uint64_t key_space);

  // Rewrites `*key` (resized to key_size) to the key of `index`; no
  // allocation once the buffer has the size.
  void Format(uint64_t index, std::string* key) const;
  std::string Key(uint64_t index) const;
  uint64_t key_space() const { return key_space_; }

 private:
  KeyFormat(size_t key_size, uint64_t key_space, size_t digits)
      : key_size_(key_size), key_space_(key_space), digits_(digits) {}
  size_t key_size_;
  uint64_t key_space_;
  size_t digits_;  // the digits of key_space - 1
};

// Per key of the key space, the writes a run made (puts, and txns: both of
// their branches put), for --verify: acknowledged ones, and failed ones,
// whose outcome is unknown (they may have applied). Thread-safe.
class WriteCounts {
 public:
  explicit WriteCounts(uint64_t key_space);
  void Record(uint64_t key, bool acknowledged);
  uint32_t acked(uint64_t key) const { return acked_[key].load(std::memory_order_relaxed); }
  uint32_t failed(uint64_t key) const { return failed_[key].load(std::memory_order_relaxed); }

 private:
  std::unique_ptr<std::atomic<uint32_t>[]> acked_;
  std::unique_ptr<std::atomic<uint32_t>[]> failed_;
};

// A key's version as read by a kGet run: 0 if missing, nullopt if the read
// failed.
using KeyVersions = std::vector<std::optional<uint64_t>>;

// --verify's verdict: every key read before and after the run must have
// gained exactly its acknowledged writes, plus at most its failed ones (a
// write applied twice, or an acknowledged write lost, shows as a mismatch).
struct VersionCheck {
  uint64_t keys_checked = 0;
  uint64_t keys_unchecked = 0;  // a read before or after failed
  uint64_t acked_writes = 0;    // on the checked keys
  uint64_t failed_writes = 0;   // on the checked keys (unknown outcome)
  uint64_t mismatches = 0;
  std::vector<std::string> examples;  // the first few mismatches, one line each
};

VersionCheck CheckVersions(const KeyFormat& keys, const KeyVersions& before,
                           const KeyVersions& after, const WriteCounts& writes);

struct RunSpec {
  Workload workload = Workload::kPut;
  size_t clients = 1;
  // Measured requests to issue; negative: no limit.
  int64_t total = -1;
  // Length of the measured phase; InfiniteDuration: no limit (then `total`
  // must be set).
  absl::Duration duration = absl::InfiniteDuration();
  absl::Duration warmup = absl::ZeroDuration();
  // Keys 0, 1, 2, ... in issue order (wrapping at the key space) instead of
  // uniformly random ones.
  bool sequential_keys = false;
  double read_ratio = 0.9;  // kMixed: the fraction of gets
  uint64_t seed = 1;
  // If set, every write's outcome is counted here, warmup included.
  WriteCounts* writes = nullptr;
  // If set (sized to the key space), each get stores the version it read
  // at the key's index (meant for a kGet run over sequential keys).
  KeyVersions* versions = nullptr;
};

struct RunStats {
  LatencyHistogram latencies;                 // of the successful measured requests
  uint64_t ops = 0;                           // successful measured requests, misses included
  uint64_t misses = 0;                        // gets of a missing key (successes)
  uint64_t errors = 0;                        // failed measured requests
  std::array<uint64_t, 17> errors_by_code{};  // by absl::StatusCode (others under kUnknown)
  double seconds = 0;                         // the measured phase, drain included
};

// Runs one closed loop against `backend` and returns its stats. Blocks;
// every request has completed when it returns. `backend` and `keys` must
// outlive the call.
RunStats RunClosedLoop(Backend& backend, const KeyFormat& keys, const RunSpec& spec);

}  // namespace tessera::bench

#endif  // TESSERA_CLIENT_BENCH_DRIVER_H_
