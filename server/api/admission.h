// Admission control by bytes: the node-wide budget of client request bytes
// in flight.
//
// Where it sits: the KV service takes a request's bytes from the budget
// before it does anything else with it, and gives them back when the call
// finishes (with whatever outcome, deadline and cancellation included). A
// write's bytes therefore cover its proposal while it is queued in the Node,
// proposed, replicated and applied. A request that does not fit is refused
// at once with RESOURCE_EXHAUSTED and ErrorDetail.retry_after (RetryAfter()
// below), so an overloaded node sheds load in microseconds instead of
// queueing it until deadlines expire (issue 12, defect 10).
//
// Thread-safety: thread-safe (one mutex, held for a few instructions).
#ifndef TESSERA_SERVER_API_ADMISSION_H_
#define TESSERA_SERVER_API_ADMISSION_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera::server {

// What /metrics reports about the budget.
struct AdmissionStats {
  uint64_t in_flight_bytes = 0;          // admitted and not yet finished
  uint64_t limit_bytes = 0;              // 0 = unlimited
  uint64_t admitted_total = 0;           // requests
  uint64_t rejected_total = 0;           // requests refused with RESOURCE_EXHAUSTED (both reasons)
  uint64_t rejected_deadline_total = 0;  // of which: would not finish by their deadline
};

class ByteBudget {
 public:
  struct Options {
    uint64_t limit_bytes = 64 << 20;  // 0 = no admission control at all
    // Below this many bytes in flight every request is admitted (the drain
    // rate of a node that was idle says nothing about its capacity).
    uint64_t always_admit_bytes = 4 << 20;
    // Bounds of the retry-after hint.
    absl::Duration min_retry_after = absl::Milliseconds(10);
    absl::Duration max_retry_after = absl::Seconds(2);
  };

  explicit ByteBudget(const Options& options) : options_(options) {}

  // Takes `bytes` if they fit under the limit and, at the drain rate
  // measured lately, what is in flight ahead of them would be done well
  // before `deadline` (a request that would wait out its deadline in the
  // queue only wastes the node's work: its client gives up, retries, and the
  // node ends up doing nothing but expired work). `queued_bytes` is work the
  // node still has to do that no admitted request holds (writes answered at
  // their deadline whose entries are still to be applied): it counts as in
  // flight, or every expired request would make room for a new one while
  // its work is still queued. Below always_admit_bytes in flight, every
  // request is admitted; so is a request larger than the whole budget when
  // nothing else is in flight, so it is never refused for good. Returns false
  // (nothing taken) otherwise.
  bool TryAcquire(uint64_t bytes, absl::Time now, absl::Time deadline = absl::InfiniteFuture(),
                  uint64_t queued_bytes = 0) ABSL_LOCKS_EXCLUDED(mu_);
  // Gives back bytes of an earlier successful TryAcquire. `served`: the
  // request was answered (whatever the answer) rather than given up at its
  // deadline or cancelled; only served bytes count toward the drain rate,
  // so that a node busy expiring requests does not look fast.
  void Release(uint64_t bytes, absl::Time now, bool served) ABSL_LOCKS_EXCLUDED(mu_);

  // How long a refused client should wait: the time the node needs to
  // finish what is in flight now (`queued_bytes` as in TryAcquire) plus
  // what it refused in the last window
  // (those clients come back first), at the rate it served requests lately
  // (bytes per second, measured over windows of at least 1 s and smoothed),
  // clamped to [min_retry_after, max_retry_after]. Before any measurement,
  // 100 ms.
  absl::Duration RetryAfter(uint64_t queued_bytes = 0) const ABSL_LOCKS_EXCLUDED(mu_);

  AdmissionStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const Options options_;
  mutable absl::Mutex mu_;
  uint64_t in_flight_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t admitted_total_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t rejected_total_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t rejected_deadline_total_ ABSL_GUARDED_BY(mu_) = 0;
  // Drain-rate measurement: bytes served since window_start_.
  absl::Time window_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t window_served_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t window_refused_ ABSL_GUARDED_BY(mu_) = 0;       // bytes refused since window_start_
  uint64_t last_window_refused_ ABSL_GUARDED_BY(mu_) = 0;  // in the window before
  bool measured_ ABSL_GUARDED_BY(mu_) = false;
  double served_bytes_per_second_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_API_ADMISSION_H_
