// Full-jitter backoff and the per-node circuit breaker (explicit times, no clock).
#include "client/backoff.h"

#include "absl/random/random.h"
#include "gtest/gtest.h"

namespace tessera::client {
namespace {

TEST(Backoff, CapGrowsExponentiallyUpToMax) {
  BackoffPolicy p{absl::Milliseconds(10), absl::Milliseconds(500), 2.0};
  EXPECT_EQ(BackoffCap(p, 0), absl::Milliseconds(10));
  EXPECT_EQ(BackoffCap(p, 1), absl::Milliseconds(20));
  EXPECT_EQ(BackoffCap(p, 3), absl::Milliseconds(80));
  EXPECT_EQ(BackoffCap(p, 6), absl::Milliseconds(500));
  EXPECT_EQ(BackoffCap(p, 1000), absl::Milliseconds(500));
}

TEST(Backoff, FullJitterStaysWithinZeroAndCapAndSpreads) {
  BackoffPolicy p{absl::Milliseconds(10), absl::Milliseconds(500), 2.0};
  absl::BitGen rng;
  for (int retry = 0; retry < 10; ++retry) {
    const absl::Duration cap = BackoffCap(p, retry);
    absl::Duration min = absl::InfiniteDuration(), max = absl::ZeroDuration(), sum;
    constexpr int kDraws = 2000;
    for (int i = 0; i < kDraws; ++i) {
      const absl::Duration d = FullJitterBackoff(p, retry, rng);
      ASSERT_GE(d, absl::ZeroDuration());
      ASSERT_LE(d, cap);
      min = std::min(min, d);
      max = std::max(max, d);
      sum += d;
    }
    // Uniform over [0, cap]: draws reach both ends and average about cap/2.
    EXPECT_LT(min, cap * 0.05);
    EXPECT_GT(max, cap * 0.95);
    EXPECT_NEAR(absl::FDivDuration(sum / kDraws, cap), 0.5, 0.05);
  }
}

TEST(CircuitBreaker, OpensAfterConsecutiveFailures) {
  CircuitBreaker b({.failure_threshold = 3, .cool_down = absl::Seconds(1)});
  const absl::Time t0 = absl::UnixEpoch();
  b.RecordFailure(t0);
  b.RecordFailure(t0);
  b.RecordSuccess();  // resets the count
  b.RecordFailure(t0);
  b.RecordFailure(t0);
  EXPECT_TRUE(b.Allow(t0));
  EXPECT_EQ(b.state(t0), CircuitBreaker::State::kClosed);
  b.RecordFailure(t0);
  EXPECT_EQ(b.state(t0), CircuitBreaker::State::kOpen);
  EXPECT_FALSE(b.Allow(t0 + absl::Milliseconds(999)));
  EXPECT_FALSE(b.WouldAllow(t0 + absl::Milliseconds(999)));
}

TEST(CircuitBreaker, HalfOpenLetsOneProbeThroughAndSuccessCloses) {
  CircuitBreaker b({.failure_threshold = 1, .cool_down = absl::Seconds(1)});
  const absl::Time t0 = absl::UnixEpoch();
  b.RecordFailure(t0);
  const absl::Time t1 = t0 + absl::Seconds(1);
  EXPECT_EQ(b.state(t1), CircuitBreaker::State::kHalfOpen);
  EXPECT_TRUE(b.WouldAllow(t1));
  EXPECT_TRUE(b.Allow(t1));   // the probe
  EXPECT_FALSE(b.Allow(t1));  // everyone else waits for it
  EXPECT_FALSE(b.WouldAllow(t1));
  b.RecordSuccess();
  EXPECT_EQ(b.state(t1), CircuitBreaker::State::kClosed);
  EXPECT_TRUE(b.Allow(t1));
  EXPECT_TRUE(b.Allow(t1));
}

TEST(CircuitBreaker, FailedProbeReopensForAnotherCoolDown) {
  CircuitBreaker b({.failure_threshold = 2, .cool_down = absl::Seconds(1)});
  const absl::Time t0 = absl::UnixEpoch();
  b.RecordFailure(t0);
  b.RecordFailure(t0);
  const absl::Time t1 = t0 + absl::Seconds(2);
  EXPECT_TRUE(b.Allow(t1));
  b.RecordFailure(t1);  // one failure is enough in half-open
  EXPECT_EQ(b.state(t1 + absl::Milliseconds(500)), CircuitBreaker::State::kOpen);
  EXPECT_FALSE(b.Allow(t1 + absl::Milliseconds(500)));
  EXPECT_TRUE(b.Allow(t1 + absl::Seconds(1)));
}

}  // namespace
}  // namespace tessera::client
