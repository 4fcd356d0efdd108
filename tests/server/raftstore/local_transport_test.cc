// LocalNetwork (server/local_transport.h): asynchronous in-order delivery,
// fault filters, and Unregister's guarantee.
#include "tests/testing/local_transport.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace tessera::server {
namespace {

constexpr absl::Duration kWait = absl::Seconds(10);

std::vector<ShardMessage> Batch(uint64_t index) {
  ShardMessage m;
  m.shard = 1;
  m.message.set_index(index);
  return {m};
}

// Records what a node receives.
class Inbox {
 public:
  MessageHandler Handler() {
    return [this](NodeId from, std::vector<ShardMessage> msgs) {
      absl::MutexLock lock(&mu_);
      for (const ShardMessage& m : msgs) got_.emplace_back(from, m.message.index());
    };
  }
  // Waits until `n` messages arrived; false after kWait.
  bool WaitForCount(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return got_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), kWait);
  }
  std::vector<std::pair<NodeId, uint64_t>> got() {
    absl::MutexLock lock(&mu_);
    return got_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::pair<NodeId, uint64_t>> got_ ABSL_GUARDED_BY(mu_);
};

TEST(LocalNetwork, DeliversInOrderOnItsOwnThread) {
  LocalNetwork net;
  const std::thread::id sender = std::this_thread::get_id();
  absl::Notification other_thread;
  Inbox inbox;
  MessageHandler record = inbox.Handler();
  net.Register(2, [&](NodeId from, std::vector<ShardMessage> msgs) {
    if (std::this_thread::get_id() != sender && !other_thread.HasBeenNotified()) {
      other_thread.Notify();
    }
    record(from, std::move(msgs));
  });
  std::unique_ptr<Transport> t1 = net.TransportFor(1);
  for (uint64_t i = 1; i <= 100; ++i) t1->Send(2, Batch(i));
  ASSERT_TRUE(inbox.WaitForCount(100));
  EXPECT_TRUE(other_thread.HasBeenNotified());
  std::vector<std::pair<NodeId, uint64_t>> got = inbox.got();
  for (uint64_t i = 1; i <= 100; ++i) EXPECT_EQ(got[i - 1], std::make_pair(NodeId{1}, i));
}

TEST(LocalNetwork, PartitionIsolateAndHeal) {
  LocalNetwork net;
  Inbox to2, to3, to4;
  net.Register(2, to2.Handler());
  net.Register(3, to3.Handler());
  net.Register(4, to4.Handler());
  std::unique_ptr<Transport> t1 = net.TransportFor(1);
  std::unique_ptr<Transport> t3 = net.TransportFor(3);

  net.Partition(2, 1);    // either order names the same link
  t1->Send(2, Batch(1));  // dropped
  t1->Send(3, Batch(2));  // delivered
  ASSERT_TRUE(to3.WaitForCount(1));

  net.Isolate(3);
  t1->Send(3, Batch(3));  // dropped
  t3->Send(2, Batch(4));  // dropped
  // Filters apply at delivery: wait until the queue drained before healing.
  t1->Send(4, Batch(0));
  ASSERT_TRUE(to4.WaitForCount(1));
  net.Heal();
  t1->Send(2, Batch(5));
  t1->Send(3, Batch(6));
  ASSERT_TRUE(to2.WaitForCount(1));
  ASSERT_TRUE(to3.WaitForCount(2));
  // In-order delivery: when 5 and 6 arrived, 1, 3 and 4 had been dropped.
  EXPECT_EQ(to2.got(), (std::vector<std::pair<NodeId, uint64_t>>{{1, 5}}));
  EXPECT_EQ(to3.got(), (std::vector<std::pair<NodeId, uint64_t>>{{1, 2}, {1, 6}}));
  EXPECT_EQ(net.dropped_batches(), 3u);
  EXPECT_EQ(net.delivered_batches(), 4u);
}

TEST(LocalNetwork, NoDeliveryAfterUnregister) {
  LocalNetwork net;
  std::atomic<bool> unregistered{false};
  std::atomic<int> late{0};
  absl::Notification first;
  net.Register(2, [&](NodeId, std::vector<ShardMessage>) {
    if (unregistered.load()) ++late;
    if (!first.HasBeenNotified()) first.Notify();
    absl::SleepFor(absl::Milliseconds(1));  // widen the window for a race
  });
  std::unique_ptr<Transport> t1 = net.TransportFor(1);
  for (uint64_t i = 0; i < 50; ++i) t1->Send(2, Batch(i));
  ASSERT_TRUE(first.WaitForNotificationWithTimeout(kWait));
  net.Unregister(2);
  unregistered = true;
  for (uint64_t i = 0; i < 50; ++i) t1->Send(2, Batch(i));
  // A message to another node sent afterwards arrives after all of them were
  // handled (one FIFO): they were dropped, not delivered late.
  Inbox to3;
  net.Register(3, to3.Handler());
  t1->Send(3, Batch(7));
  ASSERT_TRUE(to3.WaitForCount(1));
  EXPECT_GE(net.dropped_batches(), 50u);
  EXPECT_EQ(late.load(), 0);
}

}  // namespace
}  // namespace tessera::server
