// Latency histograms of tessera-bench: log-linear buckets in the style of
// HdrHistogram. Below 128 ns every value has its own bucket; above, each
// power of two is split into 128 equal buckets, so a bucket is at most
// 1/128 (0.8%) of its values wide. Values are nanoseconds and saturate at
// kMaxNanos (60 s).
//
// LatencyHistogram is a plain value (not thread-safe): merge, query,
// print. ConcurrentHistogram is what the driver's completion callbacks
// record into from any gRPC thread without a lock: a few cache-line-apart
// stripes of relaxed atomic counters, a thread keeps to one stripe.
// Snapshot() merges the stripes into a LatencyHistogram.
#ifndef TESSERA_CLIENT_BENCH_HISTOGRAM_H_
#define TESSERA_CLIENT_BENCH_HISTOGRAM_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace tessera::bench {

inline constexpr uint64_t kMaxNanos = 60'000'000'000;  // 60 s
inline constexpr int kSubBucketBits = 7;
inline constexpr uint64_t kSubBuckets = uint64_t{1} << kSubBucketBits;  // 128
// floor(log2(kMaxNanos)) = 35: buckets up to and including that octave.
inline constexpr size_t kNumBuckets = kSubBuckets + (35 - kSubBucketBits + 1) * kSubBuckets;

// The bucket of `nanos` (saturated at kMaxNanos).
size_t BucketIndex(uint64_t nanos);
// The smallest value of a bucket and its width (values in [lowest, lowest + width)).
uint64_t BucketLowest(size_t index);
uint64_t BucketWidth(size_t index);

class LatencyHistogram {
 public:
  LatencyHistogram();

  void Record(uint64_t nanos) { RecordCount(nanos, 1); }
  void RecordCount(uint64_t nanos, uint64_t count);
  void Merge(const LatencyHistogram& other);

  uint64_t count() const { return count_; }
  // Exact smallest / largest value recorded (after saturation); 0 if empty.
  uint64_t min_nanos() const { return count_ == 0 ? 0 : min_; }
  uint64_t max_nanos() const { return max_; }
  // Exact mean; 0 if empty.
  double mean_nanos() const;
  // From the buckets (each value taken as its bucket's middle, clamped to
  // [min, max]: within 0.4%).
  double stddev_nanos() const;
  // The value at or below which `percent` (0..100) of the values lie: the
  // middle of the bucket holding that rank, clamped to [min, max]. 0 = min,
  // 100 = max; 0 if empty.
  uint64_t Percentile(double percent) const;
  // How many recorded values fall in [from, to).
  uint64_t CountBetween(uint64_t from, uint64_t to) const;

  uint64_t bucket_count(size_t index) const { return (*buckets_)[index]; }

 private:
  friend class ConcurrentHistogram;
  std::unique_ptr<std::array<uint64_t, kNumBuckets>> buckets_;
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
  uint64_t min_ = UINT64_MAX;
  uint64_t max_ = 0;
};

// Thread-safe, lock-free recording; Snapshot() may run concurrently with
// Record() (it then sees some of the concurrent values).
class ConcurrentHistogram {
 public:
  ConcurrentHistogram();
  ~ConcurrentHistogram();
  ConcurrentHistogram(const ConcurrentHistogram&) = delete;
  ConcurrentHistogram& operator=(const ConcurrentHistogram&) = delete;

  void Record(uint64_t nanos);
  LatencyHistogram Snapshot() const;

 private:
  static constexpr size_t kStripes = 8;
  struct alignas(64) Stripe {
    std::atomic<uint64_t> count{0};
    std::atomic<uint64_t> sum{0};
    std::atomic<uint64_t> min{UINT64_MAX};
    std::atomic<uint64_t> max{0};
    std::array<std::atomic<uint64_t>, kNumBuckets> buckets{};
  };
  std::unique_ptr<Stripe[]> stripes_;
};

// "12.345" (milliseconds, three decimals) for a value in nanoseconds.
std::string FormatMillis(double nanos);

}  // namespace tessera::bench

#endif  // TESSERA_CLIENT_BENCH_HISTOGRAM_H_
