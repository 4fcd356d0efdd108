// The identifiers every module shares: a node of the cluster and a shard (one
// Raft group). On the wire they are the uint64 fields of the protos; here
// they get names so that signatures say which one they take.
#ifndef TESSERA_PROTO_IDS_H_
#define TESSERA_PROTO_IDS_H_

#include <cstdint>

namespace tessera {

// A member of the cluster (its --node-id); 0 means "none".
using NodeId = uint64_t;

// A shard: its raft state and data live under their own key range, so any
// 64-bit value is a valid shard id (0 and UINT64_MAX included).
using ShardId = uint64_t;

}  // namespace tessera

#endif  // TESSERA_PROTO_IDS_H_
