// Internal to storage/: the on-disk key layout of the RocksDB engine (see
// README.md "Key layout"). Pure byte-string helpers with no RocksDB types, so
// they can be unit-tested directly.
//
// Every key starts with the 8-byte big-endian shard id, then a 1-byte tag, so
// one shard's keys form the contiguous range [ShardStart, ShardEnd) in each
// column family and sort by shard first.
//
//   raft CF:  shard | 0x01                 -> raftpb::HardState
//             shard | 0x02                 -> raftpb::SnapshotMetadata
//             shard | 0x03                 -> truncated index (8 BE) | term (8 BE)
//             shard | 0x10 | index (8 BE) -> raftpb::Entry
//   data CF:  shard | 0x01                 -> applied index (8 BE)
//             shard | 0x02 | meta key      -> value
//             shard | 0x03 | user key      -> value
#ifndef TESSERA_STORAGE_KEYS_H_
#define TESSERA_STORAGE_KEYS_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "proto/ids.h"

namespace tessera::storage::keys {

inline constexpr char kHardStateTag = 0x01;
inline constexpr char kSnapshotTag = 0x02;
inline constexpr char kTruncatedTag = 0x03;
inline constexpr char kEntryTag = 0x10;

inline constexpr char kAppliedTag = 0x01;
inline constexpr char kMetaTag = 0x02;
inline constexpr char kDataTag = 0x03;

void AppendBigEndian64(uint64_t v, std::string* out);
// Decodes 8 bytes; `in` must hold at least 8.
uint64_t DecodeBigEndian64(absl::string_view in);

// The first key of a shard's range, and the end (exclusive): shard | 0xFF,
// above every tag.
std::string ShardStart(ShardId shard);
std::string ShardEnd(ShardId shard);

// shard | tag, and shard | tag | suffix.
std::string TagKey(ShardId shard, char tag);
std::string TagKey(ShardId shard, char tag, absl::string_view suffix);

std::string EntryKey(ShardId shard, uint64_t index);
// Parses an entry key; false if `key` is not one.
bool ParseEntryKey(absl::string_view key, ShardId* shard, uint64_t* index);

}  // namespace tessera::storage::keys

#endif  // TESSERA_STORAGE_KEYS_H_
