// TimerQueue: ordering, shutdown semantics.
#include "client/timer.h"

#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace tessera::client {
namespace {

// Regression: Shutdown() before the timer thread first took its lock left
// the thread waiting forever (the CLI hung on exit).
TEST(TimerQueue, ShutdownRightAfterConstructionDoesNotHang) {
  // On a thread of its own, so that a hang fails this test with a message
  // instead of running into ctest's timeout.
  auto finished = std::make_shared<absl::Notification>();
  std::thread cycles([finished] {
    for (int i = 0; i < 200; ++i) {
      TimerQueue q;
      q.Shutdown();
    }
    finished->Notify();
  });
  if (!finished->WaitForNotificationWithTimeout(absl::Seconds(60))) {
    cycles.detach();  // hung: it only touches `finished`, which it shares
    FAIL() << "200 construct-and-shutdown cycles did not finish within 60 s";
  }
  cycles.join();
}

TEST(TimerQueue, RunsCallbacksInDeadlineOrder) {
  TimerQueue q;
  absl::Mutex mu;
  std::vector<int> order;
  absl::Notification done;
  const absl::Time now = absl::Now();
  for (int i : {3, 1, 2}) {
    q.Schedule(now + absl::Milliseconds(10 * i), [&, i](bool ok) {
      EXPECT_TRUE(ok);
      absl::MutexLock lock(&mu);
      order.push_back(i);
      if (order.size() == 3) done.Notify();
    });
  }
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

TEST(TimerQueue, ShutdownFiresPendingCallbacksWithFalse) {
  TimerQueue q;
  bool fired = false, ok = true;
  q.Schedule(absl::Now() + absl::Hours(1), [&](bool b) {
    fired = true;
    ok = b;
  });
  q.Shutdown();
  EXPECT_TRUE(fired);
  EXPECT_FALSE(ok);
  bool late = true;
  q.Schedule(absl::Now(), [&](bool b) { late = b; });  // after shutdown: inline, false
  EXPECT_FALSE(late);
}

}  // namespace
}  // namespace tessera::client
