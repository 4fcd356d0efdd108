// peer_batch_fuzz: what a peer connection can send, fed to a real Node.
//
// Input: a serialized fuzzpb::PeerFuzzInput, the MessageBatches one peer
// stream delivers. Each batch goes where PeerService's stream reactor
// (server/transport/grpc_transport.cc) would send it: dropped unless to_node is this
// node and from_node is set, else Node::Receive(from_node, messages); then
// the harness waits for the raft loop to run a cycle (step, persist, apply),
// so every input is processed in full and in order before the next.
//
// The node: node 1 hosting shards 1-3 with replicas 1, 2, 3 over a RocksDB
// engine on tmpfs, the real StateMachine, and a transport that drops what it
// sends. Ticks are off (the tick interval is an hour): the fuzzer drives
// raft by messages alone (MSG_TIMEOUT_NOW starts an election), which keeps
// runs deterministic. Every input starts from freshly bootstrapped shards:
// the Node is started per input and its shards are deleted after it, with the
// engine kept open (opening RocksDB is the slow part).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "fuzz_input.pb.h"
#include "raft/confchange.h"
#include "server/kv/state_machine.h"
#include "server/raftstore/node.h"
#include "storage/engine.h"
#include "tests/fuzz/fuzz_util.h"

namespace tessera::fuzz {
namespace {

using server::Node;
using server::ShardMessage;
using tessera::NodeId;
using tessera::ShardId;

class PeerHarness {
 public:
  PeerHarness() {
    storage::EngineOptions eo;
    eo.block_cache_bytes = 8 << 20;
    eo.max_total_wal_bytes = 16 << 20;  // on tmpfs: memory
    eo.raft_write_buffer_bytes = 4 << 20;
    eo.data_write_buffer_bytes = 4 << 20;
    absl::StatusOr<std::unique_ptr<storage::Engine>> engine =
        storage::Engine::Open(dir_.path(), eo);
    if (!engine.ok()) Die("cannot open the engine", engine.status());
    engine_ = *std::move(engine);
    state_machine_ =
        std::make_unique<server::StateMachine>(&engine_->kv_store(), server::StateMachineOptions{});
    options_.id = kSelf;
    for (ShardId s : kPeerShards) {
      options_.shards.push_back(server::ShardPlacement{
          .shard = s, .replicas = std::vector<NodeId>(std::begin(kPeers), std::end(kPeers))});
    }
    options_.tick_interval = absl::Hours(1);
    options_.election_ticks = 10;
    options_.heartbeat_ticks = 1;
    // Compact after a few applied entries, so that leaders answer lagging
    // followers with snapshots and the compaction paths run too.
    options_.snapshot_interval_entries = 4;
    options_.max_pending_per_shard = 64;
    options_.seed = 1;
  }

  void Run(const fuzzpb::PeerFuzzInput& input) {
    absl::StatusOr<std::unique_ptr<Node>> started =
        Node::Start(options_, engine_.get(), state_machine_.get(), &transport_);
    if (!started.ok()) Die("Node::Start failed", started.status());
    Node& node = **started;
    for (const peerpb::MessageBatch& batch : input.batches()) {
      if (batch.to_node() != kSelf || batch.from_node() == 0) continue;  // as PeerService
      std::vector<ShardMessage> messages;
      auto deliver = [&] {
        if (messages.empty()) return;
        node.Receive(batch.from_node(), std::move(messages));
        messages.clear();
        AwaitCycle(node, kPeerShards[0]);
      };
      for (const peerpb::ShardMessage& m : batch.messages()) {
        messages.push_back({.shard = m.shard(), .message = m.message()});
      }
      deliver();
    }
    AwaitCycle(node, kPeerShards[0]);  // whatever the last cycle left ready
    if (verbose_) {
      for (const server::ShardStatus& st : node.Status()) {
        std::fprintf(stderr, "shard %llu: %s term %llu commit %llu applied %llu last %llu\n",
                     static_cast<unsigned long long>(st.shard), st.role.c_str(),
                     static_cast<unsigned long long>(st.term),
                     static_cast<unsigned long long>(st.commit_index),
                     static_cast<unsigned long long>(st.applied_index),
                     static_cast<unsigned long long>(st.last_index));
      }
    }
    started->reset();
    for (ShardId s : kPeerShards) {
      absl::Status st = engine_->raft_log().DeleteShard(s);
      if (st.ok()) st = engine_->kv_store().DeleteShard(s);
      if (!st.ok()) Die("cannot reset a shard", st);
    }
  }

 private:
  ScratchDir dir_;
  std::unique_ptr<storage::Engine> engine_;
  std::unique_ptr<server::StateMachine> state_machine_;
  NullTransport transport_;
  server::NodeOptions options_;
  // TESSERA_FUZZ_VERBOSE=1: print the shards' state after each input.
  const bool verbose_ = std::getenv("TESSERA_FUZZ_VERBOSE") != nullptr;
};

}  // namespace
}  // namespace tessera::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // One per process; destroyed at exit(), which removes its directory.
  static tessera::fuzz::PeerHarness harness;
  tessera::fuzzpb::PeerFuzzInput input;
  if (!input.ParseFromArray(data, static_cast<int>(size))) return -1;  // not worth keeping
  harness.Run(input);
  return 0;
}
