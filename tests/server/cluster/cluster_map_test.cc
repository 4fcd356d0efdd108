#include "server/cluster/cluster_map.h"

#include <algorithm>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/key_hash.h"
#include "proto/testing/status_matchers.h"

namespace tessera::server {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

std::vector<MemberInfo> Members(int first, int count) {
  std::vector<MemberInfo> members;
  for (int id = first; id < first + count; ++id) {
    members.push_back({.id = static_cast<NodeId>(id),
                       .client_address = absl::StrCat("127.0.0.1:", 7000 + id),
                       .peer_address = absl::StrCat("127.0.0.1:", 8000 + id)});
  }
  return members;
}

TEST(ClusterMap, ParsesMembersWithBothAddresses) {
  absl::StatusOr<ClusterMap> map = ClusterMap::Parse(
      " 2=127.0.0.1:7002/127.0.0.1:7102, 1 = 127.0.0.1:7001 / 127.0.0.1:7101 ", 4, 3);
  ASSERT_THAT(map, IsOk());
  ASSERT_EQ(map->members().size(), 2u);
  EXPECT_EQ(map->members()[0].id, 1u);
  EXPECT_EQ(map->members()[0].client_address, "127.0.0.1:7001");
  EXPECT_EQ(map->members()[0].peer_address, "127.0.0.1:7101");
  EXPECT_EQ(map->members()[1].id, 2u);
  EXPECT_EQ(map->replication(), 2u);  // capped at the member count
  EXPECT_EQ(map->num_shards(), 4u);
  for (const ShardLayout& shard : map->shards()) EXPECT_EQ(shard.replicas.size(), 2u);
  ASSERT_NE(map->FindMember(2), nullptr);
  EXPECT_EQ(map->FindMember(2)->client_address, "127.0.0.1:7002");
  EXPECT_EQ(map->FindMember(3), nullptr);
}

TEST(ClusterMap, IdenticalInputGivesIdenticalMap) {
  std::vector<MemberInfo> members = Members(1, 5);
  absl::StatusOr<ClusterMap> a = ClusterMap::Create(members, 64, 3);
  std::reverse(members.begin(), members.end());
  absl::StatusOr<ClusterMap> b = ClusterMap::Create(members, 64, 3);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(a->epoch(), b->epoch());
  EXPECT_NE(a->epoch(), 0u);
  EXPECT_EQ(a->ToProto().SerializeAsString(), b->ToProto().SerializeAsString());
}

TEST(ClusterMap, PlacementIsStableAcrossBuilds) {
  // Part of the placement contract: these values must never change.
  EXPECT_EQ(PlacementWeight(0, 1), 935533381143019749u);
  EXPECT_EQ(PlacementWeight(3, 2), 8981066839643278175u);
  EXPECT_NE(PlacementWeight(0, 1), PlacementWeight(1, 0));
  absl::StatusOr<ClusterMap> map = ClusterMap::Create(Members(1, 3), 16, 3);
  ASSERT_THAT(map, IsOk());
  absl::StatusOr<ClusterMap> again = ClusterMap::Create(Members(1, 3), 16, 3);
  ASSERT_THAT(again, IsOk());
  for (uint32_t s = 0; s < 16; ++s) {
    EXPECT_EQ(map->shards()[s].replicas, again->shards()[s].replicas);
    std::set<NodeId> distinct(map->shards()[s].replicas.begin(), map->shards()[s].replicas.end());
    EXPECT_EQ(distinct, (std::set<NodeId>{1, 2, 3}));
  }
}

TEST(ClusterMap, EpochChangesWithConfiguration) {
  uint64_t base = ClusterMap::Create(Members(1, 3), 16, 3)->epoch();
  EXPECT_NE(base, ClusterMap::Create(Members(1, 3), 32, 3)->epoch());
  EXPECT_NE(base, ClusterMap::Create(Members(1, 3), 16, 2)->epoch());
  EXPECT_NE(base, ClusterMap::Create(Members(1, 4), 16, 3)->epoch());
  std::vector<MemberInfo> moved = Members(1, 3);
  moved[1].client_address = "127.0.0.1:9999";
  EXPECT_NE(base, ClusterMap::Create(moved, 16, 3)->epoch());
}

TEST(ClusterMap, ShardRangesTileTheHashSpaceAndMatchKeyRouting) {
  absl::StatusOr<ClusterMap> map = ClusterMap::Create(Members(1, 3), 7, 3);
  ASSERT_THAT(map, IsOk());
  const std::vector<ShardLayout>& shards = map->shards();
  ASSERT_EQ(shards.size(), 7u);
  EXPECT_EQ(shards.front().hash_start, 0u);
  EXPECT_EQ(shards.back().hash_end, ~uint64_t{0});
  for (size_t i = 1; i < shards.size(); ++i) {
    EXPECT_EQ(shards[i].hash_start, shards[i - 1].hash_end + 1);
  }
  for (int k = 0; k < 1000; ++k) {
    std::string key = absl::StrCat("key-", k);
    uint64_t hash = KeyHash(key);
    const ShardLayout& shard = shards[ShardForKey(key, 7)];
    EXPECT_GE(hash, shard.hash_start);
    EXPECT_LE(hash, shard.hash_end);
  }
}

TEST(ClusterMap, PlacementIsUniform) {
  constexpr int kMembers = 10;
  constexpr uint32_t kShards = 2000;
  absl::StatusOr<ClusterMap> map = ClusterMap::Create(Members(1, kMembers), kShards, 3);
  ASSERT_THAT(map, IsOk());
  std::map<NodeId, int> replicas;
  std::map<NodeId, int> first;
  for (const ShardLayout& shard : map->shards()) {
    ASSERT_EQ(shard.replicas.size(), 3u);
    std::set<NodeId> distinct(shard.replicas.begin(), shard.replicas.end());
    EXPECT_EQ(distinct.size(), 3u);
    for (NodeId r : shard.replicas) ++replicas[r];
    ++first[shard.replicas[0]];
  }
  const double expected = kShards * 3.0 / kMembers;  // 600
  for (const MemberInfo& m : map->members()) {
    EXPECT_GT(replicas[m.id], expected * 0.85) << "member " << m.id;
    EXPECT_LT(replicas[m.id], expected * 1.15) << "member " << m.id;
    EXPECT_GT(first[m.id], kShards / kMembers * 0.75) << "member " << m.id;
    EXPECT_LT(first[m.id], kShards / kMembers * 1.25) << "member " << m.id;
    EXPECT_EQ(map->ShardsOf(m.id).size(), static_cast<size_t>(replicas[m.id]));
  }
}

TEST(ClusterMap, AddingAMemberMovesOnlyItsShare) {
  constexpr uint32_t kShards = 1000;
  absl::StatusOr<ClusterMap> before = ClusterMap::Create(Members(1, 10), kShards, 3);
  absl::StatusOr<ClusterMap> after = ClusterMap::Create(Members(1, 11), kShards, 3);
  ASSERT_THAT(before, IsOk());
  ASSERT_THAT(after, IsOk());
  int moved = 0;
  for (uint32_t s = 0; s < kShards; ++s) {
    std::set<NodeId> old_set(before->shards()[s].replicas.begin(),
                             before->shards()[s].replicas.end());
    std::set<NodeId> new_set(after->shards()[s].replicas.begin(),
                             after->shards()[s].replicas.end());
    if (old_set == new_set) continue;
    // Only the newcomer enters, and it displaces exactly one old replica.
    EXPECT_TRUE(new_set.count(11)) << "shard " << s;
    std::vector<NodeId> lost;
    std::set_difference(old_set.begin(), old_set.end(), new_set.begin(), new_set.end(),
                        std::back_inserter(lost));
    EXPECT_EQ(lost.size(), 1u) << "shard " << s;
    ++moved;
  }
  // The newcomer's fair share is 3/11 of the shards (~273).
  EXPECT_GT(moved, 200);
  EXPECT_LT(moved, 350);
}

TEST(ClusterMap, RemovingAMemberMovesOnlyItsReplicas) {
  constexpr uint32_t kShards = 1000;
  absl::StatusOr<ClusterMap> before = ClusterMap::Create(Members(1, 10), kShards, 3);
  std::vector<MemberInfo> fewer = Members(1, 10);
  fewer.erase(fewer.begin() + 4);  // member 5 leaves
  absl::StatusOr<ClusterMap> after = ClusterMap::Create(fewer, kShards, 3);
  ASSERT_THAT(before, IsOk());
  ASSERT_THAT(after, IsOk());
  for (uint32_t s = 0; s < kShards; ++s) {
    std::set<NodeId> old_set(before->shards()[s].replicas.begin(),
                             before->shards()[s].replicas.end());
    std::set<NodeId> new_set(after->shards()[s].replicas.begin(),
                             after->shards()[s].replicas.end());
    EXPECT_FALSE(new_set.count(5));
    if (!old_set.count(5)) {
      EXPECT_EQ(old_set, new_set) << "shard " << s;
      continue;
    }
    old_set.erase(5);
    for (NodeId kept : old_set) EXPECT_TRUE(new_set.count(kept)) << "shard " << s;
  }
}

TEST(ClusterMap, ToProtoCarriesEverything) {
  absl::StatusOr<ClusterMap> map = ClusterMap::Create(Members(1, 3), 4, 3);
  ASSERT_THAT(map, IsOk());
  v1::ClusterMap proto = map->ToProto();
  EXPECT_EQ(proto.epoch(), map->epoch());
  EXPECT_EQ(proto.num_shards(), 4u);
  EXPECT_EQ(proto.replication(), 3u);
  ASSERT_EQ(proto.members_size(), 3);
  EXPECT_EQ(proto.members(2).id(), 3u);
  EXPECT_EQ(proto.members(2).client_address(), "127.0.0.1:7003");
  EXPECT_EQ(proto.members(2).peer_address(), "127.0.0.1:8003");
  ASSERT_EQ(proto.shards_size(), 4);
  for (int s = 0; s < 4; ++s) {
    EXPECT_EQ(proto.shards(s).id(), static_cast<uint32_t>(s));
    EXPECT_EQ(proto.shards(s).hash_start(), map->shards()[s].hash_start);
    EXPECT_EQ(proto.shards(s).hash_end(), map->shards()[s].hash_end);
    EXPECT_EQ(proto.shards(s).replicas_size(), 3);
    EXPECT_EQ(proto.shards(s).leader(), 0u);
  }
}

TEST(ClusterMap, RejectsBadInputWithOneLineMessages) {
  struct Case {
    std::string text;
    uint32_t shards;
    uint32_t replication;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"", 16, 3, "empty"},
      {"1=127.0.0.1:1/127.0.0.1:2,", 16, 3, "member ''"},
      {"1", 16, 3, "is not"},
      {"1=127.0.0.1:1", 16, 3, "two addresses"},
      {"1=127.0.0.1:1/127.0.0.1:2/127.0.0.1:3", 16, 3, "two addresses"},
      {"x=127.0.0.1:1/127.0.0.1:2", 16, 3, "bad id"},
      {"-1=127.0.0.1:1/127.0.0.1:2", 16, 3, "bad id"},
      {"0=127.0.0.1:1/127.0.0.1:2", 16, 3, "reserved"},
      {"1=127.0.0.1:1/127.0.0.1:2,1=127.0.0.1:3/127.0.0.1:4", 16, 3, "twice"},
      {"1=127.0.0.1:1/127.0.0.1:2,2=127.0.0.1:1/127.0.0.1:4", 16, 3, "used twice"},
      {"1=127.0.0.1/127.0.0.1:2", 16, 3, "host:port"},
      {"1=127.0.0.1:70000/127.0.0.1:2", 16, 3, "bad port"},
      {"1=127.0.0.1:1/127.0.0.1:x", 16, 3, "bad port"},
      {"1=:1/127.0.0.1:2", 16, 3, "host:port"},
      {"1=127.0.0.1:1/127.0.0.1:2", 0, 3, "shards"},
      {"1=127.0.0.1:1/127.0.0.1:2", kMaxNumShards + 1, 3, "shards"},
      {"1=127.0.0.1:1/127.0.0.1:2", 16, 0, "replication"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ClusterMap> map = ClusterMap::Parse(c.text, c.shards, c.replication);
    EXPECT_THAT(map, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)))
        << "input '" << c.text << "'";
    if (!map.ok()) {
      EXPECT_EQ(map.status().message().find('\n'), absl::string_view::npos);
    }
  }
}

TEST(ClusterMap, MetaGroupIsEveryMemberUpToFiveByTheSameRule) {
  ClusterMap three = *ClusterMap::Create(Members(1, 3), 8, 3);
  std::vector<NodeId> meta = three.meta_replicas();
  std::sort(meta.begin(), meta.end());
  EXPECT_EQ(meta, (std::vector<NodeId>{1, 2, 3}));
  EXPECT_TRUE(three.HostsMeta(2));

  ClusterMap eleven = *ClusterMap::Create(Members(1, 11), 8, 3);
  ASSERT_EQ(eleven.meta_replicas().size(), kMetaReplication);
  // The heaviest members for kMetaShard, by decreasing weight.
  std::vector<std::pair<uint64_t, NodeId>> weights;
  for (NodeId m = 1; m <= 11; ++m) weights.push_back({PlacementWeight(kMetaShard, m), m});
  std::sort(weights.rbegin(), weights.rend());
  for (size_t r = 0; r < kMetaReplication; ++r) {
    EXPECT_EQ(eleven.meta_replicas()[r], weights[r].second);
  }
  EXPECT_FALSE(eleven.HostsMeta(weights[kMetaReplication].second));
  // Not a client shard: neither in the map nor hosted as one.
  EXPECT_GT(kMetaShard, static_cast<ShardId>(std::numeric_limits<uint32_t>::max()));
  EXPECT_EQ(eleven.ToProto().shards_size(), 8);
  EXPECT_FALSE(eleven.Hosts(weights[0].second, kMetaShard));
}

TEST(ClusterMap, FromProtoRebuildsTheSameMapAndRejectsAnotherPlacement) {
  ClusterMap map = *ClusterMap::Create(Members(1, 4), 8, 3);
  v1::ClusterMap proto = map.ToProto();
  proto.mutable_shards(0)->set_leader(2);  // hints are ignored
  absl::StatusOr<ClusterMap> rebuilt = ClusterMap::FromProto(proto);
  ASSERT_THAT(rebuilt, IsOk());
  EXPECT_EQ(rebuilt->epoch(), map.epoch());
  EXPECT_EQ(rebuilt->ToProto().SerializeAsString(), map.ToProto().SerializeAsString());
  EXPECT_EQ(rebuilt->meta_replicas(), map.meta_replicas());

  v1::ClusterMap moved = map.ToProto();
  std::swap(*moved.mutable_shards(0)->mutable_replicas()->Mutable(0),
            *moved.mutable_shards(0)->mutable_replicas()->Mutable(1));
  EXPECT_THAT(ClusterMap::FromProto(moved), StatusIs(absl::StatusCode::kFailedPrecondition));
  v1::ClusterMap no_members = map.ToProto();
  no_members.clear_members();
  EXPECT_THAT(ClusterMap::FromProto(no_members), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ClusterMap, BootstrapMapIsVersionOneWithShardVersionsOne) {
  ClusterMap map = *ClusterMap::Create(Members(1, 4), 8, 3);
  EXPECT_EQ(map.version(), 1u);
  const v1::ClusterMap proto = map.ToProto();
  EXPECT_EQ(proto.version(), 1u);
  for (const v1::ShardInfo& s : proto.shards()) {
    EXPECT_EQ(s.conf_version(), 1u) << s.id();
    EXPECT_EQ(s.range_version(), 1u) << s.id();
  }
}

TEST(ClusterMap, FromProtoReadsMissingVersionsAsOneAndKeepsHigherOnes) {
  ClusterMap map = *ClusterMap::Create(Members(1, 4), 8, 3);
  // As a build from before versions wrote it.
  v1::ClusterMap old = map.ToProto();
  old.clear_version();
  for (v1::ShardInfo& s : *old.mutable_shards()) {
    s.clear_conf_version();
    s.clear_range_version();
  }
  absl::StatusOr<ClusterMap> read = ClusterMap::FromProto(old);
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(read->version(), 1u);
  EXPECT_EQ(read->ToProto().SerializeAsString(), map.ToProto().SerializeAsString());

  v1::ClusterMap later = map.ToProto();
  later.set_version(7);
  later.mutable_shards(3)->set_range_version(2);
  later.mutable_shards(5)->set_conf_version(4);
  read = ClusterMap::FromProto(later);
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(read->version(), 7u);
  EXPECT_EQ(read->shards()[3].range_version, 2u);
  EXPECT_EQ(read->shards()[3].conf_version, 1u);
  EXPECT_EQ(read->shards()[5].conf_version, 4u);
  EXPECT_EQ(read->ToProto().SerializeAsString(), later.SerializeAsString());
}

TEST(ClusterMap, FromProtoIgnoresFieldsFromNewerBuilds) {
  ClusterMap map = *ClusterMap::Create(Members(1, 3), 4, 3);
  std::string bytes = map.ToProto().SerializeAsString();
  // Field 99 (varint 5) at the top level, as a newer build might add one.
  bytes += std::string("\x98\x06\x05", 3);
  v1::ClusterMap newer;
  ASSERT_TRUE(newer.ParseFromString(bytes));
  absl::StatusOr<ClusterMap> read = ClusterMap::FromProto(newer);
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(read->epoch(), map.epoch());
}

TEST(ClusterMapCache, OnlyMovesForward) {
  ClusterMapCache cache;
  v1::ClusterMap proto = ClusterMap::Create(Members(1, 3), 4, 3)->ToProto();
  proto.set_version(3);
  auto v3 = std::make_shared<const ClusterMap>(*ClusterMap::FromProto(proto));
  proto.set_version(2);
  auto v2 = std::make_shared<const ClusterMap>(*ClusterMap::FromProto(proto));
  proto.set_version(4);
  auto v4 = std::make_shared<const ClusterMap>(*ClusterMap::FromProto(proto));
  EXPECT_TRUE(cache.Set(v3));
  EXPECT_FALSE(cache.Set(v2));
  EXPECT_EQ(cache.Current()->version(), 3u);
  EXPECT_TRUE(cache.Set(v3));  // the same version again: harmless
  EXPECT_TRUE(cache.Set(v4));
  EXPECT_EQ(cache.Current()->version(), 4u);
}

TEST(ClusterMap, AMoveIsRecordedAsTheNextVersionAndReadBack) {
  ClusterMap map = *ClusterMap::Create(Members(1, 4), 8, 3);
  const ShardLayout& before = map.shards()[2];
  NodeId outside = 0;
  for (const MemberInfo& m : map.members()) {
    if (!map.Hosts(m.id, 2)) outside = m.id;
  }
  ASSERT_NE(outside, 0u);
  // Step 1: the new replica joins as a learner.
  absl::StatusOr<ClusterMap> learning =
      map.WithShardReplicas(2, before.replicas, {outside}, before.replicas[2], outside);
  ASSERT_THAT(learning, IsOk());
  EXPECT_EQ(learning->version(), 2u);
  EXPECT_EQ(learning->shards()[2].conf_version, 2u);
  EXPECT_EQ(learning->shards()[2].range_version, 1u);
  EXPECT_FALSE(learning->Hosts(outside, 2));  // not routed to
  std::vector<ShardId> on_outside = learning->ReplicasOn(outside);
  EXPECT_NE(std::find(on_outside.begin(), on_outside.end(), 2u), on_outside.end());
  EXPECT_EQ(map.version(), 1u);  // unchanged
  // Step 2: it replaces the old one.
  std::vector<NodeId> after = {before.replicas[0], before.replicas[1], outside};
  absl::StatusOr<ClusterMap> moved = learning->WithShardReplicas(2, after, {}, 0, 0);
  ASSERT_THAT(moved, IsOk());
  EXPECT_EQ(moved->version(), 3u);
  EXPECT_TRUE(moved->Hosts(outside, 2));
  EXPECT_FALSE(moved->Hosts(before.replicas[2], 2));
  EXPECT_EQ(moved->epoch(), map.epoch());

  // The wire form carries all of it, and a reader rebuilds the same map.
  absl::StatusOr<ClusterMap> read = ClusterMap::FromProto(learning->ToProto());
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(read->ToProto().SerializeAsString(), learning->ToProto().SerializeAsString());
  EXPECT_EQ(read->shards()[2].move_to, outside);
  read = ClusterMap::FromProto(moved->ToProto());
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(read->shards()[2].replicas, after);
}

TEST(ClusterMap, ARecordedMapMustNameMembersOnceAndKeepTheRanges) {
  ClusterMap map = *ClusterMap::Create(Members(1, 4), 8, 3);
  EXPECT_THAT(map.WithShardReplicas(9, {1}, {}, 0, 0),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(map.WithShardReplicas(1, {}, {2}, 0, 0),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(map.WithShardReplicas(1, {1, 2, 2}, {}, 0, 0),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(map.WithShardReplicas(1, {1, 2}, {2}, 0, 0),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(map.WithShardReplicas(1, {1, 2, 99}, {}, 0, 0),
              StatusIs(absl::StatusCode::kInvalidArgument));

  const v1::ClusterMap good = map.WithShardReplicas(1, {1, 2, 3}, {}, 0, 0)->ToProto();
  ASSERT_THAT(ClusterMap::FromProto(good), IsOk());
  v1::ClusterMap bad = good;
  bad.mutable_shards(1)->add_replicas(77);  // not a member
  EXPECT_THAT(ClusterMap::FromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = good;
  bad.mutable_shards(1)->clear_replicas();
  EXPECT_THAT(ClusterMap::FromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = good;
  bad.mutable_shards(1)->add_learners(1);  // voter and learner at once
  EXPECT_THAT(ClusterMap::FromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = good;
  bad.mutable_shards(1)->set_hash_end(good.shards(1).hash_end() - 1);  // a gap
  EXPECT_THAT(ClusterMap::FromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = good;
  bad.mutable_shards(2)->set_hash_start(good.shards(2).hash_start() - 1);  // an overlap
  EXPECT_THAT(ClusterMap::FromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = good;
  std::swap(*bad.mutable_shards(1), *bad.mutable_shards(2));  // ids out of order
  EXPECT_THAT(ClusterMap::FromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = good;
  bad.set_epoch(good.epoch() + 1);
  EXPECT_THAT(ClusterMap::FromProto(bad), StatusIs(absl::StatusCode::kFailedPrecondition));
  bad = good;
  bad.add_meta_replicas(1);  // listed twice
  EXPECT_THAT(ClusterMap::FromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ClusterMap, ASplitGivesTheUpperHalfANewShardAndKeysFollowTheRanges) {
  ClusterMap map = *ClusterMap::Create(Members(1, 4), 4, 3);
  const ShardLayout parent = map.shards()[1];
  const uint64_t mid = parent.hash_start + (parent.hash_end - parent.hash_start) / 2 + 1;
  EXPECT_THAT(map.WithSplit(1, parent.hash_start), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(map.WithSplit(1, parent.hash_end + 1), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(map.WithSplit(4, mid), StatusIs(absl::StatusCode::kInvalidArgument));
  absl::StatusOr<ClusterMap> split = map.WithSplit(1, mid);
  ASSERT_THAT(split, IsOk());
  EXPECT_EQ(split->version(), map.version() + 1);
  EXPECT_NE(split->epoch(), map.epoch());
  ASSERT_EQ(split->num_shards(), 5u);
  const ShardLayout& lower = split->shards()[1];
  const ShardLayout& upper = split->shards()[4];
  EXPECT_EQ(lower.hash_start, parent.hash_start);
  EXPECT_EQ(lower.hash_end, mid - 1);
  EXPECT_EQ(upper.id, 4u);
  EXPECT_EQ(upper.hash_start, mid);
  EXPECT_EQ(upper.hash_end, parent.hash_end);
  EXPECT_EQ(lower.range_version, parent.range_version + 1);
  EXPECT_EQ(upper.range_version, lower.range_version);
  EXPECT_EQ(upper.replicas, parent.replicas);
  EXPECT_EQ(upper.conf_version, parent.conf_version);
  // Every other shard is untouched; keys of the upper half now go to 4.
  for (ShardId s : {0, 2, 3}) {
    EXPECT_EQ(split->shards()[s].hash_start, map.shards()[s].hash_start);
    EXPECT_EQ(split->shards()[s].range_version, map.shards()[s].range_version);
  }
  int moved = 0;
  for (int i = 0; i < 4000; ++i) {
    const std::string key = absl::StrCat("k", i);
    const uint64_t h = KeyHash(key);
    const ShardId want = h >= mid && h <= parent.hash_end ? 4 : map.ShardForKey(key);
    EXPECT_EQ(split->ShardForKey(key), want) << key;
    moved += want == 4;
  }
  EXPECT_GT(moved, 300);  // about 4000 / 8
  EXPECT_EQ(split->ShardForHash(mid), 4u);
  EXPECT_EQ(split->ShardForHash(mid - 1), 1u);
  EXPECT_EQ(split->ShardForHash(UINT64_MAX), 3u);
  // The record reads back as the same map, and splits again.
  absl::StatusOr<ClusterMap> back = ClusterMap::FromProto(split->ToProto());
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->ToProto().SerializeAsString(), split->ToProto().SerializeAsString());
  EXPECT_EQ(back->ShardForHash(mid), 4u);
  absl::StatusOr<ClusterMap> again = back->WithSplit(4, mid + (parent.hash_end - mid) / 2 + 1);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->num_shards(), 6u);
  EXPECT_THAT(ClusterMap::FromProto(again->ToProto()), IsOk());
}

TEST(ClusterMap, MembersJoinEmptyAndLeaveOnlyEmpty) {
  ClusterMap map = *ClusterMap::Create(Members(1, 3), 4, 3);
  absl::StatusOr<ClusterMap> grown = map.WithMember(
      {.id = 9, .client_address = "127.0.0.1:9009", .peer_address = "127.0.0.1:9109"});
  ASSERT_THAT(grown, IsOk());
  EXPECT_EQ(grown->version(), 2u);
  EXPECT_NE(grown->FindMember(9), nullptr);
  EXPECT_TRUE(grown->ReplicasOn(9).empty());  // placement is a record now
  EXPECT_NE(grown->epoch(), map.epoch());
  EXPECT_EQ(grown->meta_replicas(), map.meta_replicas());
  ASSERT_THAT(ClusterMap::FromProto(grown->ToProto()), IsOk());
  EXPECT_THAT(map.WithMember({.id = 2, .client_address = "h:1", .peer_address = "h:2"}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // Members are bounded (each costs every node a connection and threads).
  std::vector<MemberInfo> many;
  for (NodeId id = 1; id <= kMaxMembers; ++id) {
    many.push_back({.id = id,
                    .client_address = absl::StrCat("127.0.0.1:", 10000 + id),
                    .peer_address = absl::StrCat("127.0.0.1:", 20000 + id)});
  }
  absl::StatusOr<ClusterMap> big = ClusterMap::Create(many, 4, 3);
  ASSERT_THAT(big, IsOk());
  EXPECT_THAT(
      big->WithMember(
          {.id = kMaxMembers + 1, .client_address = "127.0.0.1:1", .peer_address = "127.0.0.1:2"}),
      StatusIs(absl::StatusCode::kInvalidArgument));

  EXPECT_THAT(grown->WithoutMember(1), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(grown->WithoutMember(5), StatusIs(absl::StatusCode::kNotFound));
  absl::StatusOr<ClusterMap> shrunk = grown->WithoutMember(9);
  ASSERT_THAT(shrunk, IsOk());
  EXPECT_EQ(shrunk->version(), 3u);
  EXPECT_EQ(shrunk->FindMember(9), nullptr);
  EXPECT_EQ(shrunk->epoch(), map.epoch());
}

}  // namespace
}  // namespace tessera::server
