// Quorum rules: majority configurations and joint (two-majority)
// configurations, used to compute the commit index and election outcomes.
// Immutable value types; no thread-safety concerns.
#ifndef TESSERA_RAFT_QUORUM_H_
#define TESSERA_RAFT_QUORUM_H_

#include <cstdint>
#include <limits>
#include <map>
#include <set>

#include "absl/functional/function_ref.h"

namespace tessera::raft {

enum class VoteResult { kPending, kLost, kWon };

// Returns the acknowledged index of `id`, or false if it has none.
using AckedIndexer = absl::FunctionRef<bool(uint64_t id, uint64_t* index)>;

// A set of voters deciding by simple majority.
class MajorityConfig {
 public:
  MajorityConfig() = default;
  explicit MajorityConfig(std::set<uint64_t> ids) : ids_(std::move(ids)) {}

  // The largest index acked by a majority. An empty config returns the
  // maximum uint64 so that it never constrains a joint config.
  uint64_t CommittedIndex(AckedIndexer acked) const;
  // Won when a majority voted yes, lost when that is no longer possible.
  // An empty config wins (it does not constrain a joint config).
  VoteResult Vote(const std::map<uint64_t, bool>& votes) const;

  const std::set<uint64_t>& ids() const { return ids_; }
  std::set<uint64_t>& mutable_ids() { return ids_; }
  bool contains(uint64_t id) const { return ids_.contains(id); }
  size_t size() const { return ids_.size(); }
  bool empty() const { return ids_.empty(); }
  friend bool operator==(const MajorityConfig&, const MajorityConfig&) = default;

 private:
  std::set<uint64_t> ids_;
};

// Joint consensus (§6 of the thesis): decisions need a majority of both the
// incoming and the outgoing voter sets. When not joint, outgoing is empty and
// this is a plain majority of incoming.
class JointConfig {
 public:
  uint64_t CommittedIndex(AckedIndexer acked) const;
  VoteResult Vote(const std::map<uint64_t, bool>& votes) const;
  bool contains(uint64_t id) const { return incoming.contains(id) || outgoing.contains(id); }
  // The union of both voter sets.
  std::set<uint64_t> Ids() const;
  bool joint() const { return !outgoing.empty(); }
  friend bool operator==(const JointConfig&, const JointConfig&) = default;

  MajorityConfig incoming;
  MajorityConfig outgoing;
};

}  // namespace tessera::raft

#endif  // TESSERA_RAFT_QUORUM_H_
