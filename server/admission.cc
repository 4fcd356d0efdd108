#include "server/admission.h"

#include <algorithm>

namespace tessera::server {
namespace {

constexpr absl::Duration kRateWindow = absl::Seconds(1);
constexpr absl::Duration kUnmeasuredRetryAfter = absl::Milliseconds(100);

}  // namespace

bool ByteBudget::TryAcquire(uint64_t bytes, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (in_flight_bytes_ == 0 && now - window_start_ >= kRateWindow) {
    // Idle until now: start measuring afresh rather than averaging the
    // idle time into the drain rate.
    window_start_ = now;
    window_released_ = 0;
  }
  if (options_.limit_bytes != 0 && in_flight_bytes_ != 0 &&
      in_flight_bytes_ + bytes > options_.limit_bytes) {
    ++rejected_total_;
    return false;
  }
  in_flight_bytes_ += bytes;
  ++admitted_total_;
  return true;
}

void ByteBudget::Release(uint64_t bytes, absl::Time now) {
  absl::MutexLock lock(&mu_);
  in_flight_bytes_ -= std::min(bytes, in_flight_bytes_);
  window_released_ += bytes;
  const absl::Duration elapsed = now - window_start_;
  if (elapsed >= kRateWindow) {
    released_bytes_per_second_ =
        static_cast<double>(window_released_) / absl::ToDoubleSeconds(elapsed);
    window_start_ = now;
    window_released_ = 0;
  }
}

absl::Duration ByteBudget::RetryAfter() const {
  absl::MutexLock lock(&mu_);
  if (released_bytes_per_second_ <= 0) return kUnmeasuredRetryAfter;
  const absl::Duration drain =
      absl::Seconds(static_cast<double>(in_flight_bytes_) / released_bytes_per_second_);
  return std::clamp(drain, options_.min_retry_after, options_.max_retry_after);
}

AdmissionStats ByteBudget::Stats() const {
  absl::MutexLock lock(&mu_);
  return AdmissionStats{.in_flight_bytes = in_flight_bytes_,
                        .limit_bytes = options_.limit_bytes,
                        .admitted_total = admitted_total_,
                        .rejected_total = rejected_total_};
}

}  // namespace tessera::server
