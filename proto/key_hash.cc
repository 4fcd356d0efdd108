#include "proto/key_hash.h"

#include <xxhash.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace tessera {

absl::string_view HashPart(absl::string_view key) {
  size_t open = key.find('{');
  if (open == absl::string_view::npos) return key;
  size_t close = key.find('}', open + 1);
  if (close == absl::string_view::npos || close == open + 1) return key;
  return key.substr(open + 1, close - open - 1);
}

uint64_t KeyHash(absl::string_view key) {
  absl::string_view part = HashPart(key);
  return XXH3_64bits(part.data(), part.size());
}

// Shard i owns the hashes h with floor(h * N / 2^64) == i: contiguous ranges
// whose sizes differ by at most one.
uint32_t ShardForHash(uint64_t hash, uint32_t num_shards) {
  return static_cast<uint32_t>((static_cast<unsigned __int128>(hash) * num_shards) >> 64);
}

uint64_t HashRangeStart(uint32_t shard, uint32_t num_shards) {
  if (shard == 0) return 0;
  // Smallest h with h * N >= shard * 2^64, i.e. ceil(shard * 2^64 / N).
  unsigned __int128 numerator = static_cast<unsigned __int128>(shard) << 64;
  return static_cast<uint64_t>((numerator + num_shards - 1) / num_shards);
}

uint32_t ShardForKey(absl::string_view key, uint32_t num_shards) {
  return ShardForHash(KeyHash(key), num_shards);
}

absl::StatusOr<std::vector<uint32_t>> CheckHashRanges(const std::vector<HashRange>& ranges) {
  std::vector<uint32_t> order(ranges.size());
  for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](uint32_t a, uint32_t b) { return ranges[a].start < ranges[b].start; });
  uint64_t next = 0;  // the first hash not yet covered
  for (size_t i = 0; i < order.size(); ++i) {
    const HashRange& r = ranges[order[i]];
    const bool last = i + 1 == order.size();
    if (r.start != next || r.end < r.start || (r.end == UINT64_MAX) != last) {
      return absl::InvalidArgumentError(
          absl::StrCat("the shards' hash ranges do not cover the hash space exactly once (shard ",
                       order[i], " owns [", r.start, ", ", r.end, "])"));
    }
    next = r.end + 1;
  }
  if (order.empty()) return absl::InvalidArgumentError("no shards");
  return order;
}

}  // namespace tessera
