// ReadCache: LRU by bytes, staleness bound, own writes, counters.
#include "client/read_cache.h"

#include <string>

#include "gtest/gtest.h"

namespace tessera::client {
namespace {

const absl::Time kT0 = absl::UnixEpoch() + absl::Hours(1);

CachedValue Val(const std::string& v, absl::Time at) { return {true, v, 1, at}; }

TEST(ReadCache, HitWithinStalenessMissBeyond) {
  ReadCache c(1 << 20);
  c.Fill("k", Val("v", kT0), c.ReadToken());
  std::optional<CachedValue> hit = c.Lookup("k", kT0 + absl::Seconds(1), absl::Seconds(2));
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->value, "v");
  EXPECT_FALSE(c.Lookup("k", kT0 + absl::Seconds(3), absl::Seconds(2)).has_value());
  EXPECT_FALSE(c.Lookup("other", kT0, absl::Seconds(2)).has_value());
  EXPECT_EQ(c.stats().hits, 1u);
  EXPECT_EQ(c.stats().misses, 2u);
}

TEST(ReadCache, BoundedByBytesEvictingLeastRecentlyUsed) {
  const size_t entry = ReadCache::kEntryOverheadBytes + 1 + 100;  // key "a".."d", 100-byte value
  ReadCache c(3 * entry);
  const std::string v(100, 'x');
  for (const char* k : {"a", "b", "c"}) c.Fill(k, Val(v, kT0), c.ReadToken());
  EXPECT_EQ(c.stats().bytes, 3 * entry);
  ASSERT_TRUE(c.Lookup("a", kT0, absl::Seconds(1)).has_value());  // a is now most recent
  c.Fill("d", Val(v, kT0), c.ReadToken());
  EXPECT_EQ(c.stats().entries, 3u);
  EXPECT_LE(c.stats().bytes, 3 * entry);
  EXPECT_FALSE(c.Lookup("b", kT0, absl::Seconds(1)).has_value());  // evicted
  EXPECT_TRUE(c.Lookup("a", kT0, absl::Seconds(1)).has_value());
  EXPECT_TRUE(c.Lookup("d", kT0, absl::Seconds(1)).has_value());
  // An entry larger than the whole cache is not stored.
  c.Fill("huge", Val(std::string(4 * entry, 'y'), kT0), c.ReadToken());
  EXPECT_FALSE(c.Lookup("huge", kT0, absl::Seconds(1)).has_value());
}

TEST(ReadCache, OwnWritesReplaceTheCachedValue) {
  ReadCache c(1 << 20);
  c.Fill("k", Val("old", kT0), c.ReadToken());
  c.BeginWrite("k");
  EXPECT_FALSE(c.Lookup("k", kT0, absl::Seconds(10)).has_value());
  c.EndWrite("k", CachedValue{true, "new", 2, kT0});
  EXPECT_EQ(c.Lookup("k", kT0, absl::Seconds(10))->value, "new");
  // A failed write (outcome unknown) leaves the key uncached.
  c.BeginWrite("k");
  c.EndWrite("k", std::nullopt);
  EXPECT_FALSE(c.Lookup("k", kT0, absl::Seconds(10)).has_value());
}

TEST(ReadCache, ReadThatRacedAWriteDoesNotFill) {
  ReadCache c(1 << 20);
  const uint64_t token = c.ReadToken();  // read sent
  c.BeginWrite("k");                     // own write starts and ends meanwhile
  c.EndWrite("k", CachedValue{true, "new", 2, kT0});
  c.Fill("k", Val("old", kT0), token);  // the read's (older) answer arrives
  EXPECT_EQ(c.Lookup("k", kT0, absl::Seconds(10))->value, "new");
}

TEST(ReadCache, DisabledWithZeroBytes) {
  ReadCache c(0);
  c.Fill("k", Val("v", kT0), c.ReadToken());
  EXPECT_FALSE(c.Lookup("k", kT0, absl::Seconds(10)).has_value());
  EXPECT_EQ(c.stats().misses, 0u);
}

}  // namespace
}  // namespace tessera::client
