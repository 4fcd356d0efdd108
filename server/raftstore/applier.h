// Applier: what the Node's raft loop calls to apply committed entries to the
// replicated state machine. StateMachine (state_machine.h) is the real one;
// tests may use a simpler one.
#ifndef TESSERA_SERVER_RAFTSTORE_APPLIER_H_
#define TESSERA_SERVER_RAFTSTORE_APPLIER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "server/raftstore/transport.h"
#include "tessera/command.pb.h"

namespace tessera::server {

// What the Node tells the applier about a split entry (IsSplitEntry), which
// it applies alone, after every entry before it (conf changes included).
struct SplitContext {
  // No learner and no joint change in the shard's configuration as of the
  // entry: the same on every replica, so the split applies on all of them
  // or on none.
  bool membership_stable = false;
  // This node already hosts the new shard (e.g. an empty replica waiting
  // for its leader's snapshot): its data is not written here. Local only;
  // changes nothing of the splitting shard.
  bool new_shard_hosted = false;
};

// One committed raft entry of one shard, as the applier sees it. `data` is a
// serialized serverpb::Command, or empty for entries that only advance the
// applied index (a new leader's empty entry, a membership change).
struct CommittedEntry {
  ShardId shard = 0;
  uint64_t index = 0;
  std::string data;
  std::optional<SplitContext> split;  // set by the Node for a split entry
};

// The first byte of a serialized serverpb::Command whose lowest field is
// `split` (5, length-delimited): every SplitShard command, since it carries
// no session. Nothing else serializes so.
inline constexpr char kSplitEntryTag = 0x2A;
inline bool IsSplitEntry(const std::string& data) {
  return !data.empty() && data[0] == kSplitEntryTag;
}

// Called only from the Node's raft loop thread (not thread-safe).
class Applier {
 public:
  virtual ~Applier() = default;
  // Applies `entries` (of any shards; per shard in increasing index order)
  // in ONE atomic storage write,
  // together with each shard's new applied index, and returns one result per
  // entry (in order). Entries at or below a shard's applied index (replayed
  // after a restart) are skipped and get an empty result. A command that
  // fails (e.g. a compare on a wrong type, an expired session) is still
  // applied (the applied index moves) and its result carries the error code.
  // Errors (the whole batch is not applied): storage failures; the node must
  // stop.
  virtual absl::Status Apply(absl::Span<const CommittedEntry> entries,
                             std::vector<serverpb::CommandResult>* results) = 0;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_RAFTSTORE_APPLIER_H_
