#include "proto/key_hash.h"

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tessera {
namespace {

TEST(KeyHash, HashTagSelectsBracedPart) {
  EXPECT_EQ(HashPart("user:{42}:name"), "42");
  EXPECT_EQ(HashPart("{a}{b}"), "a");
  EXPECT_EQ(HashPart("plain"), "plain");
  EXPECT_EQ(HashPart("empty{}tag"), "empty{}tag");
  EXPECT_EQ(HashPart("unclosed{tag"), "unclosed{tag");
  EXPECT_EQ(HashPart(""), "");
  EXPECT_EQ(KeyHash("user:{42}:name"), KeyHash("user:{42}:email"));
  EXPECT_EQ(KeyHash("x{42}"), KeyHash("42"));
  EXPECT_NE(KeyHash("a"), KeyHash("b"));
}

// Pins the hash function: these values must never change, or every stored
// key would move to another shard.
TEST(KeyHash, IsStableAcrossBuilds) {
  EXPECT_EQ(KeyHash(""), 0x2d06800538d394c2ULL);
  EXPECT_EQ(KeyHash("a"), 0xe6c632b61e964e1fULL);
  EXPECT_EQ(KeyHash(std::string("\x00\xff", 2)), KeyHash(std::string("\x00\xff", 2)));
}

TEST(KeyHash, ShardRangesAreContiguousAndCoverTheHashSpace) {
  for (uint32_t n : {1u, 2u, 3u, 7u, 16u, 1000u}) {
    EXPECT_EQ(HashRangeStart(0, n), 0u);
    EXPECT_EQ(ShardForHash(0, n), 0u);
    EXPECT_EQ(ShardForHash(std::numeric_limits<uint64_t>::max(), n), n - 1);
    for (uint32_t i = 1; i < n; ++i) {
      uint64_t start = HashRangeStart(i, n);
      EXPECT_EQ(ShardForHash(start, n), i) << "n=" << n << " i=" << i;
      EXPECT_EQ(ShardForHash(start - 1, n), i - 1) << "n=" << n << " i=" << i;
    }
  }
}

TEST(KeyHash, SpreadsKeysEvenly) {
  constexpr uint32_t kShards = 16;
  constexpr int kKeys = 160000;
  std::vector<int> counts(kShards);
  for (int i = 0; i < kKeys; ++i) ++counts[ShardForKey("key" + std::to_string(i), kShards)];
  for (uint32_t s = 0; s < kShards; ++s) {
    EXPECT_NEAR(counts[s], kKeys / kShards, kKeys / kShards * 0.05) << "shard " << s;
  }
}

}  // namespace
}  // namespace tessera
