// ReadOnly: the leader's queue of pending ReadIndex requests (§6.4 of the
// Raft thesis). Each request records the commit index at arrival; it is
// answered once a quorum has acknowledged a heartbeat round carrying its
// context or the context of any later request (acks for a later request
// confirm every earlier one, so one round serves a whole batch).
// Not thread-safe; owned by Raft.
#ifndef TESSERA_RAFT_READ_ONLY_H_
#define TESSERA_RAFT_READ_ONLY_H_

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "tessera/raft.pb.h"

namespace tessera::raft {

struct ReadIndexStatus {
  raftpb::Message req;  // the MsgReadIndex (entries[0].data is the context)
  uint64_t index = 0;   // commit index when the request arrived
  std::map<uint64_t, bool> acks;
};

class ReadOnly {
 public:
  // Queues a request that arrived when the commit index was `index`.
  // Duplicated contexts are ignored.
  void AddRequest(uint64_t index, const raftpb::Message& m);
  // Records that `id` acked the heartbeat round of `ctx`; returns the acks of
  // that request, or nullptr if it is unknown.
  const std::map<uint64_t, bool>* RecvAck(uint64_t id, const std::string& ctx);
  // Dequeues and returns the request with `ctx` and all requests before it.
  std::vector<ReadIndexStatus> Advance(const std::string& ctx);
  // Context of the newest pending request, empty if none.
  std::string LastPendingRequestCtx() const;
  size_t pending() const { return queue_.size(); }
  void Reset() {
    pending_.clear();
    queue_.clear();
  }

 private:
  std::map<std::string, ReadIndexStatus> pending_;
  std::deque<std::string> queue_;
};

}  // namespace tessera::raft

#endif  // TESSERA_RAFT_READ_ONLY_H_
