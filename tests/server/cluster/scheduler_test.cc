// Scheduler (server/cluster/scheduler.h) against a model of the cluster: a
// ClusterControl whose shards change configuration at once when asked, and
// which checks the rules a move must keep (never remove the leader, never
// fewer voters than before, never delete a replica the configuration still
// has). Each round runs on a NEW Scheduler, so nothing is carried between
// rounds: what a crashed scheduler's successor would do.
#include "server/cluster/scheduler.h"

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"

namespace tessera::server {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;

bool Has(const std::vector<NodeId>& ids, NodeId id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

class ModelCluster : public ClusterControl {
 public:
  struct Shard {
    std::vector<NodeId> voters;
    std::vector<NodeId> learners;
    NodeId leader = 0;
    uint64_t commit = 1000;
    uint64_t range_version = 0;  // 0: never split
    uint64_t hash_end = 0;
    uint64_t bytes = 0;
  };

  absl::StatusOr<std::vector<ShardStatus>> Status(NodeId node) override {
    if (down.contains(node)) return absl::UnavailableError("down");
    std::vector<ShardStatus> out;
    for (const auto& [shard, applied] : hosted[node]) {
      const Shard& sh = shards[shard];
      ShardStatus s;
      s.shard = shard;
      s.role = sh.leader == node ? "leader" : "follower";
      s.term = 1;
      s.leader = sh.leader;
      s.commit_index = sh.commit;
      s.applied_index = applied;
      s.voters = sh.voters;
      s.learners = sh.learners;
      s.range_version = sh.range_version;
      s.hash_end = sh.hash_end;
      s.approximate_bytes = sh.bytes;
      out.push_back(s);
    }
    return out;
  }

  absl::Status ProposeConfChange(NodeId node, ShardId shard,
                                 const raftpb::ConfChange& cc) override {
    Shard& sh = shards[shard];
    if (sh.leader != node) return absl::UnavailableError("not the leader");
    std::string call = absl::StrCat("shard ", shard, ":");
    const size_t voters_before = sh.voters.size();
    for (const raftpb::ConfChangeSingle& c : cc.changes()) {
      auto erase = [&](std::vector<NodeId>& v) {
        v.erase(std::remove(v.begin(), v.end(), c.node_id()), v.end());
      };
      erase(sh.voters);
      erase(sh.learners);
      if (c.type() == raftpb::CONF_CHANGE_ADD_LEARNER) {
        sh.learners.push_back(c.node_id());
        absl::StrAppend(&call, " learner ", c.node_id());
      } else if (c.type() == raftpb::CONF_CHANGE_ADD_NODE) {
        sh.voters.push_back(c.node_id());
        absl::StrAppend(&call, " voter ", c.node_id());
      } else {
        EXPECT_NE(c.node_id(), sh.leader) << "the leader was removed";
        absl::StrAppend(&call, " remove ", c.node_id());
      }
    }
    // Fewer voters only when a replica that lost its data leaves, or a
    // metadata replica the test allows to be dropped.
    const bool drop =
        cc.changes_size() == 1 && cc.changes(0).type() == raftpb::CONF_CHANGE_REMOVE_NODE;
    const NodeId dropped = drop ? cc.changes(0).node_id() : 0;
    if (!wiped.contains(dropped) && !(shard == kMetaShard && meta_droppable.contains(dropped))) {
      EXPECT_GE(sh.voters.size(), voters_before) << call;
    }
    calls.push_back(call);
    return absl::OkStatus();
  }

  absl::Status TransferLeader(NodeId node, ShardId shard, NodeId to) override {
    Shard& sh = shards[shard];
    if (sh.leader != node) return absl::UnavailableError("not the leader");
    EXPECT_TRUE(Has(sh.voters, to));
    sh.leader = to;
    calls.push_back(absl::StrCat("shard ", shard, ": leader ", to));
    return absl::OkStatus();
  }

  absl::Status RemoveReplica(NodeId node, ShardId shard) override {
    const Shard& sh = shards[shard];
    EXPECT_FALSE(Has(sh.voters, node) || Has(sh.learners, node)) << "deleted a member's replica";
    hosted[node].erase(shard);
    calls.push_back(absl::StrCat("shard ", shard, ": delete on ", node));
    return absl::OkStatus();
  }

  // Applies at once: the new shard is hosted where the old one is.
  absl::Status Split(NodeId node, ShardId shard, const serverpb::SplitShard& split) override {
    Shard& sh = shards[shard];
    if (sh.leader != node) return absl::UnavailableError("not the leader");
    EXPECT_TRUE(sh.learners.empty()) << "split during a move";
    EXPECT_EQ(std::max<uint64_t>(sh.range_version, 1), split.range_version());
    EXPECT_FALSE(shards.contains(split.new_shard())) << "new shard id taken";
    sh.range_version = split.range_version() + 1;
    sh.hash_end = split.split_hash() - 1;
    sh.bytes /= 2;
    Shard& child = shards[split.new_shard()];
    child = sh;
    child.hash_end = split.hash_end();
    for (NodeId v : sh.voters) hosted[v][split.new_shard()] = 1000;
    calls.push_back(absl::StrCat("shard ", shard, ": split into ", split.new_shard()));
    if (lose_split_answer) return absl::DeadlineExceededError("the answer was lost");
    return absl::OkStatus();
  }

  // What calls the last round made.
  std::vector<std::string> TakeCalls() { return std::exchange(calls, {}); }

  std::map<ShardId, Shard> shards;
  std::map<NodeId, std::map<ShardId, uint64_t>> hosted;  // node -> shard -> applied index
  std::set<NodeId> down;
  std::set<NodeId> wiped;           // lost their data (ClusterMap::WithReplaced)
  std::set<NodeId> meta_droppable;  // their metadata replica may go without a successor
  std::vector<std::string> calls;
  bool lose_split_answer = false;  // Split applies, but its caller hears nothing
};

class SchedulerTest : public ::testing::Test {
 protected:
  SchedulerTest() { Use(*ClusterMap::Create(Members(), 2, 2)); }

  // Starts over with `map`: each shard's first replica leads (or `leader`
  // when it holds one), every replica caught up.
  void Use(const ClusterMap& map, NodeId leader = 0) {
    maps_.Set(std::make_shared<const ClusterMap>(map));
    model_ = ModelCluster();
    for (const ShardLayout& s : map.shards()) {
      model_.shards[s.id] = {.voters = s.replicas,
                             .leader = Has(s.replicas, leader) ? leader : s.replicas[0]};
      for (NodeId r : s.replicas) model_.hosted[r][s.id] = 1000;
    }
    model_.shards[kMetaShard] = {.voters = map.meta_replicas(), .leader = map.meta_replicas()[0]};
    for (NodeId r : map.meta_replicas()) model_.hosted[r][kMetaShard] = 1000;
  }

  static std::vector<MemberInfo> Members() {
    std::vector<MemberInfo> members;
    for (NodeId id = 1; id <= 3; ++id) {
      members.push_back(
          {id, absl::StrCat("127.0.0.1:", 7000 + id), absl::StrCat("127.0.0.1:", 7100 + id)});
    }
    return members;
  }

  // One round by a scheduler that has never run before.
  std::vector<std::string> Round(SchedulerOptions options = {}) {
    Lasting(options)->RunOnceForTesting();
    return model_.TakeCalls();
  }

  // Adds member `id` (it hosts nothing yet).
  void AddMember(NodeId id) {
    absl::StatusOr<ClusterMap> grown =
        maps_.Current()->WithMember({.id = id,
                                     .client_address = absl::StrCat("127.0.0.1:", 7000 + id),
                                     .peer_address = absl::StrCat("127.0.0.1:", 7100 + id)});
    ASSERT_THAT(grown, IsOk());
    maps_.Set(std::make_shared<const ClusterMap>(*grown));
    model_.hosted[id];
  }

  // A scheduler whose thread never runs a round by itself: the test calls
  // RunOnceForTesting (kept across rounds, it measures between them).
  std::unique_ptr<Scheduler> Lasting(SchedulerOptions options) {
    options.interval = absl::Hours(1);
    return std::make_unique<Scheduler>(
        options,
        [this](const MetaGroup::Mutation& mutate) -> absl::StatusOr<ClusterMap> {
          absl::StatusOr<ClusterMap> next = mutate(*maps_.Current());
          if (next.ok()) maps_.Set(std::make_shared<const ClusterMap>(*next));
          return next;
        },
        [this] { return maps_.Current(); }, [] { return true; }, &model_,
        [](const std::string&) {});
  }

  // Marks member `id` leaving (remove-node) and lets the scheduler carry it
  // out.
  void LeaveAndSettle(NodeId id) {
    absl::StatusOr<ClusterMap> marked = maps_.Current()->WithLeaving(id);
    ASSERT_THAT(marked, IsOk());
    maps_.Set(std::make_shared<const ClusterMap>(*marked));
    Settle({});
  }

  // The metadata group's voters in raft are the map's, `left` is not their
  // leader, and its replica was deleted.
  void ExpectMetaLeft(NodeId left) {
    const ClusterMap& map = *maps_.Current();
    const ModelCluster::Shard& meta = model_.shards[kMetaShard];
    EXPECT_THAT(std::set<NodeId>(meta.voters.begin(), meta.voters.end()),
                ::testing::ContainerEq(
                    std::set<NodeId>(map.meta_replicas().begin(), map.meta_replicas().end())));
    EXPECT_NE(meta.leader, left);
    EXPECT_FALSE(model_.hosted[left].contains(kMetaShard));
  }

  // A round without balancing: only the moves recorded by hand.
  std::vector<std::string> Manual() { return Round({.balance = false}); }

  // Runs `rounds` rounds while every member that answers hosts what the map
  // lists on it (learners catch up a round later); returns the replicas
  // deleted (moves done), and the most moves in progress at once.
  int Settle(SchedulerOptions options, int* most_at_once = nullptr, int rounds = 200) {
    int deleted = 0;
    for (int round = 0; round < rounds; ++round) {
      const ClusterMap& map = *maps_.Current();
      int moving = 0;
      for (const ShardLayout& s : map.shards()) moving += s.move_to != 0 ? 1 : 0;
      if (most_at_once != nullptr) *most_at_once = std::max(*most_at_once, moving);
      for (const MemberInfo& m : map.members()) {
        if (model_.down.contains(m.id)) continue;
        for (auto& [shard, applied] : model_.hosted[m.id]) applied = 1000;
        for (ShardId shard : map.ReplicasOn(m.id)) model_.hosted[m.id].try_emplace(shard, 0);
        if (map.HostsMeta(m.id)) model_.hosted[m.id].try_emplace(kMetaShard, 0);
      }
      for (const std::string& call : Round(options)) {
        if (call.find("delete on") != std::string::npos) ++deleted;
      }
    }
    return deleted;
  }

  ClusterMapCache maps_;
  ModelCluster model_;
};

TEST_F(SchedulerTest, AMoveOffTheLeaderGoesStepByStepAndEndsRecorded) {
  const ShardLayout layout = maps_.Current()->shards()[0];
  const NodeId from = layout.replicas[0];  // the leader
  NodeId to = 0;
  for (NodeId id = 1; id <= 3; ++id) {
    if (!Has(layout.replicas, id)) to = id;
  }
  const NodeId stays = layout.replicas[1];
  absl::StatusOr<ClusterMap> recorded = Scheduler::RecordMove(*maps_.Current(), 0, from, to);
  ASSERT_THAT(recorded, IsOk());
  maps_.Set(std::make_shared<const ClusterMap>(*recorded));

  // Nothing until the new node hosts a replica (it does once it sees the map).
  EXPECT_THAT(Manual(), ElementsAre());
  model_.hosted[to][0] = 0;
  EXPECT_THAT(Manual(), ElementsAre(absl::StrCat("shard 0: learner ", to)));
  // Not promoted while it catches up.
  EXPECT_THAT(Manual(), ElementsAre());
  model_.hosted[to][0] = 990;
  // The leaving replica leads: it hands over first, then the joint change.
  EXPECT_THAT(Manual(), ElementsAre(absl::StrCat("shard 0: leader ", stays)));
  EXPECT_THAT(Manual(), ElementsAre(absl::StrCat("shard 0: voter ", to, " remove ", from)));
  EXPECT_EQ(maps_.Current()->shards()[0].move_to, to);  // raft first, the map after
  EXPECT_THAT(Manual(), ElementsAre());                 // records it in the map
  EXPECT_EQ(maps_.Current()->shards()[0].move_to, 0u);
  EXPECT_THAT(Manual(), ElementsAre(absl::StrCat("shard 0: delete on ", from)));
  const ShardLayout& after = maps_.Current()->shards()[0];
  EXPECT_EQ(after.move_to, 0u);
  EXPECT_TRUE(after.learners.empty());
  EXPECT_THAT(after.replicas, ElementsAre(to, stays));
  EXPECT_EQ(after.conf_version, layout.conf_version + 2);
  EXPECT_FALSE(model_.hosted[from].contains(0));
  // Done: nothing more to do.
  EXPECT_THAT(Manual(), ElementsAre());
}

TEST_F(SchedulerTest, NothingHappensWithoutTheShardsLeaderAndNothingIsDeletedByMistake) {
  const ShardLayout layout = maps_.Current()->shards()[1];
  NodeId to = 0;
  for (NodeId id = 1; id <= 3; ++id) {
    if (!Has(layout.replicas, id)) to = id;
  }
  maps_.Set(std::make_shared<const ClusterMap>(
      *Scheduler::RecordMove(*maps_.Current(), 1, layout.replicas[1], to)));
  model_.hosted[to][1] = 0;
  // The leader's node does not answer: no step, and the new (empty) replica,
  // which the map lists, is not garbage.
  model_.down.insert(layout.replicas[0]);
  EXPECT_THAT(Manual(), ElementsAre());
  EXPECT_TRUE(model_.hosted[to].contains(1));
  // A replica that neither the map nor the leader's configuration lists is.
  model_.down.clear();
  NodeId stray = 0;
  for (NodeId id = 1; id <= 3; ++id) {
    if (!Has(maps_.Current()->shards()[0].replicas, id)) stray = id;
  }
  model_.hosted[stray][0] = 5;
  std::vector<std::string> calls = Manual();
  EXPECT_THAT(calls, ::testing::UnorderedElementsAre(absl::StrCat("shard 1: learner ", to),
                                                     absl::StrCat("shard 0: delete on ", stray)));
}

// A fourth member joins a cluster of three (8 shards, 2 replicas each):
// the balancer moves replicas to it, a bounded number at a time, until
// every member holds within one of the mean, and moves no more than that.
TEST_F(SchedulerTest, ANewMemberReceivesReplicasUntilTheClusterIsEven) {
  auto eight = ClusterMap::Create(Members(), 8, 2);
  ASSERT_THAT(eight, IsOk());
  Use(*eight);
  ASSERT_NO_FATAL_FAILURE(AddMember(4));  // answers, hosting nothing

  int most_at_once = 0;
  const int moves = Settle({.max_moves = 2}, &most_at_once);
  std::map<NodeId, int> held;
  for (const ShardLayout& s : maps_.Current()->shards()) {
    EXPECT_EQ(s.move_to, 0u) << "shard " << s.id << " still moving";
    EXPECT_EQ(s.replicas.size(), 2u);
    for (NodeId r : s.replicas) ++held[r];
  }
  ASSERT_EQ(held.size(), 4u);
  for (const auto& [id, n] : held) {
    EXPECT_GE(n, 3) << "node " << id;
    EXPECT_LE(n, 5) << "node " << id;
  }
  EXPECT_LE(moves, 5);  // 16 replicas over 4 members: the new one needs 4
  EXPECT_LE(most_at_once, 2);
}

// A dead member's replicas are re-created on the others (a joint change
// that removes it), never below the shard's voter count, and not before it
// has been silent for dead_after.
TEST_F(SchedulerTest, ADeadMembersReplicasAreRecreatedElsewhere) {
  const NodeId dead = maps_.Current()->shards()[0].replicas[1];
  model_.down.insert(dead);
  // Its shards elect another leader.
  for (auto& [shard, sh] : model_.shards) {
    if (sh.leader == dead) {
      for (NodeId v : sh.voters) {
        if (v != dead) sh.leader = v;
      }
    }
  }
  Settle({.dead_after = absl::Hours(1)}, nullptr, 20);  // silent, not dead yet
  EXPECT_FALSE(maps_.Current()->ReplicasOn(dead).empty());
  Settle({.dead_after = absl::ZeroDuration()});
  const ClusterMap& map = *maps_.Current();
  EXPECT_TRUE(map.ReplicasOn(dead).empty());
  for (const ShardLayout& s : map.shards()) {
    EXPECT_EQ(s.replicas.size(), 2u) << "shard " << s.id;
    EXPECT_EQ(s.move_to, 0u);
  }
  EXPECT_NE(map.FindMember(dead), nullptr);  // dead, not removed
}

// remove-node: a leaving member's replicas move to the others, then it
// leaves the map.
TEST_F(SchedulerTest, ALeavingMemberIsEmptiedThenRemoved) {
  auto eight = ClusterMap::Create(Members(), 8, 2);
  ASSERT_THAT(eight, IsOk());
  Use(*eight);
  // Three members: all hold the metadata group, and nobody could take it.
  EXPECT_THAT(eight->WithLeaving(1), StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_NO_FATAL_FAILURE(AddMember(4));
  Settle({});
  ASSERT_FALSE(maps_.Current()->ReplicasOn(4).empty());
  absl::StatusOr<ClusterMap> marked = maps_.Current()->WithLeaving(4);
  ASSERT_THAT(marked, IsOk());
  maps_.Set(std::make_shared<const ClusterMap>(*marked));
  int most_at_once = 0;
  Settle({}, &most_at_once);
  const ClusterMap& map = *maps_.Current();
  EXPECT_EQ(map.FindMember(4), nullptr);
  EXPECT_TRUE(map.leaving().empty());
  for (const ShardLayout& s : map.shards()) {
    EXPECT_EQ(s.replicas.size(), 2u) << "shard " << s.id;
    EXPECT_FALSE(Has(s.replicas, 4));
  }
  EXPECT_TRUE(model_.hosted[4].empty());  // deleted there
  EXPECT_LE(most_at_once, 2);
}

// The metadata group's replicas move like a shard's: a leaving member that
// holds one (and leads the group) hands it to a member without one, step by
// step (learner, caught up, joint change), and only then leaves the map.
TEST_F(SchedulerTest, ALeavingMemberHandsOverItsMetadataReplicaToo) {
  ASSERT_NO_FATAL_FAILURE(AddMember(4));
  const NodeId leaving = model_.shards[kMetaShard].leader;
  ASSERT_NO_FATAL_FAILURE(LeaveAndSettle(leaving));
  const ClusterMap& map = *maps_.Current();
  EXPECT_EQ(map.FindMember(leaving), nullptr);
  EXPECT_TRUE(map.HostsMeta(4));
  EXPECT_EQ(map.meta_replicas().size(), 3u);
  EXPECT_EQ(map.meta().move_to, 0u);
  EXPECT_TRUE(map.meta().learners.empty());
  EXPECT_GT(map.meta().conf_version, 1u);
  ExpectMetaLeft(leaving);
  // Through the wire form, as nodes read it.
  absl::StatusOr<ClusterMap> read = ClusterMap::FromProto(map.ToProto());
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(read->meta().conf_version, map.meta().conf_version);
  EXPECT_EQ(read->meta_replicas(), map.meta_replicas());
}

// With a metadata replica on every member (5 of 5), a leaving member's is
// dropped rather than moved, out of raft first (its leadership handed over
// before), so 4 remain and the member leaves; a second leaves the same way;
// with 3 left the map refuses a third, which would leave too few.
TEST_F(SchedulerTest, ALeavingMemberDropsItsMetadataReplicaWhenEveryOtherHoldsOne) {
  std::vector<MemberInfo> members = Members();
  members.push_back({4, "127.0.0.1:7004", "127.0.0.1:7104"});
  members.push_back({5, "127.0.0.1:7005", "127.0.0.1:7105"});
  auto five = ClusterMap::Create(members, 4, 3);
  ASSERT_THAT(five, IsOk());
  ASSERT_EQ(five->meta_replicas().size(), 5u);
  Use(*five);
  for (size_t left = 1; left <= 2; ++left) {
    const NodeId leaving = model_.shards[kMetaShard].leader;
    model_.meta_droppable.insert(leaving);
    ASSERT_NO_FATAL_FAILURE(LeaveAndSettle(leaving));
    const ClusterMap& map = *maps_.Current();
    EXPECT_EQ(map.FindMember(leaving), nullptr);
    EXPECT_EQ(map.meta_replicas().size(), 5 - left);
    EXPECT_EQ(map.meta().move_to, 0u);
    ExpectMetaLeft(leaving);
    for (const ShardLayout& s : map.shards()) EXPECT_EQ(s.replicas.size(), 3u) << s.id;
  }
  EXPECT_THAT(maps_.Current()->WithLeaving(maps_.Current()->meta_replicas()[0]),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

// A leaving member's metadata replica that raft already dropped (the map
// recorded fewer voters meanwhile, e.g. another member lost its data) is
// dropped from the map even at kMinMetaVoters, and repair then brings the
// group back to 3 on the member that lacks one.
TEST_F(SchedulerTest, AMetadataReplicaOutOfRaftLeavesTheMapWhateverTheCount) {
  std::vector<MemberInfo> members = Members();
  members.push_back({4, "127.0.0.1:7004", "127.0.0.1:7104"});
  auto four = ClusterMap::Create(members, 4, 3);
  ASSERT_THAT(four, IsOk());
  ASSERT_EQ(four->meta_replicas().size(), 4u);
  Use(*four, /*leader=*/1);
  absl::StatusOr<ClusterMap> marked = four->WithLeaving(4);
  ASSERT_THAT(marked, IsOk());
  absl::StatusOr<ClusterMap> three = marked->WithShardReplicas(kMetaShard, {1, 2, 4}, {}, 0, 0);
  ASSERT_THAT(three, IsOk());
  maps_.Set(std::make_shared<const ClusterMap>(*three));
  model_.shards[kMetaShard].voters = {1, 2};  // raft removed 4 (and 3) already
  model_.shards[kMetaShard].leader = 1;
  model_.hosted[3].erase(kMetaShard);
  Settle({});
  const ClusterMap& map = *maps_.Current();
  EXPECT_EQ(map.FindMember(4), nullptr);
  EXPECT_THAT(std::set<NodeId>(map.meta_replicas().begin(), map.meta_replicas().end()),
              ::testing::ElementsAre(1, 2, 3));
  ExpectMetaLeft(4);
}

// A dead member's metadata replica is re-created on a member without one.
TEST_F(SchedulerTest, ADeadMembersMetadataReplicaIsRecreatedElsewhere) {
  ASSERT_NO_FATAL_FAILURE(AddMember(4));
  const NodeId dead = model_.shards[kMetaShard].voters[1];
  model_.down.insert(dead);
  for (auto& [shard, sh] : model_.shards) {
    if (sh.leader == dead) {
      for (NodeId v : sh.voters) {
        if (v != dead) sh.leader = v;
      }
    }
  }
  Settle({.dead_after = absl::ZeroDuration(), .balance = false});
  const ClusterMap& map = *maps_.Current();
  EXPECT_FALSE(map.HostsMeta(dead));
  EXPECT_TRUE(map.HostsMeta(4));
  EXPECT_EQ(map.meta_replicas().size(), 3u);
}

// A member whose data was lost comes back empty under a new incarnation
// (the map records it replaced): its old replicas leave every group (raft
// first, then the map; one voter fewer only for that), the record is
// cleared, and the groups are brought back to their size, the metadata
// group's included, on it again since nobody else lacks them.
TEST_F(SchedulerTest, AMemberThatLostItsDataIsDroppedThenGetsNewReplicas) {
  auto three = ClusterMap::Create(Members(), 4, 3);
  ASSERT_THAT(three, IsOk());
  Use(*three, /*leader=*/1);
  const NodeId wiped = 2;
  model_.wiped.insert(wiped);
  model_.hosted[wiped].clear();
  absl::StatusOr<ClusterMap> marked = maps_.Current()->WithReplaced(wiped, 77);
  ASSERT_THAT(marked, IsOk());
  maps_.Set(std::make_shared<const ClusterMap>(*marked));
  // While it is recorded replaced, a group the map has dropped it from has
  // dropped it in raft too (raft first).
  for (int round = 0; round < 20 && maps_.Current()->ReplacedIncarnation(wiped) != 0; ++round) {
    Round();
    const ClusterMap& map = *maps_.Current();
    std::vector<const ShardLayout*> layouts = {&map.meta()};
    for (const ShardLayout& s : map.shards()) layouts.push_back(&s);
    for (const ShardLayout* s : layouts) {
      // Nothing is given to it meanwhile (it would be taken for lost).
      EXPECT_FALSE(Has(s->learners, wiped)) << s->id << " round " << round;
      if (!Has(s->replicas, wiped)) {
        EXPECT_FALSE(Has(model_.shards[s->id].voters, wiped)) << s->id << " round " << round;
      }
    }
  }
  EXPECT_EQ(maps_.Current()->ReplacedIncarnation(wiped), 0u) << "not dropped in 20 rounds";
  Settle({});
  const ClusterMap& map = *maps_.Current();
  EXPECT_EQ(map.ReplacedIncarnation(wiped), 0u);
  for (const ShardLayout& s : map.shards()) {
    EXPECT_EQ(s.replicas.size(), 3u) << "shard " << s.id;
    EXPECT_TRUE(Has(s.replicas, wiped)) << "shard " << s.id;
    EXPECT_TRUE(Has(model_.shards[s.id].voters, wiped)) << "shard " << s.id;
  }
  EXPECT_EQ(map.meta_replicas().size(), 3u);
  EXPECT_TRUE(Has(map.meta_replicas(), wiped));
  // Its replicas are new: each was added as a learner and caught up.
  for (const auto& [shard, applied] : model_.hosted[wiped]) EXPECT_EQ(applied, 1000u) << shard;
}

// Leaders: the scheduler sees every member's count and hands one
// leadership a round from the member leading most to one leading at least
// two fewer, until they are even; then it stops (no shard goes back and
// forth, as it did when each node balanced by its own partial view).
TEST_F(SchedulerTest, ASplitIsProposedThenRecordedAndNoMoveCrossesIt) {
  const ShardLayout before = maps_.Current()->shards()[1];
  absl::StatusOr<ClusterMap> started = maps_.Current()->WithSplitStarted(1);
  ASSERT_THAT(started, IsOk());
  EXPECT_THAT(started->WithSplitStarted(0), StatusIs(absl::StatusCode::kFailedPrecondition));
  NodeId outsider = 0;
  for (NodeId id = 1; id <= 3; ++id) {
    if (!Has(before.replicas, id)) outsider = id;
  }
  EXPECT_THAT(Scheduler::RecordMove(*started, 1, before.replicas[0], outsider),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  maps_.Set(std::make_shared<const ClusterMap>(*started));
  const uint64_t split_hash = started->shards()[1].split_hash;
  EXPECT_GT(split_hash, before.hash_start);

  // Nothing without the shard's leader; then the leader is asked.
  model_.down.insert(before.replicas[0]);
  EXPECT_THAT(Manual(), ElementsAre());
  model_.down.clear();
  // The leader's answer lost: recorded in a later round, from the range
  // the leader reports.
  model_.lose_split_answer = true;
  EXPECT_THAT(Manual(), ElementsAre("shard 1: split into 2"));
  EXPECT_EQ(maps_.Current()->num_shards(), 2u);
  // Nothing is deleted or moved (leaders may be handed around).
  auto no_replica_change = [](const std::vector<std::string>& calls) {
    for (const std::string& call : calls) {
      if (call.find("leader") == std::string::npos) return false;
    }
    return true;
  };
  EXPECT_TRUE(no_replica_change(Round()));
  const ClusterMap& after = *maps_.Current();
  ASSERT_EQ(after.num_shards(), 3u);
  EXPECT_EQ(after.Splitting(), nullptr);
  EXPECT_EQ(after.shards()[1].hash_end, split_hash - 1);
  EXPECT_EQ(after.shards()[2].hash_start, split_hash);
  EXPECT_EQ(after.shards()[2].hash_end, before.hash_end);
  EXPECT_EQ(after.shards()[2].replicas, before.replicas);
  EXPECT_EQ(after.shards()[1].range_version, 2u);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(no_replica_change(Round()));
  // Answered: recorded in the same round.
  model_.lose_split_answer = false;
  maps_.Set(std::make_shared<const ClusterMap>(*maps_.Current()->WithSplitStarted(0)));
  EXPECT_THAT(Manual(), ElementsAre("shard 0: split into 3"));
  EXPECT_EQ(maps_.Current()->num_shards(), 4u);
  EXPECT_EQ(maps_.Current()->Splitting(), nullptr);
}

TEST_F(SchedulerTest, AShardAboveTheSizeThresholdIsSplitOnceAndNotByDefault) {
  model_.shards[1].bytes = 1500;
  model_.shards[0].bytes = 100;
  Round();  // split_bytes 0: sizes are not looked at
  EXPECT_EQ(maps_.Current()->Splitting(), nullptr);
  const SchedulerOptions by_size{.balance = false, .split_bytes = 1000};
  Round(by_size);
  ASSERT_NE(maps_.Current()->Splitting(), nullptr);
  EXPECT_EQ(maps_.Current()->Splitting()->id, 1u);
  for (int i = 0; i < 5; ++i) Round(by_size);
  const ClusterMap& after = *maps_.Current();
  EXPECT_EQ(after.num_shards(), 3u);  // halves of 750 stay whole
  EXPECT_EQ(after.Splitting(), nullptr);
  model_.shards[0].bytes = 1000;
  for (int i = 0; i < 5; ++i) Round(by_size);
  EXPECT_EQ(maps_.Current()->num_shards(), 4u);
}

// By load: a shard written at the threshold rate or more for
// split_rate_rounds rounds in a row is split; a burst shorter than that,
// or a rate below it, is not.
TEST_F(SchedulerTest, AShardWrittenFastForLongEnoughIsSplit) {
  // Rates are entries per nominal interval (an hour here): 3600 entries a
  // round is one a second.
  const SchedulerOptions by_load{
      .balance = false, .split_writes_per_sec = 10, .split_rate_rounds = 5};
  std::unique_ptr<Scheduler> scheduler = Lasting(by_load);
  auto round = [&](uint64_t shard0_entries, uint64_t shard1_entries) {
    model_.shards[0].commit += shard0_entries;
    model_.shards[1].commit += shard1_entries;
    scheduler->RunOnceForTesting();
    model_.TakeCalls();
  };
  round(0, 0);                                             // first look: no rate yet
  for (int i = 0; i < 4; ++i) round(3600 * 9, 3600 * 10);  // shard 1 busy, 4 rounds
  round(0, 0);                                             // a pause resets it
  for (int i = 0; i < 4; ++i) round(3600 * 9, 3600 * 10);
  EXPECT_EQ(maps_.Current()->Splitting(), nullptr) << "a burst shorter than 5 rounds";
  round(3600 * 9, 3600 * 10);  // the 5th in a row
  ASSERT_NE(maps_.Current()->Splitting(), nullptr);
  EXPECT_EQ(maps_.Current()->Splitting()->id, 1u);
  for (int i = 0; i < 5; ++i) round(3600 * 9, 0);
  EXPECT_EQ(maps_.Current()->num_shards(), 3u);  // shard 0 (9/s) is never split
  EXPECT_EQ(maps_.Current()->Splitting(), nullptr);
}

TEST_F(SchedulerTest, LeadersSpreadEvenlyAndThenStayPut) {
  std::vector<MemberInfo> members = Members();
  members.push_back({4, "127.0.0.1:7004", "127.0.0.1:7104"});
  auto map = ClusterMap::Create(members, 12, 3);
  ASSERT_THAT(map, IsOk());
  Use(*map, /*leader=*/1);  // node 1 leads every shard it holds
  int transfers = 0;
  for (int round = 0; round < 100; ++round) {
    for (const std::string& call : Round()) {
      if (call.find("leader") != std::string::npos) ++transfers;
    }
  }
  std::map<NodeId, int> leads;
  for (const auto& [shard, sh] : model_.shards) ++leads[sh.leader];
  int most = 0, fewest = 100;
  for (NodeId id = 1; id <= 4; ++id) {
    most = std::max(most, leads[id]);
    fewest = std::min(fewest, leads[id]);
  }
  EXPECT_LE(most - fewest, 1);
  EXPECT_LE(transfers, 9);  // node 1 led 9 of 12; 3 each is even
  EXPECT_THAT(Round(), ElementsAre());
}

TEST(SchedulerRecordMove, RefusesMovesThatCannotBe) {
  std::vector<MemberInfo> members;
  for (NodeId id = 1; id <= 4; ++id) {
    members.push_back({id, absl::StrCat("h:", id), absl::StrCat("p:", id)});
  }
  const ClusterMap map = *ClusterMap::Create(members, 2, 2);
  const ShardLayout& s = map.shards()[0];
  NodeId outside = 0;
  for (NodeId id = 1; id <= 4; ++id) {
    if (!Has(s.replicas, id)) outside = id;
  }
  EXPECT_THAT(Scheduler::RecordMove(map, 7, s.replicas[0], outside),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Scheduler::RecordMove(map, 0, outside, s.replicas[0]),
              StatusIs(absl::StatusCode::kInvalidArgument));  // not a voter
  EXPECT_THAT(Scheduler::RecordMove(map, 0, s.replicas[0], s.replicas[1]),
              StatusIs(absl::StatusCode::kInvalidArgument));  // holds one already
  EXPECT_THAT(Scheduler::RecordMove(map, 0, s.replicas[0], 9),
              StatusIs(absl::StatusCode::kInvalidArgument));  // not a member
  absl::StatusOr<ClusterMap> moving = Scheduler::RecordMove(map, 0, s.replicas[0], outside);
  ASSERT_THAT(moving, IsOk());
  EXPECT_EQ(moving->version(), map.version() + 1);
  EXPECT_THAT(moving->shards()[0].learners, ElementsAre(outside));
  NodeId other = 0;
  for (NodeId id = 1; id <= 4; ++id) {
    if (!Has(s.replicas, id) && id != outside) other = id;
  }
  EXPECT_THAT(Scheduler::RecordMove(*moving, 0, s.replicas[1], other),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // Nothing goes to a member whose lost replicas are still being dropped
  // (it would be taken for one of them); recording it calls off the move
  // to it.
  absl::StatusOr<ClusterMap> replaced = moving->WithReplaced(outside, 7);
  ASSERT_THAT(replaced, IsOk());
  EXPECT_TRUE(replaced->shards()[0].learners.empty());
  EXPECT_EQ(replaced->shards()[0].move_to, 0u);
  EXPECT_THAT(Scheduler::RecordMove(*replaced, 0, s.replicas[0], outside),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(Scheduler::RecordAdd(*replaced, 0, outside),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

}  // namespace
}  // namespace tessera::server
