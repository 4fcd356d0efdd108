// KvBackend: the replicated key-value shards of this node, as the services
// see them: propose a command, wait for a read barrier, read the applied
// state, ask for the shards' status.
#ifndef TESSERA_SERVER_KV_BACKEND_H_
#define TESSERA_SERVER_KV_BACKEND_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/kv/state_machine.h"
#include "server/raftstore/node.h"
#include "tessera/command.pb.h"
#include "tessera/kv.pb.h"

namespace tessera::server {

// What the client-facing services (server/api) and the metadata group
// (server/cluster) need from this node's shard replicas: NodeKvBackend
// (node_backend.h: Node + StateMachine) in production, a fake in unit tests.
// Thread-safe.
class KvBackend {
 public:
  virtual ~KvBackend() = default;
  // As Node::Propose / Node::ReadBarrier / Node::Status.
  virtual void Propose(ShardId shard, serverpb::Command command, absl::Time deadline,
                       Node::ProposeCallback done) = 0;
  virtual void ReadBarrier(ShardId shard, bool lease, absl::Time deadline,
                           Node::ReadCallback done) = 0;
  // As Node::FollowerReadBarrier. Default: ReadBarrier without the lease.
  virtual void FollowerReadBarrier(ShardId shard, absl::Time deadline, Node::ReadCallback done) {
    ReadBarrier(shard, /*lease=*/false, deadline, std::move(done));
  }
  // As Node::WaitApplied. Default: at once, OK if StatusOf() shows the
  // index applied, else kUnavailable.
  virtual void WaitApplied(ShardId shard, uint64_t index, absl::Time /*deadline*/,
                           Node::ReadCallback done) {
    std::optional<ShardStatus> s = StatusOf(shard);
    done(s.has_value() && s->applied_index >= index
             ? absl::OkStatus()
             : absl::UnavailableError("the replica has not applied that revision"));
  }
  virtual std::vector<ShardStatus> Status() const = 0;
  // As Node::Health: not OK once the raft loop stopped or is wedged.
  virtual absl::Status Health() const { return absl::OkStatus(); }
  // As Node::AbandonedProposalBytes.
  virtual uint64_t AbandonedProposalBytes() const { return 0; }
  // One shard's entry of Status() (on the request path: no copy of the rest).
  virtual std::optional<ShardStatus> StatusOf(ShardId shard) const {
    for (ShardStatus& s : Status()) {
      if (s.shard == shard) return std::move(s);
    }
    return std::nullopt;
  }
  // Adds what the state machine knows of the replica (ShardStatus's
  // range_version, hash_end, approximate_bytes: a few storage reads, so
  // for Cluster.NodeStatus, not the request path). Default: nothing.
  virtual void AddStoredState(ShardStatus& /*status*/) const {}
  // As StateMachine::ReadHistory / StateMachine::Range (the watch hub).
  virtual absl::StatusOr<HistoryPage> ReadHistory(ShardId /*shard*/, uint64_t /*from_revision*/,
                                                  uint64_t /*max_bytes*/) const {
    return absl::UnimplementedError("no watch history");
  }
  virtual absl::StatusOr<sm::ShardRange> Range(ShardId /*shard*/) const { return sm::ShardRange{}; }
  // As StateMachine::Get / StateMachine::Scan.
  virtual absl::StatusOr<v1::GetResponse> Get(ShardId shard, absl::string_view key) const = 0;
  virtual absl::StatusOr<v1::ScanResponse> Scan(ShardId shard,
                                                const v1::ScanRequest& request) const = 0;
};

// Blocking forms for background threads (never the raft loop's): propose
// `command` (or wait for a read barrier) and wait for the outcome until
// `deadline`; kCancelled as soon as `stop` is notified.
absl::StatusOr<serverpb::CommandResult> ProposeAndWait(KvBackend& backend, ShardId shard,
                                                       serverpb::Command command,
                                                       absl::Time deadline,
                                                       const absl::Notification& stop);
absl::Status ReadBarrierAndWait(KvBackend& backend, ShardId shard, absl::Time deadline,
                                const absl::Notification& stop);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_KV_BACKEND_H_
