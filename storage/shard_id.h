// ShardId: the identifier of one shard (one Raft group) within a node's storage.
#ifndef TESSERA_STORAGE_SHARD_ID_H_
#define TESSERA_STORAGE_SHARD_ID_H_

#include <cstdint>

namespace tessera::storage {

// Every shard's raft state and data live under their own key range, so any
// 64-bit value is a valid shard id (0 and UINT64_MAX included).
using ShardId = uint64_t;

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_SHARD_ID_H_
