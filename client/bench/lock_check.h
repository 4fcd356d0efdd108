// tessera-bench --locks=N: alongside the run, N workers take one lock in
// turn (client/concurrency.h) and, holding it, write a fenced resource (a
// Txn that succeeds only with a token above the last one written,
// client/README.md "Locks and fencing"); and a lease with keys on every
// shard is kept alive. The chaos suite runs it under kills, pauses and
// partitions. It reports a violation when:
//  - a holder's fenced write is refused although its lease was surely live
//    when the refusal came back (before KeepAlive::valid_until): a later
//    holder wrote first, so two holders held the lock at once;
//  - a key of the kept lease is missing while the lease is surely live, or
//    is still there after the lease was revoked (or lost).
// Refusals after a holder's lease may have ended are expected (that is what
// fencing is for) and counted apart. Thread-safe.
#ifndef TESSERA_CLIENT_BENCH_LOCK_CHECK_H_
#define TESSERA_CLIENT_BENCH_LOCK_CHECK_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/lease.h"

namespace tessera::bench {

struct LockVerdict {
  uint64_t acquisitions = 0;
  uint64_t fenced_writes = 0;   // accepted
  uint64_t fenced_refused = 0;  // refused after the holder's lease may have ended
  uint64_t sessions_lost = 0;   // sessions whose lease was not renewed in time
  uint64_t violations = 0;      // see the top
  std::vector<std::string> examples;
};

class LockCheck {
 public:
  // Starts `workers` lock workers and the kept lease (keys "lease-check/"
  // + i) with a client of its own at `endpoints`. `testing_unlocked`: the
  // workers write without waiting for the lock (each takes its place in
  // the queue and writes at once): a negative control, which the check must
  // catch.
  static absl::StatusOr<std::unique_ptr<LockCheck>> Start(const std::vector<std::string>& endpoints,
                                                          int workers,
                                                          bool testing_unlocked = false);
  ~LockCheck();

  // Waits until the workers took the lock `n` times in all, or `deadline`;
  // whether they did.
  bool WaitForAcquisitions(uint64_t n, absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);

  // Stops the workers, checks the kept lease's keys, revokes it and checks
  // they are gone.
  LockVerdict Finish();

 private:
  LockCheck() = default;
  void Work(int worker);
  void Violation(std::string what) ABSL_LOCKS_EXCLUDED(mu_);
  // Whether every kept key is present (or absent); if not, the first key
  // that is not, in `odd`; nullopt (and the error in `odd`) if a read failed.
  std::optional<bool> LeaseKeysAre(bool present, std::string* odd);

  std::unique_ptr<client::Client> client_;
  uint64_t lease_ = 0;
  std::unique_ptr<client::KeepAlive> keep_;
  std::vector<std::string> lease_keys_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  bool testing_unlocked_ = false;

  absl::Mutex mu_;
  LockVerdict verdict_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::bench

#endif  // TESSERA_CLIENT_BENCH_LOCK_CHECK_H_
