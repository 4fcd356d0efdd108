// The latency histogram of tessera-bench (client/bench/histogram.h): bucket
// geometry, percentiles of known distributions, merging, concurrent
// recording and edge values.
#include "client/bench/histogram.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace tessera::bench {
namespace {

TEST(BenchHistogram, BucketsAreContiguousAndCoverEveryValue) {
  EXPECT_EQ(BucketLowest(0), 0u);
  for (size_t i = 0; i + 1 < kNumBuckets; ++i) {
    ASSERT_EQ(BucketLowest(i) + BucketWidth(i), BucketLowest(i + 1)) << "bucket " << i;
  }
  // The last bucket holds 60 s (its octave goes on to 2^36 ns, unused).
  EXPECT_LT(BucketIndex(kMaxNanos), kNumBuckets);
  EXPECT_GT(BucketLowest(kNumBuckets - 1) + BucketWidth(kNumBuckets - 1), kMaxNanos);
}

TEST(BenchHistogram, EveryValueLandsInItsBucketWithinOnePercent) {
  std::mt19937_64 rng(7);
  std::vector<uint64_t> values = {0, 1, 127, 128, 129, 255, 256, 1000, 999'999, kMaxNanos};
  for (int i = 0; i < 100000; ++i) values.push_back(rng() % (kMaxNanos + 1));
  for (int shift = 0; shift < 36; ++shift) {
    values.push_back(uint64_t{1} << shift);
    values.push_back((uint64_t{1} << shift) - 1);
  }
  for (uint64_t v : values) {
    const size_t i = BucketIndex(v);
    ASSERT_LT(i, kNumBuckets) << v;
    ASSERT_LE(BucketLowest(i), v) << v;
    ASSERT_LT(v, BucketLowest(i) + BucketWidth(i)) << v;
    if (v >= kSubBuckets) {
      ASSERT_LE(static_cast<double>(BucketWidth(i)) / static_cast<double>(BucketLowest(i)), 0.01)
          << v;
    } else {
      ASSERT_EQ(BucketWidth(i), 1u) << v;  // exact below 128 ns
    }
  }
}

TEST(BenchHistogram, ValuesAboveSixtySecondsSaturate) {
  LatencyHistogram h;
  h.Record(UINT64_MAX);
  h.Record(kMaxNanos + 1);
  EXPECT_EQ(BucketIndex(UINT64_MAX), BucketIndex(kMaxNanos));
  EXPECT_EQ(h.count(), 2u);
  EXPECT_EQ(h.max_nanos(), kMaxNanos);
  EXPECT_EQ(h.Percentile(50), kMaxNanos);
}

TEST(BenchHistogram, EmptyHistogramReportsZeros) {
  LatencyHistogram h;
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.min_nanos(), 0u);
  EXPECT_EQ(h.max_nanos(), 0u);
  EXPECT_EQ(h.mean_nanos(), 0);
  EXPECT_EQ(h.stddev_nanos(), 0);
  EXPECT_EQ(h.Percentile(50), 0u);
  EXPECT_EQ(h.Percentile(100), 0u);
}

TEST(BenchHistogram, OneValueIsEveryPercentileExactly) {
  LatencyHistogram h;
  h.RecordCount(1'234'567, 1000);  // 1.234567 ms
  for (double p : {0.0, 10.0, 50.0, 99.0, 99.9, 100.0}) {
    EXPECT_EQ(h.Percentile(p), 1'234'567u) << p;  // clamped to [min, max]
  }
  EXPECT_EQ(h.mean_nanos(), 1'234'567);
  EXPECT_NEAR(h.stddev_nanos(), 0, 1);
}

TEST(BenchHistogram, PercentilesOfUniformDistributionWithinOnePercent) {
  // 1 us, 2 us, ..., 100000 us: the p-th percentile is p * 1000 us.
  LatencyHistogram h;
  for (uint64_t us = 1; us <= 100000; ++us) h.Record(us * 1000);
  EXPECT_EQ(h.count(), 100000u);
  EXPECT_EQ(h.min_nanos(), 1000u);
  EXPECT_EQ(h.max_nanos(), 100'000'000u);
  EXPECT_DOUBLE_EQ(h.mean_nanos(), 50'000.5 * 1000);
  for (double p : {1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9}) {
    const double expected = p * 1000 * 1000;
    EXPECT_NEAR(static_cast<double>(h.Percentile(p)), expected, expected * 0.01) << p;
  }
  EXPECT_EQ(h.Percentile(0), 1000u);
  EXPECT_EQ(h.Percentile(100), 100'000'000u);
  // Uniform on [0, 100 ms]: stddev = 100 ms / sqrt(12).
  EXPECT_NEAR(h.stddev_nanos(), 1e8 / std::sqrt(12.0), 1e8 / std::sqrt(12.0) * 0.01);
}

TEST(BenchHistogram, PercentilesOfBimodalDistribution) {
  // 90% at 1 ms, 10% at 100 ms: p50 and p90 are 1 ms, p91 and up 100 ms.
  LatencyHistogram h;
  h.RecordCount(1'000'000, 900);
  h.RecordCount(100'000'000, 100);
  EXPECT_NEAR(static_cast<double>(h.Percentile(50)), 1e6, 1e4);
  EXPECT_NEAR(static_cast<double>(h.Percentile(90)), 1e6, 1e4);
  EXPECT_NEAR(static_cast<double>(h.Percentile(91)), 1e8, 1e6);
  EXPECT_NEAR(static_cast<double>(h.Percentile(99.9)), 1e8, 1e6);
  EXPECT_EQ(h.CountBetween(0, 2'000'000), 900u);
  EXPECT_EQ(h.CountBetween(2'000'000, kMaxNanos + 1), 100u);
}

TEST(BenchHistogram, SmallRanksRoundUp) {
  // 1000 values 1..1000 us: p99.9 is the 999th value, not the 1000th.
  LatencyHistogram h;
  for (uint64_t us = 1; us <= 1000; ++us) h.Record(us * 1000);
  EXPECT_NEAR(static_cast<double>(h.Percentile(99.9)), 999e3, 999e3 * 0.01);
  EXPECT_NEAR(static_cast<double>(h.Percentile(0.1)), 1e3, 1e3 * 0.01);
}

TEST(BenchHistogram, MergeEqualsRecordingEverythingInOne) {
  std::mt19937_64 rng(11);
  LatencyHistogram a, b, all;
  for (int i = 0; i < 50000; ++i) {
    const uint64_t v = 1000 + rng() % 50'000'000;
    (i % 3 == 0 ? a : b).Record(v);
    all.Record(v);
  }
  LatencyHistogram merged;
  merged.Merge(a);
  merged.Merge(b);
  EXPECT_EQ(merged.count(), all.count());
  EXPECT_EQ(merged.min_nanos(), all.min_nanos());
  EXPECT_EQ(merged.max_nanos(), all.max_nanos());
  EXPECT_EQ(merged.mean_nanos(), all.mean_nanos());
  for (size_t i = 0; i < kNumBuckets; ++i) ASSERT_EQ(merged.bucket_count(i), all.bucket_count(i));
  for (double p : {50.0, 90.0, 99.0, 99.9}) EXPECT_EQ(merged.Percentile(p), all.Percentile(p));
}

TEST(BenchHistogram, MergingAnEmptyHistogramChangesNothing) {
  LatencyHistogram h, empty;
  h.Record(5000);
  h.Merge(empty);
  EXPECT_EQ(h.count(), 1u);
  EXPECT_EQ(h.min_nanos(), 5000u);
  EXPECT_EQ(h.max_nanos(), 5000u);
}

TEST(BenchHistogram, ConcurrentRecordingLosesNothing) {
  ConcurrentHistogram concurrent;
  constexpr int kThreads = 4;
  constexpr int kPerThread = 100000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&concurrent, t] {
      for (int i = 0; i < kPerThread; ++i) concurrent.Record(1000 + t * kPerThread + i);
    });
  }
  for (std::thread& t : threads) t.join();
  LatencyHistogram expected;
  for (int v = 0; v < kThreads * kPerThread; ++v) expected.Record(1000 + v);
  LatencyHistogram got = concurrent.Snapshot();
  EXPECT_EQ(got.count(), expected.count());
  EXPECT_EQ(got.min_nanos(), 1000u);
  EXPECT_EQ(got.max_nanos(), expected.max_nanos());
  EXPECT_EQ(got.mean_nanos(), expected.mean_nanos());
  for (size_t i = 0; i < kNumBuckets; ++i) ASSERT_EQ(got.bucket_count(i), expected.bucket_count(i));
}

TEST(BenchHistogram, FormatsMilliseconds) {
  EXPECT_EQ(FormatMillis(1'234'567), "1.235");
  EXPECT_EQ(FormatMillis(0), "0.000");
  EXPECT_EQ(FormatMillis(60e9), "60000.000");
}

}  // namespace
}  // namespace tessera::bench
