// LocalNetwork: an in-process network connecting the Nodes of a test
// cluster, with fault filters (partitions, isolation), in the spirit of
// tikv's transport_simulate.rs and etcd-io/raft's test network.
//
// Each node registers its MessageHandler (Node::Receive) and sends through
// the Transport returned by TransportFor(). Send() only queues: one delivery
// thread hands the batches to the destination's handler in send order, never
// from inside Send(). Filters are checked at delivery time, so a partition
// also drops what was queued before it.
//
// Snapshots: a node whose Node streams snapshots (NodeOptions::snapshots)
// registers its SnapshotExchange with SetSnapshotExchange(); a MSG_SNAP
// carrying an export token is then streamed at delivery time as GrpcTransport
// does (SnapshotChunker -> chunks of snapshot_chunk_bytes -> SnapshotAssembler
// into the receiver's exchange), so the receiver gets a staged token.
//
// Thread-safe. The LocalNetwork must outlive every Transport it hands out;
// unregister a node before destroying whatever its handler refers to.
#ifndef TESSERA_TESTS_TESTING_LOCAL_TRANSPORT_H_
#define TESSERA_TESTS_TESTING_LOCAL_TRANSPORT_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "server/raftstore/snapshot_stream.h"
#include "server/raftstore/transport.h"

namespace tessera::server {

class LocalNetwork {
 public:
  LocalNetwork();   // starts the delivery thread
  ~LocalNetwork();  // stops it; undelivered messages are dropped
  LocalNetwork(const LocalNetwork&) = delete;
  LocalNetwork& operator=(const LocalNetwork&) = delete;

  // Messages to `id` go to `handler` from now on (replacing any earlier one).
  void Register(NodeId id, MessageHandler handler) ABSL_LOCKS_EXCLUDED(mu_);
  // Messages to `id` are dropped from now on. When it returns, the handler is
  // not running and will not be called again.
  void Unregister(NodeId id) ABSL_LOCKS_EXCLUDED(mu_);
  // Snapshots from and to `id` go through `exchange` (not owned; nullptr
  // removes it).
  void SetSnapshotExchange(NodeId id, SnapshotExchange* exchange) ABSL_LOCKS_EXCLUDED(mu_);
  void set_snapshot_chunk_bytes(uint64_t bytes) ABSL_LOCKS_EXCLUDED(mu_);
  // Chunks streamed, and snapshots dropped because streaming failed.
  uint64_t snapshot_chunks() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t failed_snapshots() const ABSL_LOCKS_EXCLUDED(mu_);
  // A Transport sending as node `from`.
  std::unique_ptr<Transport> TransportFor(NodeId from);

  // Drops all traffic between `a` and `b` (both directions) until Heal().
  void Partition(NodeId a, NodeId b) ABSL_LOCKS_EXCLUDED(mu_);
  // Drops all traffic from and to `id` until Heal().
  void Isolate(NodeId id) ABSL_LOCKS_EXCLUDED(mu_);
  // Removes every filter.
  void Heal() ABSL_LOCKS_EXCLUDED(mu_);

  // Batches handed to Send (counted there, before the sender's next step,
  // unlike delivered and dropped ones, which the network thread counts later).
  uint64_t sent_batches() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t delivered_batches() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t dropped_batches() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  class LocalTransport;
  struct Envelope {
    NodeId from = 0;
    NodeId to = 0;
    std::vector<ShardMessage> messages;
  };

  void Send(NodeId from, NodeId to, std::vector<ShardMessage> messages) ABSL_LOCKS_EXCLUDED(mu_);
  void Run() ABSL_LOCKS_EXCLUDED(mu_);
  bool Blocked(NodeId from, NodeId to) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Streams a MSG_SNAP's export from `from` to `to`; false if it failed.
  bool StreamSnapshot(SnapshotExchange* from, SnapshotExchange* to, uint64_t chunk_bytes,
                      ShardMessage& m) ABSL_LOCKS_EXCLUDED(mu_);

  mutable absl::Mutex mu_;
  std::deque<Envelope> queue_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<NodeId, MessageHandler> handlers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<NodeId, SnapshotExchange*> exchanges_ ABSL_GUARDED_BY(mu_);
  uint64_t snapshot_chunk_bytes_ ABSL_GUARDED_BY(mu_) = 1 << 20;
  uint64_t snapshot_chunks_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t failed_snapshots_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<std::pair<NodeId, NodeId>> cut_ ABSL_GUARDED_BY(mu_);  // (min, max)
  std::set<NodeId> isolated_ ABSL_GUARDED_BY(mu_);
  NodeId delivering_to_ ABSL_GUARDED_BY(mu_) = 0;  // 0 = none
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t sent_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t delivered_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;  // last: started after everything above exists
};

}  // namespace tessera::server

#endif  // TESSERA_TESTS_TESTING_LOCAL_TRANSPORT_H_
