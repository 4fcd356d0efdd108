// The key -> hash -> shard rule that clients and servers must agree on
// forever. Changing anything here re-homes every key: don't.
//
// A key's routing hash is XXH3_64bits (seed 0) of its hash part. The hash part
// is the whole key, unless the key contains a hash tag: the bytes between the
// first '{' and the first '}' after it, when that span is non-empty (the same
// rule as Redis Cluster). So "user:{42}:name" and "user:{42}:email" land in
// one shard and can share a transaction. "{}" and an unclosed '{' are not tags.
//
// A cluster bootstrapped with N shards splits the 64-bit hash space into N
// contiguous ranges of near-equal size; shard i owns [HashRangeStart(i, N),
// HashRangeStart(i + 1, N)), and the last shard owns up to 2^64 - 1. A
// shard split later halves a range and gives the upper half a new shard id
// (the next unused one): from then on the cluster map's ranges, not N, say
// which shard owns a hash (CheckHashRanges).
#ifndef TESSERA_PROTO_KEY_HASH_H_
#define TESSERA_PROTO_KEY_HASH_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera {

// Returns the part of `key` that is hashed (its hash tag, or the whole key).
absl::string_view HashPart(absl::string_view key);

// Returns the stable 64-bit routing hash of `key`.
uint64_t KeyHash(absl::string_view key);

// Returns the shard in [0, num_shards) that owns `hash`. num_shards >= 1.
uint32_t ShardForHash(uint64_t hash, uint32_t num_shards);

// Returns the first hash owned by `shard` of `num_shards` (0 for shard 0).
uint64_t HashRangeStart(uint32_t shard, uint32_t num_shards);

// ShardForHash(KeyHash(key), num_shards).
uint32_t ShardForKey(absl::string_view key, uint32_t num_shards);

// A shard's hashes: [start, end], both inclusive.
struct HashRange {
  uint64_t start = 0;
  uint64_t end = 0;
};

// Checks that `ranges` (indexed by shard id) cover [0, 2^64 - 1] exactly
// once, and returns the shard ids ordered by range start (for a binary
// search). Errors: kInvalidArgument naming the first shard that breaks it.
absl::StatusOr<std::vector<uint32_t>> CheckHashRanges(const std::vector<HashRange>& ranges);

}  // namespace tessera

#endif  // TESSERA_PROTO_KEY_HASH_H_
