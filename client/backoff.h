// Retry pacing for the client SDK: exponential backoff with full jitter, and
// a per-node circuit breaker.
//
// Where they sit: every SDK call runs attempts until one succeeds, an error
// that is not safe to retry comes back, or the call's overall deadline
// passes. Between attempts it waits FullJitterBackoff(); when it picks a node
// it skips nodes whose CircuitBreaker does not Allow() them, so a dead node
// costs a retry no latency.
#ifndef TESSERA_CLIENT_BACKOFF_H_
#define TESSERA_CLIENT_BACKOFF_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/random/bit_gen_ref.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera::client {

struct BackoffPolicy {
  absl::Duration initial = absl::Milliseconds(10);  // cap of the first retry's delay
  absl::Duration max = absl::Milliseconds(500);     // cap of any delay
  double multiplier = 2.0;                          // cap growth per retry
};

// The cap of retry `retry` (0 = the first retry): min(max, initial *
// multiplier^retry).
absl::Duration BackoffCap(const BackoffPolicy& policy, int retry);

// "Full jitter" (AWS architecture blog, "Exponential Backoff And Jitter"): a
// delay drawn uniformly from [0, BackoffCap(policy, retry)]. Thread-safe if
// `rng` is.
absl::Duration FullJitterBackoff(const BackoffPolicy& policy, int retry, absl::BitGenRef rng);

// The wait before retrying a call the server refused with a retry-after
// hint (ErrorDetail.retry_after): uniform in [hint, 1.5 * hint), so that
// clients refused together do not come back together, and none comes back
// before the server asked. Thread-safe if `rng` is.
absl::Duration JitteredRetryAfter(absl::Duration hint, absl::BitGenRef rng);

struct CircuitBreakerOptions {
  int failure_threshold = 3;                    // consecutive failures that open it
  absl::Duration cool_down = absl::Seconds(1);  // open -> half-open after this
};

// Health of one node as seen by this client. Closed: every call may go to
// the node. After `failure_threshold` consecutive failures (transport errors
// or timeouts, not error replies) it opens: Allow() says no until
// `cool_down` has passed; then it is half-open and lets exactly one probe
// through. The probe's success closes it; its failure opens it for another
// cool-down. Time is passed in, so tests need no clock. Thread-safe.
class CircuitBreaker {
 public:
  enum class State { kClosed, kOpen, kHalfOpen };

  explicit CircuitBreaker(CircuitBreakerOptions options) : options_(options) {}

  // Whether a call may go to the node at `now`. In the half-open state the
  // first caller gets true (it is the probe and must report its outcome
  // with RecordSuccess/RecordFailure); the others get false until then.
  bool Allow(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Whether Allow(now) would say yes, without claiming the probe.
  bool WouldAllow(absl::Time now) const ABSL_LOCKS_EXCLUDED(mu_);
  void RecordSuccess() ABSL_LOCKS_EXCLUDED(mu_);
  void RecordFailure(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  State state(absl::Time now) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const CircuitBreakerOptions options_;
  mutable absl::Mutex mu_;
  int consecutive_failures_ ABSL_GUARDED_BY(mu_) = 0;
  bool open_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time open_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool probe_in_flight_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_BACKOFF_H_
