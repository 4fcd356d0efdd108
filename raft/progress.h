// Per-follower replication state kept by the leader (etcd-io/raft tracker/),
// and the ProgressTracker that combines it with the membership configuration.
// Not thread-safe; owned by Raft.
#ifndef TESSERA_RAFT_PROGRESS_H_
#define TESSERA_RAFT_PROGRESS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "raft/quorum.h"
#include "tessera/raft.pb.h"

namespace tessera::raft {

// A bounded window of in-flight MsgApp (sent, not yet acknowledged), each
// identified by the last entry index it carries. Full when either the count
// or the byte budget is exhausted. The ring buffer grows on demand up to
// `capacity` and is never shrunk, so steady-state replication does not
// allocate.
class Inflights {
 public:
  Inflights(size_t capacity, uint64_t max_bytes) : capacity_(capacity), max_bytes_(max_bytes) {}

  void Add(uint64_t index, uint64_t bytes);
  // Frees every in-flight message whose index is <= to.
  void FreeLE(uint64_t to);
  // Frees the oldest in-flight message.
  void FreeFirstOne() {
    if (count_ > 0) FreeLE(buffer_[start_].index);
  }
  bool Full() const { return count_ == capacity_ || (max_bytes_ != 0 && bytes_ >= max_bytes_); }
  size_t Count() const { return count_; }
  uint64_t bytes() const { return bytes_; }
  void Reset() {
    count_ = 0;
    start_ = 0;
    bytes_ = 0;
  }

 private:
  struct Item {
    uint64_t index;
    uint64_t bytes;
  };
  size_t capacity_;
  uint64_t max_bytes_;
  size_t start_ = 0;
  size_t count_ = 0;
  uint64_t bytes_ = 0;
  std::vector<Item> buffer_;
};

enum class ProgressState {
  // Sends at most one MsgApp per heartbeat interval while it looks for the
  // follower's match point.
  kProbe,
  // Streams entries optimistically, bounded by the Inflights window.
  kReplicate,
  // Waits for a snapshot to be installed; sends nothing.
  kSnapshot,
};
const char* ProgressStateName(ProgressState s);

// The leader's view of one follower (or of itself).
struct Progress {
  Progress(uint64_t next_index, size_t max_inflight, uint64_t max_inflight_bytes, bool learner)
      : next(next_index), inflights(max_inflight, max_inflight_bytes), is_learner(learner) {}

  void ResetState(ProgressState s);
  void BecomeProbe();
  void BecomeReplicate();
  void BecomeSnapshot(uint64_t snapshot_index);
  // Records that entries up to `last` were sent with `bytes` in a MsgApp.
  void SentEntries(uint64_t last, uint64_t bytes);
  // Handles an ack of index n; returns false if it is stale.
  bool MaybeUpdate(uint64_t n);
  // Handles a rejection of the MsgApp at `rejected`, with the follower's hint
  // of where to probe next; returns false if the rejection is stale.
  bool MaybeDecrTo(uint64_t rejected, uint64_t match_hint);
  // True if the leader should not send this follower a MsgApp now.
  bool IsPaused() const;
  std::string DebugString() const;

  uint64_t match = 0;  // match_index
  uint64_t next = 1;   // next_index
  ProgressState state = ProgressState::kProbe;
  // In kSnapshot: the index of the snapshot being sent.
  uint64_t pending_snapshot = 0;
  // Heard from since the last CheckQuorum round.
  bool recent_active = false;
  // In kProbe: a MsgApp was sent and not yet answered (or a heartbeat
  // response not yet received).
  bool probe_sent = false;
  Inflights inflights;
  bool is_learner = false;
  // Lease-based reads: the highest leader tick echoed by this follower in a
  // heartbeat response (0 = none this term).
  uint64_t lease_ack_tick = 0;
  // The leader tick echoed by the heartbeat response that last resumed a
  // paused flow (a probe, or a full in-flight window): one resume per
  // heartbeat interval (Raft::Step, MSG_HEARTBEAT_RESP).
  std::optional<uint64_t> resumed_tick;
};

using ProgressMap = std::map<uint64_t, Progress>;

// Membership configuration (mirrors ConfState).
struct TrackerConfig {
  JointConfig voters;
  std::set<uint64_t> learners;
  // Voters of the outgoing config that become learners when leaving joint.
  std::set<uint64_t> learners_next;
  bool auto_leave = false;
  friend bool operator==(const TrackerConfig&, const TrackerConfig&) = default;
};

class ProgressTracker {
 public:
  ProgressTracker(size_t max_inflight, uint64_t max_inflight_bytes)
      : max_inflight_(max_inflight), max_inflight_bytes_(max_inflight_bytes) {}

  raftpb::ConfState ConfState() const;
  bool IsSingleton() const {
    return config.voters.incoming.size() == 1 && config.voters.outgoing.empty();
  }
  // The largest index acked by a quorum of voters (by match index).
  uint64_t Committed() const;
  // True if a quorum of voters was recently active.
  bool QuorumActive() const;
  Progress* Find(uint64_t id);
  void ResetVotes() { votes_.clear(); }
  void RecordVote(uint64_t id, bool granted);
  // Counts granted/rejected votes of voters and returns the outcome.
  VoteResult TallyVotes(int* granted, int* rejected) const;
  const std::map<uint64_t, bool>& votes() const { return votes_; }
  size_t max_inflight() const { return max_inflight_; }
  uint64_t max_inflight_bytes() const { return max_inflight_bytes_; }

  TrackerConfig config;
  ProgressMap progress;

 private:
  size_t max_inflight_;
  uint64_t max_inflight_bytes_;
  std::map<uint64_t, bool> votes_;
};

}  // namespace tessera::raft

#endif  // TESSERA_RAFT_PROGRESS_H_
