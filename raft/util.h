// Internal helpers of raft/: invariant checks, a deterministic PRNG, entry
// sizes. Not part of the public interface.
#ifndef TESSERA_RAFT_UTIL_H_
#define TESSERA_RAFT_UTIL_H_

#include <cstdint>
#include <vector>

#include "absl/base/internal/raw_logging.h"
#include "tessera/raft.pb.h"

// Crashes with a clear message when a Raft invariant is broken: that is a bug
// (or corrupted storage), never an error to return. `...` is a printf format
// and its arguments (use %llu with static_cast<unsigned long long>).
#define TESSERA_RAFT_FATAL(...) ABSL_RAW_LOG(FATAL, __VA_ARGS__)
#define TESSERA_RAFT_CHECK(cond)                                            \
  do {                                                                      \
    if (!(cond)) ABSL_RAW_LOG(FATAL, "raft invariant violated: %s", #cond); \
  } while (0)

namespace tessera::raft {

using ull = unsigned long long;  // for printf-style %llu in fatal messages

// splitmix64: a tiny deterministic PRNG, so that election timeouts are
// reproducible from Config::seed.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n); n > 0. The modulo bias is irrelevant for timeouts.
  uint64_t Uniform(uint64_t n) { return Next() % n; }

 private:
  uint64_t state_;
};

// Byte size of an entry as it is counted against max_size_per_msg and
// max_committed_size_per_ready.
inline uint64_t EntrySize(const raftpb::Entry& e) { return e.ByteSizeLong(); }
// Payload size as counted against max_uncommitted_entries_size.
inline uint64_t PayloadSize(const raftpb::Entry& e) { return e.data().size(); }

// Keeps the longest prefix of `ents` whose total EntrySize is <= max_bytes,
// but at least one entry.
void LimitSize(std::vector<raftpb::Entry>* ents, uint64_t max_bytes);

bool IsEmptySnapshot(const raftpb::Snapshot& s);
bool IsEmptyHardState(const raftpb::HardState& hs);
bool HardStateEqual(const raftpb::HardState& a, const raftpb::HardState& b);

}  // namespace tessera::raft

#endif  // TESSERA_RAFT_UTIL_H_
