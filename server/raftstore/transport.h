// Transport: moves raft messages between the nodes of a cluster.
//
// Where it sits: each Node's raft loop hands the messages of a ready cycle,
// already batched per destination node, to Send(); the receiving side hands
// what arrives to its Node through the MessageHandler it was given. Raft
// tolerates loss, duplication and reordering, so the transport is best
// effort: it never blocks the caller on the network and drops messages for
// an unreachable peer (reporting it through the handler's node as
// unreachable is optional).
//
// Implementations: LocalTransport (local_transport.h, in-process, for tests,
// with fault filters) and GrpcTransport (grpc_transport.h, the Peer service).
#ifndef TESSERA_SERVER_RAFTSTORE_TRANSPORT_H_
#define TESSERA_SERVER_RAFTSTORE_TRANSPORT_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "proto/ids.h"
#include "tessera/raft.pb.h"

namespace tessera::server {

// One raft message of one shard.
struct ShardMessage {
  ShardId shard = 0;
  raftpb::Message message;
};

// Called with the messages that arrived from node `from`. Runs on a transport
// thread; must not block for long (the Node only queues them).
using MessageHandler = std::function<void(NodeId from, std::vector<ShardMessage> messages)>;

// Thread-safe.
class Transport {
 public:
  virtual ~Transport() = default;
  // Queues `messages` for node `to` and returns at once. Messages to one
  // destination are sent in order; any of them may be lost.
  virtual void Send(NodeId to, std::vector<ShardMessage> messages) = 0;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_RAFTSTORE_TRANSPORT_H_
