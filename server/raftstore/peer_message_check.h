// CheckPeerMessage: the gate between the network and raft. Every raft
// message that arrives from another node is checked here, on the raft loop
// thread, before RawNode::Step sees it.
//
// Raft's own checks (TESSERA_RAFT_FATAL) are for our bugs: they abort. A
// message from the network that would reach one (a heartbeat whose commit is
// beyond our log, an append response acknowledging entries we do not have,
// a snapshot whose configuration cannot be restored) or that no honest peer
// sends (a local message type, entries that are not contiguous, a sender
// that is not a replica of the shard) is dropped and counted instead.
//
// The checks need only what the loop knows of the replica (ReplicaView).
// They are not a defence against a malicious member holding a valid
// certificate: peer TLS decides who is a member; this decides that nothing a
// member sends can crash us.
#ifndef TESSERA_SERVER_RAFTSTORE_PEER_MESSAGE_CHECK_H_
#define TESSERA_SERVER_RAFTSTORE_PEER_MESSAGE_CHECK_H_

#include <cstdint>

#include "server/raftstore/transport.h"
#include "tessera/raft.pb.h"

namespace tessera::server {

// What the raft loop knows of one shard replica when a message arrives.
struct ReplicaView {
  NodeId self = 0;
  uint64_t last_index = 0;                  // RawNode::last_index()
  const raftpb::ConfState* conf = nullptr;  // RawNode::conf_state()
};

// nullptr if `m`, received in a batch from node `sender`, may be stepped;
// otherwise a short fixed reason (a metric label value), and the message
// must be dropped.
const char* CheckPeerMessage(const raftpb::Message& m, NodeId sender, const ReplicaView& view);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_RAFTSTORE_PEER_MESSAGE_CHECK_H_
