#include "client/bench/histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "absl/strings/str_format.h"

namespace tessera::bench {
namespace {

// The middle of a bucket: what a recorded value is reported as.
uint64_t BucketMiddle(size_t index) { return BucketLowest(index) + BucketWidth(index) / 2; }

void AtomicMin(std::atomic<uint64_t>& target, uint64_t value) {
  uint64_t current = target.load(std::memory_order_relaxed);
  while (value < current &&
         !target.compare_exchange_weak(current, value, std::memory_order_relaxed)) {
  }
}

void AtomicMax(std::atomic<uint64_t>& target, uint64_t value) {
  uint64_t current = target.load(std::memory_order_relaxed);
  while (value > current &&
         !target.compare_exchange_weak(current, value, std::memory_order_relaxed)) {
  }
}

}  // namespace

size_t BucketIndex(uint64_t nanos) {
  nanos = std::min(nanos, kMaxNanos);
  if (nanos < kSubBuckets) return nanos;
  const int shift = std::bit_width(nanos) - 1 - kSubBucketBits;
  return (shift + 1) * kSubBuckets + ((nanos >> shift) - kSubBuckets);
}

uint64_t BucketLowest(size_t index) {
  if (index < kSubBuckets) return index;
  const size_t shift = index / kSubBuckets - 1;
  return (kSubBuckets + index % kSubBuckets) << shift;
}

uint64_t BucketWidth(size_t index) {
  if (index < kSubBuckets) return 1;
  return uint64_t{1} << (index / kSubBuckets - 1);
}

LatencyHistogram::LatencyHistogram()
    : buckets_(std::make_unique<std::array<uint64_t, kNumBuckets>>()) {}

void LatencyHistogram::RecordCount(uint64_t nanos, uint64_t count) {
  if (count == 0) return;
  nanos = std::min(nanos, kMaxNanos);
  (*buckets_)[BucketIndex(nanos)] += count;
  count_ += count;
  sum_ += nanos * count;
  min_ = std::min(min_, nanos);
  max_ = std::max(max_, nanos);
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  for (size_t i = 0; i < kNumBuckets; ++i) (*buckets_)[i] += (*other.buckets_)[i];
  count_ += other.count_;
  sum_ += other.sum_;
  min_ = std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
}

double LatencyHistogram::mean_nanos() const {
  return count_ == 0 ? 0 : static_cast<double>(sum_) / static_cast<double>(count_);
}

double LatencyHistogram::stddev_nanos() const {
  if (count_ == 0) return 0;
  const double mean = mean_nanos();
  double squares = 0;
  for (size_t i = 0; i < kNumBuckets; ++i) {
    if ((*buckets_)[i] == 0) continue;
    const double d = static_cast<double>(std::clamp(BucketMiddle(i), min_, max_)) - mean;
    squares += d * d * static_cast<double>((*buckets_)[i]);
  }
  return std::sqrt(squares / static_cast<double>(count_));
}

uint64_t LatencyHistogram::Percentile(double percent) const {
  if (count_ == 0) return 0;
  if (percent <= 0) return min_;
  if (percent >= 100) return max_;
  // The rank of the value asked for, 1-based; the epsilon keeps 99.9% of
  // 1000 values at rank 999 despite rounding.
  const double exact = percent / 100.0 * static_cast<double>(count_);
  const uint64_t rank = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(exact - 1e-9)));
  uint64_t seen = 0;
  for (size_t i = 0; i < kNumBuckets; ++i) {
    seen += (*buckets_)[i];
    if (seen >= rank) return std::clamp(BucketMiddle(i), min_, max_);
  }
  return max_;
}

uint64_t LatencyHistogram::CountBetween(uint64_t from, uint64_t to) const {
  uint64_t total = 0;
  for (size_t i = 0; i < kNumBuckets; ++i) {
    if ((*buckets_)[i] == 0) continue;
    const uint64_t value = std::clamp(BucketMiddle(i), min_, max_);
    if (value >= from && value < to) total += (*buckets_)[i];
  }
  return total;
}

ConcurrentHistogram::ConcurrentHistogram() : stripes_(std::make_unique<Stripe[]>(kStripes)) {}

ConcurrentHistogram::~ConcurrentHistogram() = default;

void ConcurrentHistogram::Record(uint64_t nanos) {
  // Each thread keeps to one stripe (assigned round-robin on its first
  // record), so two threads rarely write the same cache lines.
  static std::atomic<size_t> next_stripe{0};
  thread_local const size_t stripe_index =
      next_stripe.fetch_add(1, std::memory_order_relaxed) % kStripes;
  Stripe& stripe = stripes_[stripe_index];
  nanos = std::min(nanos, kMaxNanos);
  stripe.buckets[BucketIndex(nanos)].fetch_add(1, std::memory_order_relaxed);
  stripe.count.fetch_add(1, std::memory_order_relaxed);
  stripe.sum.fetch_add(nanos, std::memory_order_relaxed);
  AtomicMin(stripe.min, nanos);
  AtomicMax(stripe.max, nanos);
}

LatencyHistogram ConcurrentHistogram::Snapshot() const {
  LatencyHistogram out;
  for (size_t s = 0; s < kStripes; ++s) {
    const Stripe& stripe = stripes_[s];
    for (size_t i = 0; i < kNumBuckets; ++i) {
      (*out.buckets_)[i] += stripe.buckets[i].load(std::memory_order_relaxed);
    }
    out.count_ += stripe.count.load(std::memory_order_relaxed);
    out.sum_ += stripe.sum.load(std::memory_order_relaxed);
    out.min_ = std::min(out.min_, stripe.min.load(std::memory_order_relaxed));
    out.max_ = std::max(out.max_, stripe.max.load(std::memory_order_relaxed));
  }
  return out;
}

std::string FormatMillis(double nanos) { return absl::StrFormat("%.3f", nanos / 1e6); }

}  // namespace tessera::bench
