#include "tests/chaos/durability.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/chaos/testing_history.h"

namespace tessera::chaos {
namespace {

using ::tessera::chaos::testing::HistoryBuilder;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr Outcome kFail = Outcome::kFail;
constexpr Outcome kUnknown = Outcome::kUnknown;

TEST(Durability, LastAcknowledgedWriteSurvives) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(1, "x", "b", 20, 30);
  h.Put(1, "y", "c", 20, 30);
  h.Delete(1, "y", 40, 50);
  DurabilityReport r = CheckDurability(h.ops(), {{"x", "b"}, {"y", std::nullopt}});
  EXPECT_EQ(r.verdict, Verdict::kOk) << r.Summary();
  EXPECT_EQ(r.keys_checked, 2);
  EXPECT_EQ(r.acknowledged_writes, 4);
}

TEST(Durability, ConcurrentWritesMayEitherWin) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 100);
  h.Put(2, "x", "b", 10, 90);
  EXPECT_EQ(CheckDurability(h.ops(), {{"x", "a"}}).verdict, Verdict::kOk);
  EXPECT_EQ(CheckDurability(h.ops(), {{"x", "b"}}).verdict, Verdict::kOk);
}

TEST(Durability, UnknownWriteMayOrMayNotHaveApplied) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(2, "x", "b", 20, 30, kUnknown);
  h.Put(2, "x", "c", 40, 50, kFail);
  EXPECT_EQ(CheckDurability(h.ops(), {{"x", "a"}}).verdict, Verdict::kOk);
  EXPECT_EQ(CheckDurability(h.ops(), {{"x", "b"}}).verdict, Verdict::kOk);
  EXPECT_EQ(CheckDurability(h.ops(), {{"x", "c"}}).verdict, Verdict::kViolation);
}

TEST(Durability, CasAndCompareFailures) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Cas(1, "x", "a", "b", 20, 30);
  h.Cas(1, "x", "a", "z", 40, 50, kFail);  // not a write
  EXPECT_EQ(CheckDurability(h.ops(), {{"x", "b"}}).verdict, Verdict::kOk);
  EXPECT_EQ(CheckDurability(h.ops(), {{"x", "z"}}).verdict, Verdict::kViolation);
}

TEST(Durability, ReportsLostWriteWhenOlderValueSurvives) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  int64_t lost = h.Put(1, "x", "b", 20, 30);
  DurabilityReport r = CheckDurability(h.ops(), {{"x", "a"}});
  EXPECT_EQ(r.verdict, Verdict::kViolation);
  EXPECT_THAT(r.lost_op_ids, ElementsAre(lost));
  EXPECT_THAT(r.Summary(), HasSubstr("it is stale: written by #1"));
  EXPECT_THAT(r.Summary(), HasSubstr("lost acknowledged write: #2"));
}

TEST(Durability, ReportsLostWriteWhenKeyVanished) {
  HistoryBuilder h;
  int64_t lost = h.Put(1, "x", "a", 0, 10);
  h.Delete(2, "x", 5, 8, kFail);
  DurabilityReport r = CheckDurability(h.ops(), {{"x", std::nullopt}});
  EXPECT_EQ(r.verdict, Verdict::kViolation);
  EXPECT_THAT(r.lost_op_ids, ElementsAre(lost));
  EXPECT_THAT(r.Summary(), HasSubstr("no delete could have come last"));
}

TEST(Durability, ReportsValueNeverWritten) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  DurabilityReport r = CheckDurability(h.ops(), {{"x", "ghost"}, {"untouched", "boo"}});
  EXPECT_EQ(r.verdict, Verdict::kViolation);
  EXPECT_EQ(r.violations.size(), 2u);
  EXPECT_THAT(r.Summary(), HasSubstr("no op ever wrote this value"));
}

TEST(Durability, UntouchedAbsentKeyIsFine) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  DurabilityReport r = CheckDurability(h.ops(), {{"x", "a"}, {"never", std::nullopt}});
  EXPECT_EQ(r.verdict, Verdict::kOk) << r.Summary();
}

TEST(Durability, KeysWithoutFinalStateAreUnchecked) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(1, "y", "a", 0, 10);
  DurabilityReport r = CheckDurability(h.ops(), {{"x", "a"}});
  EXPECT_EQ(r.verdict, Verdict::kOk);
  EXPECT_EQ(r.keys_unchecked, 1);
  EXPECT_EQ(CheckDurability(h.ops(), {}).verdict, Verdict::kUnknown);
}

}  // namespace
}  // namespace tessera::chaos
