// WaitFor: the one way tests wait for a condition that another thread or
// process makes true (never a sleep of a guessed length).
#ifndef TESSERA_TESTS_TESTING_WAIT_H_
#define TESSERA_TESTS_TESTING_WAIT_H_

#include <functional>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tessera::testing {

// Polls `done` every few milliseconds until it holds (true) or `timeout`
// passes (false). The timeout only bounds a broken run: callers assert on
// the result, never on how long it took.
inline bool WaitFor(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(30)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

}  // namespace tessera::testing

#endif  // TESSERA_TESTS_TESTING_WAIT_H_
