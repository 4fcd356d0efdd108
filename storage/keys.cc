#include "storage/keys.h"

namespace tessera::storage::keys {

void AppendBigEndian64(uint64_t v, std::string* out) {
  for (int shift = 56; shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>((v >> shift) & 0xFF));
  }
}

uint64_t DecodeBigEndian64(absl::string_view in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

std::string ShardStart(ShardId shard) {
  std::string key;
  AppendBigEndian64(shard, &key);
  return key;
}

std::string ShardEnd(ShardId shard) { return TagKey(shard, '\xFF'); }

std::string TagKey(ShardId shard, char tag) {
  std::string key = ShardStart(shard);
  key.push_back(tag);
  return key;
}

std::string TagKey(ShardId shard, char tag, absl::string_view suffix) {
  std::string key;
  key.reserve(9 + suffix.size());
  AppendBigEndian64(shard, &key);
  key.push_back(tag);
  key.append(suffix.data(), suffix.size());
  return key;
}

std::string EntryKey(ShardId shard, uint64_t index) {
  std::string key = TagKey(shard, kEntryTag);
  AppendBigEndian64(index, &key);
  return key;
}

bool ParseEntryKey(absl::string_view key, ShardId* shard, uint64_t* index) {
  if (key.size() != 17 || key[8] != kEntryTag) return false;
  *shard = DecodeBigEndian64(key.substr(0, 8));
  *index = DecodeBigEndian64(key.substr(9, 8));
  return true;
}

}  // namespace tessera::storage::keys
