// MetaGroup (server/meta_group.h): three in-process Nodes with the real
// StateMachine host the metadata group over a LocalNetwork; each runs a
// MetaGroup. Conditions are polled with a hard deadline (no sleeps as
// synchronisation).
#include "server/cluster/meta_group.h"

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "server/kv/node_backend.h"
#include "server/kv/state_machine.h"
#include "server/raftstore/node.h"
#include "storage/engine.h"
#include "tests/storage/test_util.h"
#include "tests/testing/local_transport.h"
#include "tests/testing/wait.h"

namespace tessera::server {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

constexpr char kCluster[] =
    "1=127.0.0.1:7001/127.0.0.1:7101,2=127.0.0.1:7002/127.0.0.1:7102,"
    "3=127.0.0.1:7003/127.0.0.1:7103";

using ::tessera::testing::WaitFor;

// Records what a MetaGroup reports. Thread-safe.
struct Events {
  absl::Mutex mu;
  std::optional<absl::Status> conflict ABSL_GUARDED_BY(mu);
  std::vector<std::string> lines ABSL_GUARDED_BY(mu);

  MetaGroup::ConflictHandler OnConflict() {
    return [this](const absl::Status& s) {
      absl::MutexLock lock(&mu);
      conflict = s;
    };
  }
  MetaGroup::Logger Log() {
    return [this](const std::string& line) {
      absl::MutexLock lock(&mu);
      lines.push_back(line);
    };
  }
  std::optional<absl::Status> Conflict() {
    absl::MutexLock lock(&mu);
    return conflict;
  }
  std::vector<uint64_t> versions ABSL_GUARDED_BY(mu);  // of the maps handed over
  MetaGroup::MapHandler OnMap() {
    return [this](std::shared_ptr<const ClusterMap> map) {
      absl::MutexLock lock(&mu);
      versions.push_back(map->version());
    };
  }
  std::vector<uint64_t> Versions() {
    absl::MutexLock lock(&mu);
    return versions;
  }
};

// Three nodes hosting only the metadata group.
class MetaCluster {
 public:
  MetaCluster() {
    for (NodeId id = 1; id <= 3; ++id) {
      Member& m = members_[id];
      m.dir = std::make_unique<storage::testing::TempDir>();
      storage::EngineOptions eo;
      eo.block_cache_bytes = 8 << 20;
      m.engine = *storage::Engine::Open(m.dir->path(), eo);
      m.sm = std::make_unique<StateMachine>(&m.engine->kv_store(), StateMachineOptions{});
      m.transport = net_.TransportFor(id);
      NodeOptions no;
      no.id = id;
      no.shards.push_back({.shard = kMetaShard, .replicas = {1, 2, 3}});
      no.tick_interval = absl::Milliseconds(10);
      no.election_ticks = 10;
      no.seed = 7;
      m.node = *Node::Start(no, m.engine.get(), m.sm.get(), m.transport.get());
      Node* node = m.node.get();
      net_.Register(id, [node](NodeId from, std::vector<ShardMessage> msgs) {
        node->Receive(from, std::move(msgs));
      });
      m.backend = std::make_unique<NodeKvBackend>(node, m.sm.get());
    }
  }
  ~MetaCluster() {
    for (auto& [id, m] : members_) {
      m.group.reset();
      net_.Unregister(id);
      m.node.reset();
    }
  }

  // Starts node `id`'s MetaGroup expecting `expected`.
  void StartGroup(NodeId id, const ClusterMap& expected) {
    Member& m = members_.at(id);
    m.group.reset();
    m.cache = std::make_unique<ClusterMapCache>();
    MetaGroupOptions options;
    options.self = id;
    options.poll_interval = absl::Milliseconds(10);
    m.group =
        std::make_unique<MetaGroup>(options, expected, m.backend.get(), nullptr, m.cache.get(),
                                    m.events.OnConflict(), m.events.Log(), m.events.OnMap());
  }
  MetaGroup& group(NodeId id) { return *members_.at(id).group; }

  ClusterMapCache& cache(NodeId id) { return *members_.at(id).cache; }
  Events& events(NodeId id) { return members_.at(id).events; }
  NodeKvBackend& backend(NodeId id) { return *members_.at(id).backend; }

  NodeId Leader() {
    for (auto& [id, m] : members_) {
      for (const ShardStatus& s : m.node->Status()) {
        if (s.role == "leader") return id;
      }
    }
    return 0;
  }

 private:
  struct Member {
    std::unique_ptr<storage::testing::TempDir> dir;
    std::unique_ptr<storage::Engine> engine;
    std::unique_ptr<StateMachine> sm;
    std::unique_ptr<Transport> transport;
    std::unique_ptr<Node> node;
    std::unique_ptr<NodeKvBackend> backend;
    std::unique_ptr<ClusterMapCache> cache;
    Events events;
    std::unique_ptr<MetaGroup> group;
  };
  LocalNetwork net_;
  std::map<NodeId, Member> members_;
};

TEST(MetaGroup, BootstrapsTheMapOnceAndEveryReplicaServesIt) {
  const ClusterMap expected = *ClusterMap::Parse(kCluster, 4, 3);
  MetaCluster cluster;
  for (NodeId id = 1; id <= 3; ++id) cluster.StartGroup(id, expected);
  for (NodeId id = 1; id <= 3; ++id) {
    ASSERT_TRUE(WaitFor([&] { return cluster.cache(id).Current() != nullptr; })) << "node " << id;
    EXPECT_EQ(cluster.cache(id).Current()->epoch(), expected.epoch());
    EXPECT_EQ(cluster.events(id).Conflict(), std::nullopt);
  }
  // Stored once (version 1), on every replica.
  for (NodeId id = 1; id <= 3; ++id) {
    ASSERT_TRUE(WaitFor([&] { return MetaGroup::ReadLocal(cluster.backend(id)).has_value(); }));
    absl::StatusOr<v1::GetResponse> got = cluster.backend(id).Get(kMetaShard, kMetaMapKey);
    ASSERT_THAT(got, IsOk());
    EXPECT_EQ(got->kv().version(), 1u);
    EXPECT_EQ(MetaGroup::ReadLocal(cluster.backend(id))->SerializeAsString(),
              expected.ToProto().SerializeAsString());
  }

  // A later bootstrap (another leader, other flags) changes nothing: its
  // compare on "absent" fails.
  const ClusterMap other = *ClusterMap::Parse(kCluster, 8, 3);
  NodeId leader = 0;
  ASSERT_TRUE(WaitFor([&] { return (leader = cluster.Leader()) != 0; }));
  serverpb::Command command;
  v1::Compare* absent = command.mutable_txn()->add_compares();
  absent->set_key(kMetaMapKey);
  absent->set_target(v1::Compare::TARGET_EXISTS);
  absent->set_op(v1::Compare::OP_NOT_EQUAL);
  v1::PutRequest* put = command.mutable_txn()->add_success()->mutable_put();
  put->set_key(kMetaMapKey);
  put->set_value(other.ToProto().SerializeAsString());
  absl::Notification done;
  absl::StatusOr<serverpb::CommandResult> result;
  cluster.backend(leader).Propose(kMetaShard, command, absl::Now() + absl::Seconds(10),
                                  [&](absl::StatusOr<serverpb::CommandResult> r) {
                                    result = std::move(r);
                                    done.Notify();
                                  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(15)));
  ASSERT_THAT(result, IsOk());
  EXPECT_FALSE(result->txn().succeeded());
  EXPECT_EQ(cluster.backend(leader).Get(kMetaShard, kMetaMapKey)->kv().version(), 1u);

  // A node whose flags give another map refuses it, and serves nothing.
  cluster.StartGroup(2, other);
  ASSERT_TRUE(WaitFor([&] { return cluster.events(2).Conflict().has_value(); }));
  EXPECT_THAT(*cluster.events(2).Conflict(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("differs from the one computed from this node's flags")));
  EXPECT_EQ(cluster.cache(2).Current(), nullptr);
}

TEST(MetaGroup, NodeWithoutReplicaLoadsTheMapFromTheMembersThatHaveIt) {
  const ClusterMap expected = *ClusterMap::Parse(kCluster, 4, 3);
  absl::Mutex mu;
  std::optional<std::string> remote_value;  // guarded by mu
  int reads = 0;                            // guarded by mu
  auto reader = [&]() -> absl::StatusOr<std::optional<std::string>> {
    absl::MutexLock lock(&mu);
    ++reads;
    return remote_value;
  };
  ClusterMapCache cache;
  Events events;
  MetaGroupOptions options;
  options.self = 4;
  options.poll_interval = absl::Milliseconds(5);
  MetaGroup group(options, expected, nullptr, reader, &cache, events.OnConflict(), events.Log());
  ASSERT_TRUE(WaitFor([&] {
    absl::MutexLock lock(&mu);
    return reads >= 3;
  }));  // a few polls found nothing
  EXPECT_EQ(cache.Current(), nullptr);
  {
    absl::MutexLock lock(&mu);
    remote_value = expected.ToProto().SerializeAsString();
  }
  ASSERT_TRUE(WaitFor([&] { return cache.Current() != nullptr; }));
  EXPECT_EQ(cache.Current()->epoch(), expected.epoch());

  // A corrupt value is refused.
  ClusterMapCache other_cache;
  Events other_events;
  MetaGroup corrupt(
      options, expected, nullptr,
      []() -> absl::StatusOr<std::optional<std::string>> { return std::string("\xff\xff"); },
      &other_cache, other_events.OnConflict(), other_events.Log());
  ASSERT_TRUE(WaitFor([&] { return other_events.Conflict().has_value(); }));
  EXPECT_THAT(*other_events.Conflict(), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_EQ(other_cache.Current(), nullptr);
}

TEST(MetaGroupCheck, AMapStoredBeforeVersionsIsTheSameMap) {
  ClusterMap expected =
      *ClusterMap::Parse("1=127.0.0.1:7001/127.0.0.1:7101,2=127.0.0.1:7002/127.0.0.1:7102", 4, 2);
  v1::ClusterMap old = expected.ToProto();  // as an older build stored it
  old.clear_version();
  old.clear_meta_replicas();
  old.clear_cluster_id();
  for (v1::ShardInfo& s : *old.mutable_shards()) {
    s.clear_conf_version();
    s.clear_range_version();
  }
  absl::StatusOr<ClusterMap> read = MetaGroup::Check(expected, 1, old.SerializeAsString());
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(read->version(), 1u);

  v1::ClusterMap other = expected.ToProto();
  other.set_num_shards(8);
  EXPECT_THAT(MetaGroup::Check(expected, 1, other.SerializeAsString()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("differs")));
  EXPECT_THAT(MetaGroup::Check(expected, 1, "\xff\xff"), StatusIs(absl::StatusCode::kDataLoss));
}

// A valid change of a map: shard 0 loses its last voter.
absl::StatusOr<ClusterMap> DropLastReplica(const ClusterMap& map) {
  std::vector<NodeId> voters = map.shards()[0].replicas;
  voters.pop_back();
  return map.WithShardReplicas(0, voters, {}, 0, 0);
}

TEST(MetaGroup, ChangesMoveTheStoredMapForwardOnEveryReplica) {
  const ClusterMap expected = *ClusterMap::Parse(kCluster, 4, 3);
  MetaCluster cluster;
  for (NodeId id = 1; id <= 3; ++id) cluster.StartGroup(id, expected);
  for (NodeId id = 1; id <= 3; ++id) {
    ASSERT_TRUE(WaitFor([&] { return cluster.cache(id).Current() != nullptr; }));
  }
  NodeId leader = 0;
  ASSERT_TRUE(WaitFor([&] { return (leader = cluster.Leader()) != 0; }));
  absl::StatusOr<ClusterMap> stored = cluster.group(leader).Change(DropLastReplica);
  ASSERT_THAT(stored, IsOk());
  EXPECT_EQ(stored->version(), 2u);
  for (NodeId id = 1; id <= 3; ++id) {
    ASSERT_TRUE(WaitFor([&] { return cluster.cache(id).Current()->version() == 2; }))
        << "node " << id;
    EXPECT_EQ(cluster.cache(id).Current()->shards()[0].replicas.size(), 2u);
    EXPECT_EQ(cluster.events(id).Versions(), (std::vector<uint64_t>{1, 2}));
    EXPECT_EQ(cluster.events(id).Conflict(), std::nullopt);
  }

  // A change computed from a map that changed before it committed is
  // refused (compare-and-swap): here the mutation itself changes it first.
  absl::StatusOr<ClusterMap> raced = cluster.group(leader).Change([&](const ClusterMap& map) {
    EXPECT_THAT(cluster.group(leader).Change(DropLastReplica), IsOk());
    return DropLastReplica(map);
  });
  EXPECT_THAT(raced, StatusIs(absl::StatusCode::kAborted));
  ASSERT_TRUE(WaitFor([&] { return cluster.cache(leader).Current()->version() == 3; }));

  // Only the leader changes it; a bad change changes nothing.
  const NodeId follower = leader % 3 + 1;
  EXPECT_THAT(cluster.group(follower).Change([](const ClusterMap& map) {
    return map.WithShardReplicas(1, map.shards()[1].replicas, {}, 0, 0);
  }),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(cluster.group(leader).Change(
                  [](const ClusterMap& map) { return map.WithShardReplicas(0, {}, {}, 0, 0); }),
              StatusIs(absl::StatusCode::kInvalidArgument));

  // After a change the stored map rules: a node started with other (stale)
  // flags serves by it.
  cluster.StartGroup(2, *ClusterMap::Parse(kCluster, 8, 3));
  ASSERT_TRUE(WaitFor([&] { return cluster.cache(2).Current() != nullptr; }));
  EXPECT_EQ(cluster.cache(2).Current()->version(), 3u);
  EXPECT_EQ(cluster.cache(2).Current()->num_shards(), 4u);
  EXPECT_EQ(cluster.events(2).Conflict(), std::nullopt);
}

TEST(MetaGroupCheck, AChangedMapRulesButOnlyForItsMembers) {
  const ClusterMap expected = *ClusterMap::Parse(kCluster, 4, 3);
  const ClusterMap other_flags = *ClusterMap::Parse(kCluster, 8, 3);
  const std::string changed = DropLastReplica(expected)->ToProto().SerializeAsString();
  absl::StatusOr<ClusterMap> read = MetaGroup::Check(other_flags, 2, changed);
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(read->version(), 2u);
  EXPECT_EQ(read->num_shards(), 4u);
  EXPECT_THAT(MetaGroup::Check(expected, 7, changed),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("not a member")));
  // The bootstrap map is still checked against the flags.
  EXPECT_THAT(MetaGroup::Check(other_flags, 2, expected.ToProto().SerializeAsString()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("differs")));
}

}  // namespace
}  // namespace tessera::server
