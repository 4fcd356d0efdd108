// RouteTable and the key -> shard rule as the client uses them.
#include "client/routing.h"

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/key_hash.h"
#include "proto/testing/status_matchers.h"

namespace tessera::client {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;

// A map with `members` nodes (ids 1..members) and `shards` shards, 3
// replicas each, placed by rendezvous hashing over the member ids (adding
// or removing a member moves only that member's replicas).
v1::ClusterMap MakeMap(const std::vector<uint64_t>& members, uint32_t shards, uint64_t epoch) {
  v1::ClusterMap map;
  map.set_epoch(epoch);
  map.set_num_shards(shards);
  map.set_replication(3);
  for (uint64_t id : members) {
    v1::Member* m = map.add_members();
    m->set_id(id);
    m->set_client_address(absl::StrCat("10.0.0.", id, ":7001"));
  }
  for (uint32_t s = 0; s < shards; ++s) {
    v1::ShardInfo* info = map.add_shards();
    info->set_id(s);
    info->set_hash_start(HashRangeStart(s, shards));
    info->set_hash_end(s + 1 < shards ? HashRangeStart(s + 1, shards) - 1 : UINT64_MAX);
    std::vector<std::pair<uint64_t, uint64_t>> weights;
    for (uint64_t id : members) {
      weights.push_back({KeyHash(absl::StrCat("placement:", s, ":", id)), id});
    }
    std::sort(weights.rbegin(), weights.rend());
    for (size_t i = 0; i < 3 && i < weights.size(); ++i) info->add_replicas(weights[i].second);
  }
  return map;
}

TEST(Routing, KeysSpreadUniformlyOverShards) {
  RouteTable routes;
  ASSERT_THAT(routes.Update(MakeMap({1, 2, 3}, 16, 5)), IsOk());
  std::vector<int> counts(16, 0);
  constexpr int kKeys = 160000;
  for (int i = 0; i < kKeys; ++i) ++counts[*routes.ShardForKey(absl::StrCat("user:", i))];
  for (int c : counts) {
    EXPECT_GT(c, kKeys / 16 * 0.9);
    EXPECT_LT(c, kKeys / 16 * 1.1);
  }
}

TEST(Routing, MapRangesAgreeWithKeyHash) {
  for (uint32_t shards : {1u, 3u, 16u, 64u}) {
    RouteTable routes;
    ASSERT_THAT(routes.Update(MakeMap({1, 2, 3}, shards, 5)), IsOk());
    std::mt19937_64 rng(42);
    for (int i = 0; i < 20000; ++i) {
      const uint64_t h = rng();
      ASSERT_EQ(*routes.ShardForHashInMap(h), ShardForHash(h, shards)) << h;
    }
    for (uint32_t s = 0; s < shards; ++s) {
      const uint64_t start = HashRangeStart(s, shards);
      EXPECT_EQ(*routes.ShardForHashInMap(start), s);
      if (start > 0) {
        EXPECT_EQ(*routes.ShardForHashInMap(start - 1), s - 1);
      }
    }
    EXPECT_EQ(*routes.ShardForHashInMap(UINT64_MAX), shards - 1);
    for (int i = 0; i < 1000; ++i) {
      const std::string key = absl::StrCat("k", i);
      EXPECT_EQ(*routes.ShardForKey(key), ShardForKey(key, shards));
      EXPECT_EQ(*routes.ShardForHashInMap(KeyHash(key)), *routes.ShardForKey(key));
    }
  }
}

TEST(Routing, HashTagsShareAShard) {
  RouteTable routes;
  ASSERT_THAT(routes.Update(MakeMap({1, 2, 3}, 16, 5)), IsOk());
  EXPECT_EQ(*routes.ShardForKey("acct:{42}:balance"), *routes.ShardForKey("acct:{42}:owner"));
}

TEST(Routing, RejectsMapsWhoseRangesDoNotTileTheHashSpace) {
  RouteTable routes;
  v1::ClusterMap bad = MakeMap({1, 2, 3}, 4, 5);
  bad.mutable_shards(1)->set_hash_start(bad.shards(1).hash_start() + 1);
  EXPECT_THAT(routes.Update(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_FALSE(routes.has_map());
  v1::ClusterMap empty;
  EXPECT_THAT(routes.Update(empty), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Routing, RoutesByTheMapsRangesAfterASplit) {
  RouteTable routes;
  v1::ClusterMap map = MakeMap({1, 2, 3}, 4, 5);
  ASSERT_THAT(routes.Update(map), IsOk());
  routes.SetLeader(1, "10.0.0.1:7001");
  // Shard 1 splits: 4 takes the upper half of its range.
  const uint64_t start = map.shards(1).hash_start();
  const uint64_t end = map.shards(1).hash_end();
  const uint64_t mid = start + (end - start) / 2 + 1;
  v1::ClusterMap split = map;
  split.set_version(2);
  split.set_epoch(6);
  split.set_num_shards(5);
  split.mutable_shards(1)->set_hash_end(mid - 1);
  split.mutable_shards(1)->set_range_version(2);
  v1::ShardInfo* upper = split.add_shards();
  *upper = map.shards(1);
  upper->set_id(4);
  upper->set_hash_start(mid);
  upper->set_range_version(2);
  std::vector<std::pair<uint32_t, uint32_t>> splits;
  ASSERT_THAT(routes.Update(split, nullptr, &splits), IsOk());
  EXPECT_THAT(splits, ElementsAre(std::make_pair(4u, 1u)));  // 4 came from 1
  EXPECT_EQ(*routes.ShardForHashInMap(mid), 4u);
  EXPECT_EQ(*routes.ShardForHashInMap(mid - 1), 1u);
  EXPECT_EQ(*routes.ShardForHashInMap(end + 1), 2u);
  EXPECT_EQ(*routes.ShardForHashInMap(UINT64_MAX), 3u);
  EXPECT_EQ(routes.Route(1)->range_version, 2u);
  EXPECT_EQ(routes.Route(4)->range_version, 2u);
  EXPECT_EQ(*routes.Route(1)->leader, "10.0.0.1:7001");  // the lower half kept its leader
  for (int i = 0; i < 2000; ++i) {
    const std::string key = absl::StrCat("k", i);
    const uint64_t h = KeyHash(key);
    const uint32_t want = h >= mid && h <= end ? 4 : ShardForKey(key, 4);
    EXPECT_EQ(*routes.ShardForKey(key), want) << key;
  }
  // A gap, an overlap or a range past the end is refused; the map stays.
  v1::ClusterMap bad = split;
  bad.set_version(3);
  bad.mutable_shards(4)->set_hash_start(mid + 1);
  EXPECT_THAT(routes.Update(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad.mutable_shards(4)->set_hash_start(mid - 1);
  EXPECT_THAT(routes.Update(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad.mutable_shards(4)->set_hash_start(mid);
  bad.mutable_shards(3)->set_hash_end(UINT64_MAX - 1);
  EXPECT_THAT(routes.Update(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(routes.version(), 2u);
}

TEST(Routing, NoMapNoRoute) {
  RouteTable routes;
  EXPECT_FALSE(routes.ShardForKey("k").has_value());
  EXPECT_FALSE(routes.Route(0).has_value());
}

TEST(Routing, LeaderCacheFollowsHintsAndForgets) {
  RouteTable routes;
  ASSERT_THAT(routes.Update(MakeMap({1, 2, 3}, 4, 5)), IsOk());
  EXPECT_FALSE(routes.Route(2)->leader.has_value());
  routes.SetLeader(2, "10.0.0.2:7001");
  EXPECT_EQ(*routes.Route(2)->leader, "10.0.0.2:7001");
  routes.ForgetLeader(2, "10.0.0.3:7001");  // not the cached one: kept
  EXPECT_EQ(*routes.Route(2)->leader, "10.0.0.2:7001");
  routes.ForgetLeader(2, "10.0.0.2:7001");
  EXPECT_FALSE(routes.Route(2)->leader.has_value());
}

TEST(Routing, MapLeaderHintsSeedTheCache) {
  RouteTable routes;
  v1::ClusterMap map = MakeMap({1, 2, 3}, 4, 5);
  map.mutable_shards(1)->set_leader(3);
  ASSERT_THAT(routes.Update(map), IsOk());
  EXPECT_EQ(*routes.Route(1)->leader, "10.0.0.3:7001");
}

TEST(Routing, MembershipChangeMovesOnlyAffectedLeaderEntries) {
  const uint32_t kShards = 64;
  RouteTable routes;
  v1::ClusterMap before = MakeMap({1, 2, 3, 4, 5}, kShards, 5);
  ASSERT_THAT(routes.Update(before), IsOk());
  // Every shard's leader is its first replica.
  for (const v1::ShardInfo& s : before.shards()) {
    routes.SetLeader(s.id(), absl::StrCat("10.0.0.", s.replicas(0), ":7001"));
  }
  // Member 5 leaves: only shards whose cached leader was 5 lose their entry.
  v1::ClusterMap after = MakeMap({1, 2, 3, 4}, kShards, 6);
  int expected_dropped = 0;
  for (const v1::ShardInfo& s : before.shards()) expected_dropped += s.replicas(0) == 5;
  int dropped = -1;
  ASSERT_THAT(routes.Update(after, &dropped), IsOk());
  EXPECT_EQ(dropped, expected_dropped);
  EXPECT_LT(dropped, static_cast<int>(kShards) / 2);
  for (const v1::ShardInfo& s : before.shards()) {
    std::optional<std::string> leader = routes.Route(s.id())->leader;
    if (s.replicas(0) == 5) {
      EXPECT_FALSE(leader.has_value());
    } else {
      EXPECT_EQ(*leader, absl::StrCat("10.0.0.", s.replicas(0), ":7001"));
    }
  }
  // A member joins: cached leaders that stay replicas are kept.
  v1::ClusterMap grown = MakeMap({1, 2, 3, 4, 6}, kShards, 7);
  ASSERT_THAT(routes.Update(grown, &dropped), IsOk());
  int lost = 0;
  for (const v1::ShardInfo& s : after.shards()) {
    const std::string leader = absl::StrCat("10.0.0.", s.replicas(0), ":7001");
    bool still_replica = false;
    for (uint64_t r : grown.shards(s.id()).replicas()) {
      still_replica = still_replica || absl::StrCat("10.0.0.", r, ":7001") == leader;
    }
    lost += !still_replica;
  }
  EXPECT_EQ(dropped, lost);
}

TEST(Routing, AShardWhoseRangeMovedDropsItsLeader) {
  RouteTable routes;
  ASSERT_THAT(routes.Update(MakeMap({1, 2, 3}, 4, 5)), IsOk());
  for (uint32_t s = 0; s < 4; ++s) routes.SetLeader(s, "10.0.0.1:7001");
  int dropped = 0;
  // Eight equal ranges: only shard 0 still starts where it did.
  ASSERT_THAT(routes.Update(MakeMap({1, 2, 3}, 8, 6), &dropped), IsOk());
  EXPECT_EQ(dropped, 3);
  EXPECT_EQ(*routes.Route(0)->leader, "10.0.0.1:7001");
  EXPECT_EQ(routes.num_shards(), 8u);
}

TEST(Routing, AnOlderMapIsIgnoredAndANewerOneInstalled) {
  RouteTable routes;
  v1::ClusterMap v3 = MakeMap({1, 2, 3}, 4, 5);
  v3.set_version(3);
  v3.mutable_shards(2)->set_range_version(2);
  ASSERT_THAT(routes.Update(v3), IsOk());
  EXPECT_EQ(routes.version(), 3u);
  EXPECT_EQ(routes.Route(2)->range_version, 2u);
  EXPECT_EQ(routes.Route(1)->range_version, 1u);  // 0 in the map reads as 1

  // A lagging node answers with the map it has: the newer one stays.
  v1::ClusterMap v2 = MakeMap({1, 2, 3, 4}, 8, 6);
  v2.set_version(2);
  ASSERT_THAT(routes.Update(v2), IsOk());
  EXPECT_EQ(routes.version(), 3u);
  EXPECT_EQ(routes.epoch(), 5u);
  EXPECT_EQ(routes.num_shards(), 4u);

  v1::ClusterMap v4 = MakeMap({1, 2, 3, 4}, 8, 7);
  v4.set_version(4);
  ASSERT_THAT(routes.Update(v4), IsOk());
  EXPECT_EQ(routes.version(), 4u);
  EXPECT_EQ(routes.epoch(), 7u);
  EXPECT_EQ(routes.num_shards(), 8u);
}

TEST(Routing, SameEpochNewerVersionIsInstalled) {
  RouteTable routes;
  ASSERT_THAT(routes.Update(MakeMap({1, 2, 3}, 4, 5)), IsOk());
  EXPECT_EQ(routes.version(), 1u);
  v1::ClusterMap next = MakeMap({1, 2, 3}, 4, 5);
  next.set_version(2);
  next.mutable_shards(0)->set_range_version(3);
  ASSERT_THAT(routes.Update(next), IsOk());
  EXPECT_EQ(routes.version(), 2u);
  EXPECT_EQ(routes.Route(0)->range_version, 3u);
}

}  // namespace
}  // namespace tessera::client
