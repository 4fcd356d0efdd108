// HistoryRetention (server/kv/history_retention.h) with a fake backend (the
// shards' raft state as the test sets it, proposals recorded) and a fake
// clock; ticks by hand.
#include "server/kv/history_retention.h"

#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tessera::server {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

class FakeShards : public KvBackend {
 public:
  void Set(ShardId shard, bool leader, uint64_t applied) {
    absl::MutexLock lock(&mu_);
    ShardStatus& s = shards_[shard];
    s.shard = shard;
    s.role = leader ? "leader" : "follower";
    s.applied_index = applied;
  }
  void Remove(ShardId shard) {
    absl::MutexLock lock(&mu_);
    shards_.erase(shard);
  }
  void FailProposals(bool fail) {
    absl::MutexLock lock(&mu_);
    fail_ = fail;
  }
  // (shard, below_revision) of each CompactHistory proposed, then cleared.
  std::vector<std::pair<ShardId, uint64_t>> TakeProposals() {
    absl::MutexLock lock(&mu_);
    return std::exchange(proposals_, {});
  }

  void Propose(ShardId shard, serverpb::Command command, absl::Time /*deadline*/,
               Node::ProposeCallback done) override {
    bool fail;
    {
      absl::MutexLock lock(&mu_);
      proposals_.emplace_back(shard, command.compact_history().below_revision());
      fail = fail_;
    }
    if (fail) return done(absl::UnavailableError("not the leader any more"));
    done(serverpb::CommandResult());
  }
  void ReadBarrier(ShardId, bool, absl::Time, Node::ReadCallback done) override {
    done(absl::OkStatus());
  }
  std::vector<ShardStatus> Status() const override {
    absl::MutexLock lock(&mu_);
    std::vector<ShardStatus> out;
    for (const auto& [id, s] : shards_) out.push_back(s);
    return out;
  }
  absl::StatusOr<v1::GetResponse> Get(ShardId, absl::string_view) const override {
    return absl::UnimplementedError("");
  }
  absl::StatusOr<v1::ScanResponse> Scan(ShardId, const v1::ScanRequest&) const override {
    return absl::UnimplementedError("");
  }

 private:
  mutable absl::Mutex mu_;
  std::map<ShardId, ShardStatus> shards_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<ShardId, uint64_t>> proposals_ ABSL_GUARDED_BY(mu_);
  bool fail_ ABSL_GUARDED_BY(mu_) = false;
};

class HistoryRetentionTest : public ::testing::Test {
 protected:
  HistoryRetentionTest()
      : retention_(HistoryRetentionOptions{.keep = absl::Seconds(60),
                                           .sample_every = absl::ZeroDuration()},
                   &shards_, [this] { return now_; }) {}
  void TickAfter(absl::Duration d) {
    now_ += d;
    retention_.Tick();
  }

  absl::Duration now_ = absl::Hours(1);
  FakeShards shards_;
  HistoryRetention retention_;
};

TEST_F(HistoryRetentionTest, TheLeaderCompactsBelowWhatWasAppliedKeepAgo) {
  shards_.Set(1, /*leader=*/true, 100);
  shards_.Set(2, /*leader=*/false, 100);
  TickAfter(absl::ZeroDuration());
  shards_.Set(1, true, 150);
  shards_.Set(2, false, 150);
  TickAfter(absl::Seconds(30));
  EXPECT_THAT(shards_.TakeProposals(), IsEmpty()) << "nothing is a minute old yet";
  shards_.Set(1, true, 200);
  TickAfter(absl::Seconds(30));  // index 100 was applied 60 s ago
  EXPECT_THAT(shards_.TakeProposals(), ElementsAre(Pair(1, 101))) << "not the follower's shard";
  TickAfter(absl::Seconds(30));  // 150 was applied 60 s ago
  EXPECT_THAT(shards_.TakeProposals(), ElementsAre(Pair(1, 151)));
  // Shard 2's replica becomes leader: its own samples serve.
  shards_.Set(2, true, 150);
  TickAfter(absl::ZeroDuration());
  EXPECT_THAT(shards_.TakeProposals(), ElementsAre(Pair(2, 151)));
}

TEST_F(HistoryRetentionTest, AnIdleShardIsNotWokenAgainAndAFailedProposalIsRetried) {
  shards_.Set(1, true, 100);
  TickAfter(absl::ZeroDuration());
  TickAfter(absl::Seconds(61));
  EXPECT_THAT(shards_.TakeProposals(), ElementsAre(Pair(1, 101)));
  for (int i = 0; i < 5; ++i) TickAfter(absl::Seconds(61));
  EXPECT_THAT(shards_.TakeProposals(), IsEmpty()) << "idle: nothing new to drop";
  shards_.Set(1, true, 300);
  TickAfter(absl::ZeroDuration());
  shards_.FailProposals(true);
  TickAfter(absl::Seconds(61));
  EXPECT_THAT(shards_.TakeProposals(), ElementsAre(Pair(1, 301)));
  shards_.FailProposals(false);
  TickAfter(absl::Seconds(1));
  EXPECT_THAT(shards_.TakeProposals(), ElementsAre(Pair(1, 301))) << "proposed again";
  // A shard that left the node is forgotten.
  shards_.Remove(1);
  TickAfter(absl::Seconds(61));
  EXPECT_THAT(shards_.TakeProposals(), IsEmpty());
}

}  // namespace
}  // namespace tessera::server
