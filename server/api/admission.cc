#include "server/api/admission.h"

#include <algorithm>
#include <limits>

namespace tessera::server {
namespace {

constexpr absl::Duration kRateWindow = absl::Seconds(1);
constexpr absl::Duration kUnmeasuredRetryAfter = absl::Milliseconds(100);

}  // namespace

bool ByteBudget::TryAcquire(uint64_t bytes, absl::Time now, absl::Time deadline,
                            uint64_t queued_bytes) {
  absl::MutexLock lock(&mu_);
  if (options_.limit_bytes == 0) {  // admission control off
    in_flight_bytes_ += bytes;
    ++admitted_total_;
    return true;
  }
  const uint64_t ahead = in_flight_bytes_ + queued_bytes;
  if (in_flight_bytes_ == 0 && now - window_start_ >= kRateWindow) {
    // Idle until now: start measuring afresh rather than averaging the
    // idle time into the drain rate.
    window_start_ = now;
    window_served_ = 0;
  }
  if (ahead != 0 && ahead + bytes > options_.limit_bytes) {
    ++rejected_total_;
    window_refused_ += bytes;
    return false;
  }
  if (ahead >= options_.always_admit_bytes && measured_ && deadline != absl::InfiniteFuture()) {
    // FIFO estimate of the wait, with a wide margin: the request's own work
    // (replication, fsync) comes on top, and the rate is an average.
    // A node that served nothing lately admits only always_admit_bytes.
    const double wait_seconds = served_bytes_per_second_ > 0
                                    ? static_cast<double>(ahead + bytes) / served_bytes_per_second_
                                    : std::numeric_limits<double>::infinity();
    if (wait_seconds > absl::ToDoubleSeconds(deadline - now) * 0.5) {
      ++rejected_total_;
      ++rejected_deadline_total_;
      window_refused_ += bytes;
      return false;
    }
  }
  in_flight_bytes_ += bytes;
  ++admitted_total_;
  return true;
}

void ByteBudget::Release(uint64_t bytes, absl::Time now, bool served) {
  absl::MutexLock lock(&mu_);
  in_flight_bytes_ -= std::min(bytes, in_flight_bytes_);
  if (served) window_served_ += bytes;
  const absl::Duration elapsed = now - window_start_;
  if (elapsed >= kRateWindow) {
    const double rate = static_cast<double>(window_served_) / absl::ToDoubleSeconds(elapsed);
    // Smoothed: a window holds only a few large requests.
    served_bytes_per_second_ = measured_ ? (served_bytes_per_second_ + rate) / 2 : rate;
    measured_ = true;
    window_start_ = now;
    window_served_ = 0;
    last_window_refused_ = window_refused_;
    window_refused_ = 0;
  }
}

absl::Duration ByteBudget::RetryAfter(uint64_t queued_bytes) const {
  absl::MutexLock lock(&mu_);
  if (!measured_) return kUnmeasuredRetryAfter;
  if (served_bytes_per_second_ <= 0) return options_.max_retry_after;
  // The refused clients of the last window are (roughly) the ones waiting
  // to come back: a client's turn comes after theirs too, so they are not
  // all told the same short wait and come back to be refused again.
  const absl::Duration drain =
      absl::Seconds(static_cast<double>(in_flight_bytes_ + queued_bytes + last_window_refused_) /
                    served_bytes_per_second_);
  return std::clamp(drain, options_.min_retry_after, options_.max_retry_after);
}

AdmissionStats ByteBudget::Stats() const {
  absl::MutexLock lock(&mu_);
  return AdmissionStats{.in_flight_bytes = in_flight_bytes_,
                        .limit_bytes = options_.limit_bytes,
                        .admitted_total = admitted_total_,
                        .rejected_total = rejected_total_,
                        .rejected_deadline_total = rejected_deadline_total_};
}

}  // namespace tessera::server
