#include "client/backoff.h"

#include <algorithm>
#include <cmath>

#include "absl/random/distributions.h"

namespace tessera::client {

absl::Duration BackoffCap(const BackoffPolicy& policy, int retry) {
  double cap = absl::ToDoubleSeconds(policy.initial);
  const double max = absl::ToDoubleSeconds(policy.max);
  for (int i = 0; i < retry && cap < max; ++i) cap *= policy.multiplier;
  return absl::Seconds(std::min(cap, max));
}

absl::Duration JitteredRetryAfter(absl::Duration hint, absl::BitGenRef rng) {
  return hint * absl::Uniform(rng, 1.0, 1.5);
}

absl::Duration FullJitterBackoff(const BackoffPolicy& policy, int retry, absl::BitGenRef rng) {
  const double cap = absl::ToDoubleSeconds(BackoffCap(policy, retry));
  if (cap <= 0) return absl::ZeroDuration();
  return absl::Seconds(absl::Uniform(absl::IntervalClosedClosed, rng, 0.0, cap));
}

bool CircuitBreaker::Allow(absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (!open_) return true;
  if (now < open_until_ || probe_in_flight_) return false;
  probe_in_flight_ = true;  // half-open: this caller is the probe
  return true;
}

bool CircuitBreaker::WouldAllow(absl::Time now) const {
  absl::MutexLock lock(&mu_);
  return !open_ || (now >= open_until_ && !probe_in_flight_);
}

void CircuitBreaker::RecordSuccess() {
  absl::MutexLock lock(&mu_);
  consecutive_failures_ = 0;
  open_ = false;
  probe_in_flight_ = false;
}

void CircuitBreaker::RecordFailure(absl::Time now) {
  absl::MutexLock lock(&mu_);
  ++consecutive_failures_;
  if (open_ || consecutive_failures_ >= options_.failure_threshold) {
    open_ = true;
    open_until_ = now + options_.cool_down;
    probe_in_flight_ = false;
  }
}

CircuitBreaker::State CircuitBreaker::state(absl::Time now) const {
  absl::MutexLock lock(&mu_);
  if (!open_) return State::kClosed;
  return now < open_until_ ? State::kOpen : State::kHalfOpen;
}

}  // namespace tessera::client
