#include "client/timer.h"

#include <vector>

#include "absl/time/clock.h"

namespace tessera::client {

TimerQueue::TimerQueue() : thread_([this] { Run(); }) {}

TimerQueue::~TimerQueue() { Shutdown(); }

void TimerQueue::Schedule(absl::Time when, std::function<void(bool)> fn) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      pending_.emplace(when, std::move(fn));
      ++changes_;
      return;
    }
  }
  fn(false);
}

void TimerQueue::Shutdown() {
  std::multimap<absl::Time, std::function<void(bool)>> left;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    ++changes_;
    left.swap(pending_);
  }
  for (auto& [when, fn] : left) fn(false);
  if (thread_.joinable()) thread_.join();
}

void TimerQueue::Run() {
  while (true) {
    std::vector<std::function<void(bool)>> due;
    {
      absl::MutexLock lock(&mu_);
      const uint64_t seen = changes_;
      const absl::Time next = pending_.empty() ? absl::InfiniteFuture() : pending_.begin()->first;
      // stopping_ too: Shutdown() may have run before this thread started.
      auto changed = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || changes_ != seen;
      };
      mu_.AwaitWithDeadline(absl::Condition(&changed), next);
      if (stopping_) return;
      const absl::Time now = absl::Now();
      while (!pending_.empty() && pending_.begin()->first <= now) {
        due.push_back(std::move(pending_.begin()->second));
        pending_.erase(pending_.begin());
      }
    }
    for (auto& fn : due) fn(true);
  }
}

}  // namespace tessera::client
