// Hand-written histories for the linearizability checker: linearizable ones
// must pass, known anomalies must be rejected with a useful explanation.
#include "tests/chaos/linearizability.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tests/chaos/testing_history.h"

namespace tessera::chaos {
namespace {

using ::tessera::chaos::testing::HistoryBuilder;
using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

constexpr Outcome kOk = Outcome::kOk;
constexpr Outcome kFail = Outcome::kFail;
constexpr Outcome kUnknown = Outcome::kUnknown;
const Value kAbsent = std::nullopt;

LinearizabilityReport Check(const HistoryBuilder& h, LinearizabilityOptions options = {}) {
  absl::StatusOr<LinearizabilityReport> r = CheckLinearizability(h.ops(), options);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : LinearizabilityReport{.verdict = Verdict::kUnknown};
}

void ExpectLinearizable(const HistoryBuilder& h) {
  LinearizabilityReport r = Check(h);
  EXPECT_EQ(r.verdict, Verdict::kOk) << r.Summary();
}

// Returns the explanation of the (single) bad key.
std::string ExpectViolation(const HistoryBuilder& h) {
  LinearizabilityReport r = Check(h);
  EXPECT_EQ(r.verdict, Verdict::kViolation) << r.Summary();
  for (const KeyReport& k : r.keys) {
    if (k.verdict == Verdict::kViolation) return k.explanation;
  }
  return "";
}

TEST(Linearizability, EmptyHistoryIsLinearizable) { ExpectLinearizable(HistoryBuilder()); }

TEST(Linearizability, SequentialHistoryPasses) {
  HistoryBuilder h;
  h.Get(1, "x", kAbsent, 0, 5);
  h.Put(1, "x", "a", 10, 20);
  h.Get(2, "x", "a", 30, 40);
  h.Put(2, "x", "b", 50, 60);
  h.Get(1, "x", "b", 70, 80);
  h.Delete(1, "x", 90, 100, kOk, /*existed=*/true);
  h.Get(2, "x", kAbsent, 110, 120);
  h.Delete(2, "x", 130, 140, kOk, /*existed=*/false);
  ExpectLinearizable(h);
}

TEST(Linearizability, ConcurrentReadMaySeeOldOrNewValue) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(1, "x", "b", 20, 60);
  h.Get(2, "x", "b", 25, 35);  // b took effect early
  h.Get(3, "x", "b", 50, 70);
  ExpectLinearizable(h);

  HistoryBuilder h2;
  h2.Put(1, "x", "a", 0, 10);
  h2.Put(1, "x", "b", 20, 60);
  h2.Get(2, "x", "a", 25, 35);  // b not yet
  h2.Get(3, "x", "a", 40, 55);  // still not
  h2.Get(2, "x", "b", 50, 70);
  ExpectLinearizable(h2);
}

TEST(Linearizability, ConcurrentWritesInEitherOrder) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 100);
  h.Put(2, "x", "b", 0, 100);
  h.Get(3, "x", "b", 10, 20);
  h.Get(3, "x", "a", 30, 40);  // a after b
  h.Get(3, "x", "a", 110, 120);
  ExpectLinearizable(h);
}

TEST(Linearizability, UnknownWriteAppliedLate) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(2, "x", "b", 20, 30, kUnknown);  // client gave up at 30
  h.Get(3, "x", "a", 40, 50);
  h.Get(3, "x", "b", 60, 70);  // it took effect after 50
  ExpectLinearizable(h);
}

TEST(Linearizability, UnknownWriteNeverApplied) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(2, "x", "b", 20, 30, kUnknown);
  h.Cas(2, "x", "zzz", "c", 35, 40, kUnknown);  // could never have applied
  h.Delete(2, "x", 36, 41, kUnknown);
  h.Get(3, "x", "a", 100, 110);
  h.Get(3, "x", "a", 200, 210);
  ExpectLinearizable(h);
}

TEST(Linearizability, UnknownCasAppliedAfterItsPrecondition) {
  HistoryBuilder h;
  h.Cas(1, "x", "a", "b", 0, 10, kUnknown);  // invoked before a existed
  h.Put(2, "x", "a", 20, 30);
  h.Get(3, "x", "b", 40, 50);  // so the cas applied after 20
  ExpectLinearizable(h);
}

TEST(Linearizability, CasChainPasses) {
  HistoryBuilder h;
  h.Cas(1, "x", kAbsent, "a", 0, 10);  // create if absent
  h.Cas(1, "x", "a", "b", 20, 30);
  h.Cas(2, "x", "a", "z", 40, 50, kFail);  // compare failed: value was b
  h.Cas(2, "x", "b", "c", 60, 70);
  h.Get(1, "x", "c", 80, 90);
  ExpectLinearizable(h);
}

TEST(Linearizability, ConcurrentCasOneWins) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Cas(1, "x", "a", "b", 20, 40);
  h.Cas(2, "x", "a", "c", 20, 40, kFail);
  h.Get(3, "x", "b", 50, 60);
  ExpectLinearizable(h);
}

TEST(Linearizability, FailedWritesAreDropped) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(2, "x", "b", 20, 30, kFail);
  h.Delete(2, "x", 35, 38, kFail);
  h.Get(3, "x", "a", 40, 50);
  h.Get(3, "x", "never", 60, 70, kUnknown);  // no result: ignored
  ExpectLinearizable(h);
}

TEST(Linearizability, TouchingIntervalsCountAsConcurrent) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Get(2, "x", kAbsent, 10, 20);
  ExpectLinearizable(h);
}

TEST(Linearizability, KeysAreIndependent) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(1, "y", "b", 20, 30);
  h.Get(2, "x", "a", 40, 50);
  h.Get(2, "y", "b", 40, 50);
  h.Get(2, "z", kAbsent, 40, 50);
  LinearizabilityReport r = Check(h);
  EXPECT_EQ(r.verdict, Verdict::kOk);
  EXPECT_EQ(r.keys.size(), 3u);
}

TEST(Linearizability, RejectsStaleRead) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(1, "x", "b", 20, 30);
  int64_t stale = h.Get(2, "x", "a", 40, 50);
  std::string why = ExpectViolation(h);
  EXPECT_THAT(why, HasSubstr("key \"x\""));
  EXPECT_THAT(why, HasSubstr(absl::StrCat("cannot place #", stale)));
  EXPECT_THAT(why, HasSubstr("it read \"a\" but the value is \"b\""));
}

TEST(Linearizability, RejectsLostWrite) {
  // An acknowledged write is never visible: a later read sees the value
  // before it, and nobody wrote concurrently.
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  int64_t lost = h.Put(2, "x", "b", 20, 30);
  h.Get(3, "x", "a", 40, 50);
  h.Get(3, "x", "a", 60, 70);
  std::string why = ExpectViolation(h);
  EXPECT_THAT(why, HasSubstr(absl::StrCat("linearized #", lost)));
  EXPECT_THAT(why, HasSubstr("it read \"a\" but the value is \"b\""));

  HistoryBuilder h2;  // the same from the initial state
  h2.Put(1, "x", "a", 0, 10);
  h2.Get(3, "x", kAbsent, 40, 50);
  EXPECT_THAT(ExpectViolation(h2), HasSubstr("it read <absent> but the value is \"a\""));
}

TEST(Linearizability, RejectsReadOfNeverWrittenValue) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(2, "x", "b", 5, 15, kUnknown);
  int64_t ghost = h.Get(3, "x", "ghost", 20, 30);
  std::string why = ExpectViolation(h);
  EXPECT_THAT(why, HasSubstr(absl::StrCat("#", ghost, " p3 get")));
  EXPECT_THAT(why, HasSubstr("it read \"ghost\", a value no write that may have applied"));
}

TEST(Linearizability, RejectsCasOnValueThatWasNotCurrent) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(1, "x", "b", 20, 30);
  h.Cas(2, "x", "a", "c", 40, 50);
  EXPECT_THAT(ExpectViolation(h), HasSubstr("it expected \"a\" but the value is \"b\""));
}

TEST(Linearizability, RejectsFailedCasWhenValueMatched) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Cas(2, "x", "a", "c", 20, 30, kFail);  // nobody else wrote: it must have matched
  EXPECT_THAT(ExpectViolation(h), HasSubstr("its compare failed"));
}

TEST(Linearizability, RejectsReadObservingFailedWrite) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(2, "x", "b", 20, 30, kFail);
  h.Get(3, "x", "b", 40, 50);
  EXPECT_THAT(ExpectViolation(h), HasSubstr("(a failed write did: #2"));

  HistoryBuilder h2;  // the same when the failed write's value was written before
  h2.Put(1, "x", "b", 0, 5);
  h2.Put(1, "x", "a", 6, 10);
  h2.Put(2, "x", "b", 20, 30, kFail);
  h2.Get(3, "x", "b", 40, 50);
  EXPECT_THAT(ExpectViolation(h2), HasSubstr("it read \"b\" but the value is \"a\""));
}

TEST(Linearizability, RejectsReadOfUnknownWriteBeforeItsInvoke) {
  HistoryBuilder h;
  h.Get(1, "x", "b", 0, 10);
  h.Put(2, "x", "b", 20, 30, kUnknown);
  ExpectViolation(h);
}

TEST(Linearizability, RejectsNonMonotonicReads) {
  // Once a read saw the concurrent write b, a later read cannot see a.
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(1, "x", "b", 20, 100);
  h.Get(2, "x", "b", 30, 40);
  h.Get(3, "x", "a", 50, 60);
  ExpectViolation(h);
}

TEST(Linearizability, RejectsDeleteThatSawWrongExistence) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Delete(2, "x", 20, 30, kOk, /*existed=*/false);
  EXPECT_THAT(ExpectViolation(h), HasSubstr("existed=0"));
}

TEST(Linearizability, ReportsOnlyTheBadKey) {
  HistoryBuilder h;
  h.Put(1, "good", "a", 0, 10);
  h.Get(1, "good", "a", 20, 30);
  h.Put(1, "bad", "a", 0, 10);
  h.Get(1, "bad", "zz", 20, 30);
  LinearizabilityReport r = Check(h);
  ASSERT_EQ(r.verdict, Verdict::kViolation);
  ASSERT_EQ(r.keys.size(), 2u);
  EXPECT_EQ(r.keys[0].key, "bad");
  EXPECT_EQ(r.keys[0].verdict, Verdict::kViolation);
  EXPECT_EQ(r.keys[1].verdict, Verdict::kOk);
  EXPECT_THAT(r.Summary(), HasSubstr("1 of 2 keys linearizable"));
}

TEST(Linearizability, ExplanationShowsPrefixAndConcurrentOps) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 0, 10);
  h.Put(1, "x", "b", 20, 30);
  h.Get(2, "x", "a", 40, 50);
  h.Put(3, "x", "c", 45, 60);
  std::string why = ExpectViolation(h);
  EXPECT_THAT(why, HasSubstr("longest linearizable prefix has 2 of 4 required ops"));
  EXPECT_THAT(why, HasSubstr("concurrent #4 p3 put \"x\" := \"c\""));
}

TEST(Linearizability, BudgetExceededIsUnknown) {
  // Many concurrent writes, then reads that cannot all be satisfied (v1 again
  // after v2): the search tries every subset of the other writes first.
  HistoryBuilder h;
  for (int i = 0; i < 30; ++i) h.Put(i, "x", absl::StrCat("v", i), 0, 100);
  h.Get(99, "x", "v1", 50, 60);
  h.Get(99, "x", "v2", 70, 80);
  h.Get(99, "x", "v1", 90, 95);
  LinearizabilityReport r = Check(h, {.max_states_per_key = 1000});
  EXPECT_EQ(r.verdict, Verdict::kUnknown) << r.Summary();
  EXPECT_THAT(r.Summary(), HasSubstr("budget exceeded"));
}

TEST(Linearizability, RejectsMalformedOps) {
  HistoryBuilder h;
  h.Put(1, "x", "a", 20, 10);  // completes before its invoke
  EXPECT_THAT(CheckLinearizability(h.ops()), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace tessera::chaos
