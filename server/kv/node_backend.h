// NodeKvBackend: the production KvBackend, this node's Node (raft) and
// StateMachine (applied state) behind the interface the services call.
#ifndef TESSERA_SERVER_KV_NODE_BACKEND_H_
#define TESSERA_SERVER_KV_NODE_BACKEND_H_

#include <optional>
#include <utility>
#include <vector>

#include "server/kv/backend.h"
#include "server/kv/state_machine.h"
#include "server/raftstore/node.h"

namespace tessera::server {

// Thread-safe (as Node and StateMachine are). Neither is owned; both must
// outlive it.
class NodeKvBackend final : public KvBackend {
 public:
  NodeKvBackend(Node* node, const StateMachine* state_machine)
      : node_(node), state_machine_(state_machine) {}
  void Propose(ShardId shard, serverpb::Command command, absl::Time deadline,
               Node::ProposeCallback done) override {
    node_->Propose(shard, std::move(command), deadline, std::move(done));
  }
  void ReadBarrier(ShardId shard, bool lease, absl::Time deadline,
                   Node::ReadCallback done) override {
    node_->ReadBarrier(shard, lease, deadline, std::move(done));
  }
  void FollowerReadBarrier(ShardId shard, absl::Time deadline, Node::ReadCallback done) override {
    node_->FollowerReadBarrier(shard, deadline, std::move(done));
  }
  void WaitApplied(ShardId shard, uint64_t index, absl::Time deadline,
                   Node::ReadCallback done) override {
    node_->WaitApplied(shard, index, deadline, std::move(done));
  }
  std::vector<ShardStatus> Status() const override { return node_->Status(); }
  absl::Status Health() const override { return node_->Health(); }
  uint64_t AbandonedProposalBytes() const override { return node_->AbandonedProposalBytes(); }
  std::optional<ShardStatus> StatusOf(ShardId shard) const override {
    return node_->StatusOf(shard);
  }
  void AddStoredState(ShardStatus& s) const override {
    absl::StatusOr<sm::ShardRange> range = state_machine_->Range(s.shard);
    if (range.ok() && range->version > 1) {  // a split's record
      s.range_version = range->version;
      s.hash_end = range->end;
    }
    s.approximate_bytes = state_machine_->ApproximateBytes(s.shard);
  }
  absl::StatusOr<HistoryPage> ReadHistory(ShardId shard, uint64_t from_revision,
                                          uint64_t max_bytes) const override {
    return state_machine_->ReadHistory(shard, from_revision, max_bytes);
  }
  absl::StatusOr<sm::ShardRange> Range(ShardId shard) const override {
    return state_machine_->Range(shard);
  }
  absl::StatusOr<v1::GetResponse> Get(ShardId shard, absl::string_view key) const override {
    return state_machine_->Get(shard, key);
  }
  absl::StatusOr<v1::ScanResponse> Scan(ShardId shard,
                                        const v1::ScanRequest& request) const override {
    return state_machine_->Scan(shard, request);
  }

 private:
  Node* const node_;
  const StateMachine* const state_machine_;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_KV_NODE_BACKEND_H_
