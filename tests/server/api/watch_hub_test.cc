// WatchHub against a fake WatchSource (an in-memory history): live events,
// catch-up from history then live without gap or repeat, compaction,
// slow-watcher cut-off, reset, cancel and the bounds.
#include "server/api/watch_hub.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tessera::server {
namespace {

constexpr ShardId kShard = 3;

sm::HistoryEvent Put(uint64_t revision, const std::string& key, const std::string& value,
                     uint32_t n = 0) {
  sm::HistoryEvent e;
  e.revision = revision;
  e.n = n;
  e.key = key;
  e.stored = sm::EncodeValue({.version = 1, .mod_revision = revision, .value = value});
  return e;
}

// The shard's history and applied index, as the state machine would have
// them. Thread-safe.
class FakeSource : public WatchSource {
 public:
  absl::StatusOr<HistoryPage> ReadHistory(ShardId shard, uint64_t from_revision,
                                          uint64_t max_bytes) const override {
    absl::MutexLock lock(&mu_);
    HistoryPage page;
    page.floor = floor_;
    page.applied_index = applied_;
    if (shard != kShard || from_revision < floor_) {
      page.compacted = true;
      return page;
    }
    uint64_t bytes = 0;
    for (const sm::HistoryEvent& e : history_) {
      if (e.revision < from_revision) continue;
      if (bytes >= max_bytes && e.revision != page.events.back().revision) {
        page.more = true;
        page.next_revision = e.revision;
        break;
      }
      bytes += e.stored.size() + e.key.size();
      page.events.push_back(e);
    }
    return page;
  }
  absl::StatusOr<sm::ShardRange> Range(ShardId) const override { return sm::ShardRange{}; }
  std::optional<uint64_t> AppliedIndex(ShardId shard) const override {
    absl::MutexLock lock(&mu_);
    if (shard != kShard) return std::nullopt;
    return applied_;
  }
  absl::Status CheckWatch(ShardId, uint64_t) const override {
    absl::MutexLock lock(&mu_);
    return check_;
  }

  // Applies events (stored first, then reported, as the state machine does).
  void Apply(WatchHub& hub, std::vector<sm::HistoryEvent> events, uint64_t applied,
             bool reset = false, bool report = true) {
    {
      absl::MutexLock lock(&mu_);
      history_.insert(history_.end(), events.begin(), events.end());
      applied_ = applied;
    }
    if (report) hub.OnApplied(kShard, applied, reset, /*split=*/false, std::move(events));
  }
  void SetFloor(uint64_t floor) {
    absl::MutexLock lock(&mu_);
    floor_ = floor;
  }
  void SetCheck(absl::Status s) {
    absl::MutexLock lock(&mu_);
    check_ = std::move(s);
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<sm::HistoryEvent> history_ ABSL_GUARDED_BY(mu_);
  uint64_t applied_ ABSL_GUARDED_BY(mu_) = 10;
  uint64_t floor_ ABSL_GUARDED_BY(mu_) = 1;
  absl::Status check_ ABSL_GUARDED_BY(mu_);
};

class CountingSink : public WatchStreamSink {
 public:
  void Wake() override {}
};

class WatchHubTest : public ::testing::Test {
 protected:
  void MakeHub(WatchHubOptions options) {
    options.progress_interval = absl::Milliseconds(20);
    hub_ = std::make_unique<WatchHub>(options, &source_);
  }
  void TearDown() override {
    if (hub_ != nullptr) hub_->RemoveStream(sink_.get());
  }

  v1::WatchCreate Create(uint64_t id, const std::string& key, bool prefix, uint64_t start = 0) {
    v1::WatchCreate c;
    c.set_watch_id(id);
    c.set_key(key);
    c.set_prefix(prefix);
    c.set_start_revision(start);
    c.set_prev_kv(true);
    return c;
  }

  // Takes responses until `done` holds for the ones taken, or 10 s.
  std::vector<v1::WatchResponse> TakeUntil(
      const std::function<bool(const std::vector<v1::WatchResponse>&)>& done) {
    std::vector<v1::WatchResponse> out;
    const absl::Time until = absl::Now() + absl::Seconds(10);
    while (!done(out) && absl::Now() < until) {
      std::optional<v1::WatchResponse> r = hub_->Take(sink_.get(), 1 << 20);
      if (r.has_value()) {
        out.push_back(std::move(*r));
      } else {
        absl::SleepFor(absl::Milliseconds(1));  // the hub's threads work meanwhile
      }
    }
    return out;
  }
  // Until no watcher is catching up (10 s at most).
  bool WaitLive() {
    const absl::Time until = absl::Now() + absl::Seconds(10);
    while (hub_->Stats().catching_up > 0) {
      if (absl::Now() > until) return false;
      absl::SleepFor(absl::Milliseconds(1));
    }
    return true;
  }
  static std::vector<std::string> Values(const std::vector<v1::WatchResponse>& responses,
                                         uint64_t id) {
    std::vector<std::string> out;
    for (const v1::WatchResponse& r : responses) {
      if (r.watch_id() != id) continue;
      for (const v1::Event& e : r.events()) out.push_back(e.kv().value());
    }
    return out;
  }
  static bool Ended(const std::vector<v1::WatchResponse>& responses, uint64_t id) {
    for (const v1::WatchResponse& r : responses) {
      if (r.watch_id() == id && r.canceled()) return true;
    }
    return false;
  }

  FakeSource source_;
  std::shared_ptr<CountingSink> sink_ = std::make_shared<CountingSink>();
  std::unique_ptr<WatchHub> hub_;
};

TEST_F(WatchHubTest, LiveEventsReachTheWatchersWhoseKeysTheyAre) {
  MakeHub({});
  hub_->Create(sink_, Create(1, "a", false), kShard, 1, absl::OkStatus());
  hub_->Create(sink_, Create(2, "p/", true), kShard, 1, absl::OkStatus());
  std::vector<v1::WatchResponse> created = TakeUntil([](const auto& r) { return r.size() >= 2; });
  ASSERT_EQ(created.size(), 2u);
  EXPECT_TRUE(created[0].created());
  EXPECT_EQ(created[0].revision(), 10u);  // from now: after the applied index
  // Events stored and reported while a watcher still catches up come from
  // the history instead: either way once.
  source_.Apply(*hub_, {Put(11, "a", "1"), Put(11, "p/x", "2", 1), Put(11, "q", "3", 2)}, 11);
  source_.Apply(*hub_, {Put(12, "p/y", "4")}, 12);
  std::vector<v1::WatchResponse> got =
      TakeUntil([](const auto& r) { return Values(r, 1).size() + Values(r, 2).size() >= 3; });
  EXPECT_THAT(Values(got, 1), ::testing::ElementsAre("1"));
  EXPECT_THAT(Values(got, 2), ::testing::ElementsAre("2", "4"));
  for (const v1::WatchResponse& r : got) {
    if (!r.events().empty()) {
      EXPECT_EQ(r.revision(), r.events().rbegin()->kv().mod_revision());
    }
  }
  EXPECT_EQ(hub_->Stats().watchers, 2u);
}

TEST_F(WatchHubTest, AWatchFromThePastCatchesUpThenGoesLiveWithNoGapOrRepeat) {
  MakeHub({});
  std::vector<sm::HistoryEvent> old;
  for (uint64_t r = 2; r <= 10; ++r) old.push_back(Put(r, "k", "v" + std::to_string(r)));
  source_.Apply(*hub_, old, 10, false, /*report=*/false);
  hub_->Create(sink_, Create(1, "k", false, /*start=*/4), kShard, 1, absl::OkStatus());
  // Writes go on while it catches up.
  for (uint64_t r = 11; r <= 30; ++r)
    source_.Apply(*hub_, {Put(r, "k", "v" + std::to_string(r))}, r);
  std::vector<v1::WatchResponse> got =
      TakeUntil([](const auto& r) { return Values(r, 1).size() >= 27; });
  std::vector<std::string> want;
  for (uint64_t r = 4; r <= 30; ++r) want.push_back("v" + std::to_string(r));
  EXPECT_EQ(Values(got, 1), want);
  ASSERT_FALSE(got.empty());
  EXPECT_TRUE(got[0].created());
  EXPECT_EQ(got[0].revision(), 3u);
}

TEST_F(WatchHubTest, ACompactedStartEndsTheWatchWithOutOfRange) {
  MakeHub({});
  source_.SetFloor(8);
  hub_->Create(sink_, Create(1, "k", false, /*start=*/5), kShard, 1, absl::OkStatus());
  std::vector<v1::WatchResponse> got = TakeUntil([](const auto& r) { return Ended(r, 1); });
  ASSERT_TRUE(Ended(got, 1));
  EXPECT_EQ(got.back().error().code(), static_cast<int>(absl::StatusCode::kOutOfRange));
  EXPECT_EQ(got.back().compact_revision(), 8u);
  EXPECT_EQ(hub_->Stats().compacted_total, 1u);
  EXPECT_EQ(hub_->Stats().watchers, 0u);
}

TEST_F(WatchHubTest, AWatcherThatFallsBehindIsEndedWithItsResumePoint) {
  MakeHub({.max_watcher_bytes = 2000});
  hub_->Create(sink_, Create(1, "k", false), kShard, 1, absl::OkStatus());
  TakeUntil([](const auto& r) { return !r.empty(); });
  ASSERT_TRUE(WaitLive());  // a catch-up paces itself; only live events cut off
  source_.Apply(*hub_, {Put(11, "k", std::string(500, 'a'))}, 11);
  std::vector<v1::WatchResponse> first =
      TakeUntil([](const auto& r) { return Values(r, 1).size() >= 1; });
  ASSERT_EQ(Values(first, 1).size(), 1u);
  // Nothing taken while 10 more arrive: past 2000 bytes it is cut off.
  for (uint64_t r = 12; r <= 21; ++r) source_.Apply(*hub_, {Put(r, "k", std::string(500, 'b'))}, r);
  std::vector<v1::WatchResponse> rest = TakeUntil([](const auto& r) { return Ended(r, 1); });
  ASSERT_TRUE(Ended(rest, 1));
  EXPECT_TRUE(Values(rest, 1).empty()) << "its queue is dropped";
  EXPECT_EQ(rest.back().error().code(), static_cast<int>(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(rest.back().revision(), 11u) << "resume after the last event taken";
  EXPECT_EQ(hub_->Stats().slow_cancelled_total, 1u);
  EXPECT_EQ(hub_->Stats().queued_bytes, 0u);
}

TEST_F(WatchHubTest, AResetReadsTheMissedEventsFromTheHistory) {
  MakeHub({});
  hub_->Create(sink_, Create(1, "k", false), kShard, 1, absl::OkStatus());
  TakeUntil([](const auto& r) { return !r.empty(); });
  ASSERT_TRUE(WaitLive());
  // A snapshot install: events 11..14 stored but never reported.
  source_.Apply(*hub_, {Put(11, "k", "a"), Put(12, "k", "b"), Put(13, "k", "c"), Put(14, "k", "d")},
                14, false, /*report=*/false);
  source_.Apply(*hub_, {Put(15, "k", "e")}, 15, /*reset=*/true);
  std::vector<v1::WatchResponse> got =
      TakeUntil([](const auto& r) { return Values(r, 1).size() >= 5; });
  EXPECT_THAT(Values(got, 1), ::testing::ElementsAre("a", "b", "c", "d", "e"));
}

TEST_F(WatchHubTest, ASplitEndsTheShardsWatchersAtTheLastRevisionSent) {
  MakeHub({});
  hub_->Create(sink_, Create(1, "k", false), kShard, 1, absl::OkStatus());
  TakeUntil([](const auto& r) { return !r.empty(); });
  ASSERT_TRUE(WaitLive());
  source_.Apply(*hub_, {Put(11, "k", "a")}, 11);
  TakeUntil([](const auto& r) { return Values(r, 1).size() >= 1; });
  source_.Apply(*hub_, {Put(12, "k", "b")}, 12);  // queued, not taken
  hub_->OnApplied(kShard, 13, /*reset=*/false, /*split=*/true, {});
  std::vector<v1::WatchResponse> end = TakeUntil([](const auto& r) { return Ended(r, 1); });
  ASSERT_TRUE(Ended(end, 1));
  EXPECT_EQ(end.back().error().code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(end.back().revision(), 11u) << "resume after the last event taken";
}

TEST_F(WatchHubTest, CancelBoundsAndRefusals) {
  MakeHub({.max_watchers = 1});
  hub_->Create(sink_, Create(1, "k", false), kShard, 1, absl::OkStatus());
  hub_->Create(sink_, Create(1, "other", false), kShard, 1, absl::OkStatus());  // same id
  hub_->Create(sink_, Create(2, "k", false), kShard, 1, absl::OkStatus());      // over the bound
  hub_->Create(sink_, Create(3, "k", false), kShard, 1, absl::InvalidArgumentError("bad key"));
  std::vector<v1::WatchResponse> got = TakeUntil([](const auto& r) { return r.size() >= 4; });
  std::map<uint64_t, std::vector<int>> codes;
  for (const v1::WatchResponse& r : got) {
    if (r.canceled()) codes[r.watch_id()].push_back(r.error().code());
  }
  EXPECT_THAT(codes[1],
              ::testing::ElementsAre(static_cast<int>(absl::StatusCode::kInvalidArgument)));
  EXPECT_THAT(codes[2],
              ::testing::ElementsAre(static_cast<int>(absl::StatusCode::kResourceExhausted)));
  EXPECT_THAT(codes[3],
              ::testing::ElementsAre(static_cast<int>(absl::StatusCode::kInvalidArgument)));
  // The first one is still live; cancelling it answers with code 0.
  hub_->Cancel(sink_.get(), 1);
  std::vector<v1::WatchResponse> end = TakeUntil([](const auto& r) { return Ended(r, 1); });
  ASSERT_TRUE(Ended(end, 1));
  EXPECT_EQ(end.back().error().code(), 0);
  EXPECT_EQ(hub_->Stats().watchers, 0u);
}

TEST_F(WatchHubTest, AFailedCheckEndsTheWatchAndIdleWatchersGetProgress) {
  MakeHub({});
  v1::WatchCreate c = Create(1, "k", false);
  c.set_progress_notify(true);
  hub_->Create(sink_, c, kShard, 1, absl::OkStatus());
  source_.Apply(*hub_, {Put(11, "other", "x")}, 11);
  // An idle watcher's progress response carries the shard's revision.
  std::vector<v1::WatchResponse> got = TakeUntil(
      [](const auto& r) { return !r.empty() && !r.back().created() && r.back().revision() >= 11; });
  ASSERT_FALSE(got.empty());
  EXPECT_GE(got.back().revision(), 11u);
  EXPECT_TRUE(got.back().events().empty());
  source_.SetCheck(absl::FailedPreconditionError("the shard split"));
  std::vector<v1::WatchResponse> end = TakeUntil([](const auto& r) { return Ended(r, 1); });
  ASSERT_TRUE(Ended(end, 1));
  EXPECT_EQ(end.back().error().code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
}

}  // namespace
}  // namespace tessera::server
