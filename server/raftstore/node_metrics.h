// NodeMetrics: the hooks through which a Node reports what happens inside its
// raft loop (proposals, leadership changes, persistence latency, snapshots)
// to whoever counts them (server/metrics.h implements it with Prometheus
// counters and histograms; tests may record calls).
//
// Where it sits: NodeOptions::metrics (nullptr = no hooks). Gauges that the
// Node already publishes (term, role, commit and applied index) are read from
// Node::Status() at scrape time instead, so they cost the loop nothing.
//
// Thread-safety: implementations must be thread-safe and must not block: the
// hooks run on the raft loop thread, except OnProposal(kRejected), which runs
// in the thread calling Node::Propose. Owned by the caller of Node::Start;
// must outlive the Node.
#ifndef TESSERA_SERVER_RAFTSTORE_NODE_METRICS_H_
#define TESSERA_SERVER_RAFTSTORE_NODE_METRICS_H_

#include <cstddef>
#include <cstdint>

#include "absl/time/time.h"
#include "server/raftstore/transport.h"

namespace tessera::server {

class NodeMetrics {
 public:
  enum class ProposalOutcome {
    kAccepted,  // appended to the leader's log
    kDropped,   // refused by raft or the loop: not leader, deadline already passed
    kRejected,  // refused at once by backpressure (max_pending_per_shard)
  };

  virtual ~NodeMetrics() = default;

  virtual void OnProposal(ShardId shard, ProposalOutcome outcome) = 0;
  // The shard's replica learned of a new leader (`leader` != 0) in `term`.
  virtual void OnLeaderChange(ShardId shard, NodeId leader, uint64_t term) = 0;
  // One synced RaftLog::Save of a ready cycle (group commit of `shards`
  // shards, `entries` entries) took `duration` (WAL write + fsync).
  virtual void OnLogSaved(absl::Duration duration, size_t shards, size_t entries) = 0;
  // A MSG_SNAP left for a follower / a received snapshot was installed.
  virtual void OnSnapshotSent(ShardId shard) = 0;
  virtual void OnSnapshotReceived(ShardId shard) = 0;
  // Peer input was refused before raft saw it; `reason` is a short fixed
  // string (peer_message_check.h, PeerService).
  virtual void OnPeerMessageRefused(const char* /*reason*/) {}
  // Hibernation (README.md "Hibernation"): of the shard replicas hosted
  // here, `awake` tick and `asleep` do not (called when the counts change);
  // a sleeping replica woke up because of `reason`, a short fixed string
  // ("proposal", "read", "message", "leader_silent", "follower_silent",
  // "unreachable", "transfer", "balance").
  virtual void OnShardsAwake(size_t /*awake*/, size_t /*asleep*/) {}
  virtual void OnShardWoke(const char* /*reason*/) {}
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_RAFTSTORE_NODE_METRICS_H_
