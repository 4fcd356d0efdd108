// One timer thread per Client: runs the next attempt of a call after its
// backoff delay, so no call needs a thread of its own.
//
// Thread-safe. Callbacks run on the timer thread with no lock held and must
// not block (they start an RPC and return).
#ifndef TESSERA_CLIENT_TIMER_H_
#define TESSERA_CLIENT_TIMER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera::client {

class TimerQueue {
 public:
  TimerQueue();
  // Shutdown() if not done yet.
  ~TimerQueue();
  TimerQueue(const TimerQueue&) = delete;
  TimerQueue& operator=(const TimerQueue&) = delete;

  // Runs fn(true) at `when` (or soon after), or fn(false) when the queue
  // shuts down first. After Shutdown() runs fn(false) at once in the caller.
  void Schedule(absl::Time when, std::function<void(bool)> fn) ABSL_LOCKS_EXCLUDED(mu_);

  // Runs every pending callback with false, then stops and joins the thread.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Run() ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  std::multimap<absl::Time, std::function<void(bool)>> pending_ ABSL_GUARDED_BY(mu_);
  uint64_t changes_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_TIMER_H_
