// LeaseKeeper (server/cluster/lease_keeper.h) over a one-replica metadata
// group whose leadership the test controls (a fake KvBackend applying each
// proposal at once with the real StateMachine), a fake monotonic clock and
// a recording LeaseRevoker. Ticks are run by hand: nothing here depends on
// timing.
#include "server/cluster/lease_keeper.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "server/cluster/meta_group.h"
#include "server/kv/backend.h"
#include "server/kv/state_machine.h"
#include "storage/mem_kv_store.h"

namespace tessera::server {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

constexpr char kCluster[] =
    "1=127.0.0.1:7001/127.0.0.1:7101,2=127.0.0.1:7002/127.0.0.1:7102,"
    "3=127.0.0.1:7003/127.0.0.1:7103";

// The metadata group as one replica: proposals apply at once, while it
// "leads"; barriers succeed while it leads and `partitioned` is false.
class FakeMeta : public KvBackend {
 public:
  FakeMeta() : sm_(&kv_, StateMachineOptions{}) {}

  void SetRole(bool leader, uint64_t term) {
    absl::MutexLock lock(&mu_);
    leader_ = leader;
    term_ = term;
  }
  void SetPartitioned(bool partitioned) {
    absl::MutexLock lock(&mu_);
    partitioned_ = partitioned;
  }
  // Stores `map` as the cluster map (as the MetaGroup would).
  void StoreMap(const ClusterMap& map) {
    serverpb::Command command;
    command.mutable_put()->set_key(kMetaMapKey);
    command.mutable_put()->set_value(map.ToProto().SerializeAsString());
    ASSERT_THAT(ApplyNow(command), IsOk());
  }
  // The stored lease records (id -> record).
  std::map<std::string, serverpb::LeaseRecord> Records() {
    v1::ScanRequest scan;
    scan.set_prefix(kLeaseRecordPrefix);
    std::map<std::string, serverpb::LeaseRecord> out;
    absl::StatusOr<v1::ScanResponse> page = sm_.Scan(kMetaShard, scan);
    EXPECT_THAT(page, IsOk());
    if (!page.ok()) return out;
    for (const v1::KeyValue& kv : page->kvs()) out[kv.key()].ParseFromString(kv.value());
    return out;
  }

  void Propose(ShardId shard, serverpb::Command command, absl::Time /*deadline*/,
               Node::ProposeCallback done) override {
    {
      absl::MutexLock lock(&mu_);
      if (shard != kMetaShard || !leader_) return done(absl::UnavailableError("not the leader"));
    }
    done(ApplyNow(command));
  }
  void ReadBarrier(ShardId /*shard*/, bool /*lease*/, absl::Time /*deadline*/,
                   Node::ReadCallback done) override {
    bool ok;
    {
      absl::MutexLock lock(&mu_);
      ok = leader_ && !partitioned_;
    }
    done(ok ? absl::OkStatus() : absl::UnavailableError("no quorum"));
  }
  std::vector<ShardStatus> Status() const override {
    absl::MutexLock lock(&mu_);
    ShardStatus s;
    s.shard = kMetaShard;
    s.role = leader_ ? "leader" : "follower";
    s.term = term_;
    return {s};
  }
  absl::StatusOr<v1::GetResponse> Get(ShardId shard, absl::string_view key) const override {
    return sm_.Get(shard, key);
  }
  absl::StatusOr<v1::ScanResponse> Scan(ShardId shard,
                                        const v1::ScanRequest& request) const override {
    return sm_.Scan(shard, request);
  }

 private:
  absl::StatusOr<serverpb::CommandResult> ApplyNow(const serverpb::Command& command) {
    absl::MutexLock lock(&apply_mu_);
    std::vector<serverpb::CommandResult> results;
    absl::Status applied =
        sm_.Apply({CommittedEntry{kMetaShard, ++index_, command.SerializeAsString()}}, &results);
    if (!applied.ok()) return applied;
    return results.at(0);
  }

  storage::MemKvStore kv_;
  StateMachine sm_;
  absl::Mutex apply_mu_;
  uint64_t index_ ABSL_GUARDED_BY(apply_mu_) = 0;
  mutable absl::Mutex mu_;
  bool leader_ ABSL_GUARDED_BY(mu_) = true;
  bool partitioned_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t term_ ABSL_GUARDED_BY(mu_) = 1;
};

// Records each shard's RevokeLeases; fails while `failing`.
class RecordingRevoker : public LeaseRevoker {
 public:
  absl::Status Revoke(const ShardLayout& shard, const std::vector<uint64_t>& leases) override {
    absl::MutexLock lock(&mu_);
    if (failing_) return absl::UnavailableError("shard leader unreachable");
    for (uint64_t lease : leases) revoked_[lease].push_back(shard.id);
    return absl::OkStatus();
  }
  void SetFailing(bool failing) {
    absl::MutexLock lock(&mu_);
    failing_ = failing;
  }
  // The shards that applied a revoke of `lease`.
  std::vector<ShardId> ShardsOf(uint64_t lease) {
    absl::MutexLock lock(&mu_);
    return revoked_[lease];
  }

 private:
  absl::Mutex mu_;
  bool failing_ ABSL_GUARDED_BY(mu_) = false;
  std::map<uint64_t, std::vector<ShardId>> revoked_ ABSL_GUARDED_BY(mu_);
};

class LeaseKeeperTest : public ::testing::Test {
 protected:
  LeaseKeeperTest() {
    meta_.StoreMap(map_);
    LeaseKeeperOptions options;
    options.tick = absl::ZeroDuration();  // ticks by hand
    keeper_ = std::make_unique<LeaseKeeper>(options, &meta_, &revoker_, [this] { return now_; });
    keeper_->Tick();  // loads the (empty) table
  }

  void Advance(absl::Duration d) { now_ += d; }

  uint64_t Grant(int64_t ttl_seconds) {
    absl::StatusOr<v1::LeaseGrantResponse> granted;
    keeper_->Grant(ttl_seconds, absl::InfiniteFuture(),
                   [&](absl::StatusOr<v1::LeaseGrantResponse> r) { granted = std::move(r); });
    EXPECT_THAT(granted, IsOk());
    return granted.ok() ? granted->id() : 0;
  }
  absl::StatusOr<int64_t> Renew(uint64_t id) {
    absl::StatusOr<int64_t> ttl = absl::UnknownError("not answered");
    keeper_->KeepAlive(id, absl::InfiniteFuture(), [&](absl::StatusOr<int64_t> r) { ttl = r; });
    return ttl;
  }
  absl::Duration Remaining(uint64_t id) {
    absl::StatusOr<v1::LeaseTimeToLiveResponse> ttl = keeper_->TimeToLive(id);
    EXPECT_THAT(ttl, IsOk());
    return ttl.ok() ? absl::Milliseconds(ttl->remaining_ms()) : absl::ZeroDuration();
  }
  bool Live(uint64_t id) { return keeper_->TimeToLive(id).ok(); }

  absl::Duration now_ = absl::Hours(1);
  ClusterMap map_ = *ClusterMap::Parse(kCluster, 3, 3);
  FakeMeta meta_;
  RecordingRevoker revoker_;
  std::unique_ptr<LeaseKeeper> keeper_;
};

TEST_F(LeaseKeeperTest, ALeaseEndsTtlAfterItsLastRenewalOnEveryShard) {
  const uint64_t id = Grant(5);
  ASSERT_NE(id, 0u);
  EXPECT_EQ(Remaining(id), absl::Seconds(5));
  EXPECT_EQ(meta_.Records().size(), 1u);
  Advance(absl::Seconds(4));
  EXPECT_THAT(Renew(id), IsOk());
  Advance(absl::Seconds(4));  // 8 s after the grant, 4 after the renewal
  keeper_->Tick();
  EXPECT_TRUE(Live(id));
  EXPECT_THAT(revoker_.ShardsOf(id), IsEmpty());
  Advance(absl::Seconds(1));  // 5 s after the renewal
  EXPECT_THAT(Renew(id), StatusIs(absl::StatusCode::kNotFound)) << "too late to renew";
  keeper_->Tick();
  EXPECT_FALSE(Live(id));
  EXPECT_THAT(revoker_.ShardsOf(id), UnorderedElementsAre(0, 1, 2));
  EXPECT_THAT(meta_.Records(), IsEmpty()) << "the record goes once every shard revoked it";
  EXPECT_EQ(keeper_->stats().expired_total, 1u);
  EXPECT_EQ(keeper_->stats().live, 0u);
}

TEST_F(LeaseKeeperTest, ANewLeaderRestartsEveryCountdownAtTheFullTtl) {
  const uint64_t id = Grant(10);
  Advance(absl::Seconds(8));
  EXPECT_EQ(Remaining(id), absl::Seconds(2));
  // Leadership moves away and back (a new term): the table is reloaded
  // from the records, each lease with its full TTL.
  meta_.SetRole(/*leader=*/false, 2);
  keeper_->Tick();
  EXPECT_THAT(keeper_->TimeToLive(id), StatusIs(absl::StatusCode::kUnavailable));
  meta_.SetRole(/*leader=*/true, 3);
  keeper_->Tick();
  EXPECT_EQ(Remaining(id), absl::Seconds(10));
  Advance(absl::Seconds(9));
  keeper_->Tick();
  EXPECT_TRUE(Live(id)) << "not ended early by the leader change";
  Advance(absl::Seconds(1));
  keeper_->Tick();
  EXPECT_FALSE(Live(id));
}

TEST_F(LeaseKeeperTest, ALeaderWithoutAQuorumCannotRenew) {
  const uint64_t id = Grant(5);
  meta_.SetPartitioned(true);
  EXPECT_THAT(Renew(id), StatusIs(absl::StatusCode::kUnavailable));
  Advance(absl::Seconds(5));
  meta_.SetPartitioned(false);
  keeper_->Tick();
  EXPECT_FALSE(Live(id)) << "the failed renewals did not extend it";
}

TEST_F(LeaseKeeperTest, RevokeAnswersOnceEveryShardDeletedTheKeys) {
  const uint64_t id = Grant(60);
  std::optional<absl::Status> answer;
  keeper_->Revoke(id, absl::InfiniteFuture(), [&](absl::Status s) { answer = s; });
  EXPECT_FALSE(answer.has_value());
  EXPECT_FALSE(Live(id)) << "ended at once";
  EXPECT_THAT(Renew(id), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_TRUE(meta_.Records().begin()->second.revoking());
  // A shard's leader is unreachable: the record stays, the next tick tries again.
  revoker_.SetFailing(true);
  keeper_->Tick();
  EXPECT_FALSE(answer.has_value());
  EXPECT_EQ(meta_.Records().size(), 1u);
  revoker_.SetFailing(false);
  keeper_->Tick();
  ASSERT_TRUE(answer.has_value());
  EXPECT_THAT(*answer, IsOk());
  EXPECT_THAT(meta_.Records(), IsEmpty());
  EXPECT_EQ(keeper_->stats().revoked_total, 1u);
  keeper_->Revoke(id, absl::InfiniteFuture(), [&](absl::Status s) { answer = s; });
  EXPECT_THAT(*answer, StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(LeaseKeeperTest, AStoppedKeeperAnswersAtOnceAndLeavesNoRevokeWaiting) {
  const uint64_t id = Grant(60);
  keeper_->Stop();
  std::optional<absl::Status> answer;
  keeper_->Revoke(id, absl::InfiniteFuture(), [&](absl::Status s) { answer = s; });
  ASSERT_TRUE(answer.has_value()) << "nothing would ever answer a waiting Revoke";
  EXPECT_THAT(*answer, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(Renew(id), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(LeaseKeeperTest, EndingWaitsWhileASplitIsInProgress) {
  const uint64_t id = Grant(60);
  absl::StatusOr<ClusterMap> splitting = map_.WithSplitStarted(1);
  ASSERT_THAT(splitting, IsOk());
  meta_.StoreMap(*splitting);
  keeper_->Revoke(id, absl::InfiniteFuture(), [](absl::Status) {});
  keeper_->Tick();
  EXPECT_THAT(revoker_.ShardsOf(id), IsEmpty()) << "the new shard may hold keys of the lease";
  meta_.StoreMap(map_);  // (the split abandoned, as far as this test goes)
  keeper_->Tick();
  EXPECT_THAT(revoker_.ShardsOf(id), UnorderedElementsAre(0, 1, 2));
}

TEST_F(LeaseKeeperTest, AFollowerRefusesAndAGrantOutlivesAnotherLeadersCrash) {
  meta_.SetRole(/*leader=*/false, 2);
  keeper_->Tick();
  absl::StatusOr<v1::LeaseGrantResponse> granted;
  keeper_->Grant(5, absl::InfiniteFuture(),
                 [&](absl::StatusOr<v1::LeaseGrantResponse> r) { granted = std::move(r); });
  EXPECT_THAT(granted, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(keeper_->List(), StatusIs(absl::StatusCode::kUnavailable));
  // Another keeper (this node, later) loads what an earlier leader granted.
  meta_.SetRole(/*leader=*/true, 3);
  keeper_->Tick();
  const uint64_t id = Grant(7);
  LeaseKeeperOptions options;
  options.tick = absl::ZeroDuration();
  LeaseKeeper next(options, &meta_, &revoker_, [this] { return now_; });
  next.Tick();
  absl::StatusOr<v1::LeaseTimeToLiveResponse> ttl = next.TimeToLive(id);
  ASSERT_THAT(ttl, IsOk());
  EXPECT_EQ(ttl->granted_ttl_seconds(), 7);
}

TEST_F(LeaseKeeperTest, TtlsAreClampedAndTheLeaseCountIsBounded) {
  LeaseKeeperOptions options;
  options.tick = absl::ZeroDuration();
  options.max_leases = 2;
  LeaseKeeper keeper(options, &meta_, &revoker_, [this] { return now_; });
  keeper.Tick();
  std::vector<absl::StatusOr<v1::LeaseGrantResponse>> granted;
  for (int64_t ttl : {int64_t{0}, int64_t{1} << 40, int64_t{5}}) {
    keeper.Grant(ttl, absl::InfiniteFuture(),
                 [&](absl::StatusOr<v1::LeaseGrantResponse> r) { granted.push_back(r); });
  }
  ASSERT_EQ(granted.size(), 3u);
  ASSERT_THAT(granted[0], IsOk());
  EXPECT_EQ(granted[0]->ttl_seconds(), options.min_ttl_seconds);
  ASSERT_THAT(granted[1], IsOk());
  EXPECT_EQ(granted[1]->ttl_seconds(), options.max_ttl_seconds);
  EXPECT_THAT(granted[2], StatusIs(absl::StatusCode::kResourceExhausted));
  keeper.Grant(-1, absl::InfiniteFuture(),
               [&](absl::StatusOr<v1::LeaseGrantResponse> r) { granted.push_back(r); });
  EXPECT_THAT(granted.back(), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace tessera::server
