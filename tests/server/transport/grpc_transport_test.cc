// GrpcTransport + PeerService over real gRPC on 127.0.0.1.
#include "server/transport/grpc_transport.h"
#include "server/transport/grpc_server.h"

#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "storage/mem_kv_store.h"
#include "tests/testing/process.h"

namespace tessera::server {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::PortReservation;

constexpr absl::Duration kWait = absl::Seconds(20);

// Collects what a PeerService hands over. Thread-safe.
class Inbox {
 public:
  MessageHandler Handler() {
    return [this](NodeId from, std::vector<ShardMessage> messages) {
      absl::MutexLock lock(&mu_);
      ++batches_;
      for (ShardMessage& m : messages) received_.push_back({from, std::move(m)});
    };
  }

  // Handler calls so far: one per MessageBatch received.
  int batches() {
    absl::MutexLock lock(&mu_);
    return batches_;
  }

  // Waits until at least `n` messages arrived; returns how many did.
  size_t WaitFor(size_t n, absl::Duration timeout = kWait) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return received_.size() >= n; };
    mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
    return received_.size();
  }

  std::vector<std::pair<NodeId, ShardMessage>> Take() {
    absl::MutexLock lock(&mu_);
    return std::move(received_);
  }

 private:
  absl::Mutex mu_;
  std::vector<std::pair<NodeId, ShardMessage>> received_ ABSL_GUARDED_BY(mu_);
  int batches_ ABSL_GUARDED_BY(mu_) = 0;
};

// One node's receiving side: a PeerService on its own gRPC server.
struct Receiver {
  Receiver(NodeId id, const std::string& address)
      : Receiver(PeerServiceOptions{.self = id, .require_certified_sender = false}, address) {}
  Receiver(PeerServiceOptions service_options, const std::string& address)
      : service(std::move(service_options), inbox.Handler()) {
    GrpcServerOptions options;
    options.address = address;
    options.services = {&service};
    options.max_receive_bytes = 64 << 20;
    absl::StatusOr<std::unique_ptr<GrpcServer>> s = StartGrpcServer(std::move(options));
    EXPECT_THAT(s, IsOk());
    if (s.ok()) started = *std::move(s);
  }
  ~Receiver() {
    if (started != nullptr) started->Shutdown();
  }
  std::string address() const { return absl::StrCat("127.0.0.1:", started->port()); }

  Inbox inbox;
  PeerService service;
  std::unique_ptr<GrpcServer> started;
};

ShardMessage Heartbeat(ShardId shard, uint64_t term, uint64_t from, uint64_t to) {
  ShardMessage m;
  m.shard = shard;
  m.message.set_type(raftpb::MSG_HEARTBEAT);
  m.message.set_term(term);
  m.message.set_from(from);
  m.message.set_to(to);
  return m;
}

GrpcTransportOptions Options(NodeId self, absl::flat_hash_map<NodeId, std::string> peers) {
  GrpcTransportOptions options;
  options.self = self;
  options.peers = std::move(peers);
  options.min_backoff = absl::Milliseconds(10);
  options.max_backoff = absl::Milliseconds(100);
  return options;
}

TEST(GrpcTransport, TwoNodesExchangeBatchesInOrder) {
  Receiver r1(1, "127.0.0.1:0");
  Receiver r2(2, "127.0.0.1:0");
  GrpcTransport t1(Options(1, {{2, r2.address()}}));
  GrpcTransport t2(Options(2, {{1, r1.address()}}));
  constexpr int kBatches = 200;
  for (int i = 0; i < kBatches; ++i) {
    t1.Send(2, {Heartbeat(i % 7, i, 1, 2), Heartbeat(100 + i % 7, i, 1, 2)});
    t2.Send(1, {Heartbeat(i % 5, i, 2, 1)});
  }
  ASSERT_EQ(r2.inbox.WaitFor(2 * kBatches), 2u * kBatches);
  ASSERT_EQ(r1.inbox.WaitFor(kBatches), 1u * kBatches);
  std::vector<std::pair<NodeId, ShardMessage>> at2 = r2.inbox.Take();
  for (int i = 0; i < kBatches; ++i) {
    const auto& [from, a] = at2[2 * i];
    const auto& [from_b, b] = at2[2 * i + 1];
    EXPECT_EQ(from, 1u);
    EXPECT_EQ(from_b, 1u);
    EXPECT_EQ(a.shard, static_cast<ShardId>(i % 7));
    EXPECT_EQ(b.shard, static_cast<ShardId>(100 + i % 7));
    EXPECT_EQ(a.message.term(), static_cast<uint64_t>(i));  // in order
    EXPECT_EQ(a.message.type(), raftpb::MSG_HEARTBEAT);
  }
  std::vector<std::pair<NodeId, ShardMessage>> at1 = r1.inbox.Take();
  for (int i = 0; i < kBatches; ++i) {
    EXPECT_EQ(at1[i].first, 2u);
    EXPECT_EQ(at1[i].second.message.term(), static_cast<uint64_t>(i));
  }
  EXPECT_EQ(t1.StatsForTesting(2).dropped_messages, 0u);
  t1.Stop();
  t2.Stop();
}

// Records outcomes of on_snapshot_sent. Thread-safe.
struct Outcomes {
  std::function<void(NodeId, ShardId, bool)> Callback() {
    return [this](NodeId, ShardId, bool ok) {
      absl::MutexLock lock(&mu);
      got.push_back(ok);
    };
  }
  std::vector<bool> WaitFor(size_t n) {
    absl::MutexLock lock(&mu);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return got.size() >= n; };
    mu.AwaitWithTimeout(absl::Condition(&enough), kWait);
    return got;
  }
  absl::Mutex mu;
  std::vector<bool> got ABSL_GUARDED_BY(mu);
};

ShardMessage SnapMessage(ShardId shard, uint64_t index, std::string data) {
  ShardMessage snap;
  snap.shard = shard;
  snap.message.set_type(raftpb::MSG_SNAP);
  snap.message.set_term(7);
  snap.message.set_from(1);
  snap.message.set_to(2);
  snap.message.mutable_snapshot()->mutable_metadata()->set_index(index);
  snap.message.mutable_snapshot()->mutable_metadata()->set_term(6);
  snap.message.mutable_snapshot()->set_data(std::move(data));
  return snap;
}

// The exported view pinned by the sender's exchange is streamed in many
// chunks into the receiver's staging; the receiver's node gets a token.
TEST(GrpcTransport, ExportIsStreamedIntoTheReceiversStaging) {
  storage::MemKvStore kv1, kv2;
  storage::ShardWrite w{9, 40, {}};
  for (int i = 0; i < 2000; ++i) {
    w.mutations.push_back({storage::Mutation::Kind::kPut, absl::StrCat("key", 10000 + i),
                           std::string(500, static_cast<char>('a' + i % 26))});
  }
  ASSERT_THAT(kv1.Apply({w}), IsOk());
  SnapshotExchange x1(&kv1), x2(&kv2);
  Receiver r2(PeerServiceOptions{.self = 2, .require_certified_sender = false, .snapshots = &x2},
              "127.0.0.1:0");
  Outcomes outcomes;
  GrpcTransportOptions options = Options(1, {{2, r2.address()}});
  options.snapshots = &x1;
  options.snapshot_chunk_bytes = 4096;
  options.on_snapshot_sent = outcomes.Callback();
  GrpcTransport t1(options);
  absl::StatusOr<std::string> token = x1.AddExport(9, *kv1.ExportSnapshot(9));
  ASSERT_THAT(token, IsOk());
  t1.Send(2, {SnapMessage(9, 40, *token)});
  ASSERT_EQ(r2.inbox.WaitFor(1), 1u);
  std::vector<std::pair<NodeId, ShardMessage>> got = r2.inbox.Take();
  const raftpb::Message& m = got[0].second.message;
  EXPECT_EQ(m.snapshot().metadata().index(), 40u);
  ASSERT_TRUE(IsStagedToken(m.snapshot().data()));
  absl::StatusOr<std::unique_ptr<storage::SnapshotStaging>> staging =
      x2.TakeStaged(m.snapshot().data());
  ASSERT_THAT(staging, IsOk());
  ASSERT_THAT((*staging)->Commit(), IsOk());
  EXPECT_EQ(kv2.Scan(9, {})->items.size(), 2000u);
  EXPECT_EQ(*kv2.AppliedIndex(9), 40u);
  EXPECT_EQ(outcomes.WaitFor(1), std::vector<bool>{true});
  EXPECT_EQ(x1.exports(), 0u);
}

// A transfer that cannot be made is reported failed at once (raft then
// probes and sends a new snapshot), not after a timeout.
TEST(GrpcTransport, FailedTransfersAreReportedPromptly) {
  storage::MemKvStore kv1, kv2;
  ASSERT_THAT(kv1.Apply({{9, 40, {{storage::Mutation::Kind::kPut, "k", std::string(10000, 'v')}}}}),
              IsOk());
  SnapshotExchange x1(&kv1), x2(&kv2);
  Receiver r2(PeerServiceOptions{.self = 2,
                                 .require_certified_sender = false,
                                 .max_snapshot_bytes = 1000,
                                 .snapshots = &x2},
              "127.0.0.1:0");
  Outcomes outcomes;
  GrpcTransportOptions options = Options(1, {{2, r2.address()}});
  options.snapshots = &x1;
  options.on_snapshot_sent = outcomes.Callback();
  GrpcTransport t1(options);
  const absl::Time start = absl::Now();
  // Refused by the receiver (too large), then an export that expired.
  t1.Send(2, {SnapMessage(9, 40, *x1.AddExport(9, *kv1.ExportSnapshot(9)))});
  ASSERT_EQ(outcomes.WaitFor(1).size(), 1u);
  t1.Send(2, {SnapMessage(9, 40, std::string("\x02") + std::string(8, '\x7f'))});
  EXPECT_EQ(outcomes.WaitFor(2), (std::vector<bool>{false, false}));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(t1.StatsForTesting(2).snapshots_failed, 2u);
  EXPECT_EQ(r2.inbox.Take().size(), 0u);
  EXPECT_EQ(x1.exports(), 0u);
  EXPECT_EQ(x2.staged(), 0u);
}

TEST(GrpcTransport, LargeSnapshotArrivesIntactInChunks) {
  Receiver r2(2, "127.0.0.1:0");
  absl::Mutex mu;
  std::vector<bool> outcomes;
  GrpcTransportOptions options = Options(1, {{2, r2.address()}});
  options.on_snapshot_sent = [&](NodeId to, ShardId shard, bool ok) {
    EXPECT_EQ(to, 2u);
    EXPECT_EQ(shard, 9u);
    absl::MutexLock lock(&mu);
    outcomes.push_back(ok);
  };
  GrpcTransport t1(options);

  // Inline format-1 data (no exchange on either side): random records.
  std::string data(1, '\x01');
  std::mt19937_64 rng(42);
  for (int i = 0; i < 5000; ++i) {
    std::string value(1000, '\0');
    for (char& c : value) c = static_cast<char>(rng());
    AppendSnapshotRecord({false, absl::StrCat("key", 100000 + i), value}, &data);
  }
  ShardMessage snap;
  snap.shard = 9;
  snap.message.set_type(raftpb::MSG_SNAP);
  snap.message.set_term(7);
  snap.message.set_from(1);
  snap.message.set_to(2);
  snap.message.mutable_snapshot()->mutable_metadata()->set_index(1234);
  snap.message.mutable_snapshot()->mutable_metadata()->set_term(6);
  snap.message.mutable_snapshot()->set_data(data);
  // A heartbeat in the same batch takes the stream, the snapshot its own call.
  t1.Send(2, {Heartbeat(9, 7, 1, 2), std::move(snap)});

  ASSERT_EQ(r2.inbox.WaitFor(2), 2u);
  std::vector<std::pair<NodeId, ShardMessage>> got = r2.inbox.Take();
  const ShardMessage* received = nullptr;
  for (const auto& [from, m] : got) {
    EXPECT_EQ(from, 1u);
    if (m.message.type() == raftpb::MSG_SNAP) received = &m;
  }
  ASSERT_NE(received, nullptr);
  EXPECT_EQ(received->shard, 9u);
  EXPECT_EQ(received->message.term(), 7u);
  EXPECT_EQ(received->message.snapshot().metadata().index(), 1234u);
  EXPECT_EQ(received->message.snapshot().metadata().term(), 6u);
  EXPECT_TRUE(received->message.snapshot().data() == data) << "snapshot data differs";

  absl::MutexLock lock(&mu);
  auto reported = [&]() { return !outcomes.empty(); };
  mu.AwaitWithTimeout(absl::Condition(&reported), kWait);
  ASSERT_EQ(outcomes.size(), 1u);
  EXPECT_TRUE(outcomes[0]);
}

TEST(GrpcTransport, ReconnectsWhenAPeerComesUpLater) {
  PortReservation port;
  GrpcTransport t1(Options(1, {{2, port.address()}}));
  // Nobody listens yet: these are dropped, and the stream fails.
  for (int i = 0; i < 5; ++i) t1.Send(2, {Heartbeat(1, 1, 1, 2)});
  absl::Time deadline = absl::Now() + kWait;
  while (t1.StatsForTesting(2).stream_failures == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_GT(t1.StatsForTesting(2).stream_failures, 0u);

  Receiver r2(2, port.address());
  ASSERT_EQ(r2.started->port(), port.port());
  // Keep sending (raft would keep heartbeating) until one gets through.
  size_t got = 0;
  for (int i = 0; i < 2000 && got == 0; ++i) {
    t1.Send(2, {Heartbeat(1, 2, 1, 2)});
    got = r2.inbox.WaitFor(1, absl::Milliseconds(10));
  }
  ASSERT_GT(got, 0u);
  // Once connected, later messages all arrive, in order. (A heartbeat of the
  // loop above may still arrive after the first: skip those.)
  for (int i = 0; i < 50; ++i) t1.Send(2, {Heartbeat(1, 100 + i, 1, 2)});
  std::vector<std::pair<NodeId, ShardMessage>> later;
  for (absl::Time until = absl::Now() + kWait; later.size() < 50 && absl::Now() < until;) {
    r2.inbox.WaitFor(1, absl::Milliseconds(100));
    for (auto& m : r2.inbox.Take()) {
      if (m.second.message.term() >= 100) later.push_back(std::move(m));
    }
  }
  ASSERT_EQ(later.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(later[i].second.message.term(), 100u + i);
}

TEST(GrpcTransport, ReconnectsWhenAPeerRestarts) {
  PortReservation port;
  GrpcTransport t1(Options(1, {{2, port.address()}}));
  {
    Receiver r2(2, port.address());
    t1.Send(2, {Heartbeat(1, 1, 1, 2)});
    ASSERT_EQ(r2.inbox.WaitFor(1), 1u);
  }  // r2 goes down
  Receiver again(2, port.address());
  size_t got = 0;
  for (int i = 0; i < 2000 && got == 0; ++i) {
    t1.Send(2, {Heartbeat(1, 2, 1, 2)});
    got = again.inbox.WaitFor(1, absl::Milliseconds(10));
  }
  EXPECT_GT(got, 0u);
}

TEST(GrpcTransport, QueueToAnUnreachablePeerStaysBounded) {
  PortReservation port;  // never listened on
  GrpcTransportOptions options = Options(1, {{2, port.address()}});
  options.max_queued_batches = 8;
  options.min_backoff = absl::Seconds(1);  // the sender sleeps; the queue fills
  options.max_backoff = absl::Seconds(1);
  GrpcTransport t1(options);
  for (int i = 0; i < 1000; ++i) t1.Send(2, {Heartbeat(1, i, 1, 2)});
  // At most 8 queued plus the (up to 8) the sender took for its failing write.
  EXPECT_GE(t1.StatsForTesting(2).dropped_messages, 1000u - 2 * 8u);
  absl::Time start = absl::Now();
  t1.Stop();  // does not wait for the backoff
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(900));
  t1.Send(2, {Heartbeat(1, 1, 1, 2)});  // dropped after Stop; no crash
}

// A message over the peers' receive limit is never written (gRPC would
// abort the process on one over 2 GiB; a peer breaks the stream on one over
// its limit): it is dropped and counted, and the stream carries on.
TEST(GrpcTransport, AnOversizedMessageIsDroppedAndTheStreamCarriesOn) {
  Receiver r2(2, "127.0.0.1:0");
  GrpcTransportOptions options = Options(1, {{2, r2.address()}});
  options.max_message_bytes = 64 << 10;
  GrpcTransport t1(options);
  t1.Send(2, {Heartbeat(1, 1, 1, 2)});
  ASSERT_EQ(r2.inbox.WaitFor(1), 1u);
  ShardMessage big = Heartbeat(1, 2, 1, 2);
  big.message.set_type(raftpb::MSG_APP);
  big.message.add_entries()->set_data(std::string(100 << 10, 'x'));
  t1.Send(2, {std::move(big)});
  t1.Send(2, {Heartbeat(1, 3, 1, 2)});
  ASSERT_EQ(r2.inbox.WaitFor(2), 2u);
  std::vector<std::pair<NodeId, ShardMessage>> got = r2.inbox.Take();
  EXPECT_EQ(got[1].second.message.term(), 3u);
  EXPECT_EQ(got[1].second.message.type(), raftpb::MSG_HEARTBEAT);
  EXPECT_EQ(t1.StatsForTesting(2).oversized_messages, 1u);
  EXPECT_EQ(t1.StatsForTesting(2).dropped_messages, 1u);
  EXPECT_EQ(t1.StatsForTesting(2).stream_failures, 0u);
  t1.Stop();
}

// One Send's messages may add up past the peers' limit (a cycle's appends
// for many shards): they go in several batches, none over max_batch_bytes.
TEST(GrpcTransport, OneSendOverTheBatchBoundGoesInSeveralBatches) {
  Receiver r2(2, "127.0.0.1:0");
  GrpcTransportOptions options = Options(1, {{2, r2.address()}});
  options.max_batch_bytes = 48 << 10;
  options.max_message_bytes = 64 << 10;
  GrpcTransport t1(options);
  std::vector<ShardMessage> appends;
  for (uint64_t i = 1; i <= 5; ++i) {
    ShardMessage m = Heartbeat(i, i, 1, 2);
    m.message.set_type(raftpb::MSG_APP);
    m.message.add_entries()->set_data(std::string(30 << 10, 'x'));
    appends.push_back(std::move(m));
  }
  t1.Send(2, std::move(appends));  // 150 KiB in one Send
  ASSERT_EQ(r2.inbox.WaitFor(5), 5u);
  std::vector<std::pair<NodeId, ShardMessage>> got = r2.inbox.Take();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].second.shard, i + 1);  // in order
  EXPECT_EQ(r2.inbox.batches(), 5);  // 30 KiB each: one per batch
  EXPECT_EQ(t1.StatsForTesting(2).dropped_messages, 0u);
  EXPECT_EQ(t1.StatsForTesting(2).oversized_messages, 0u);
  t1.Stop();
}

// Lost batches are reported, so that raft probes the peer instead of
// streaming appends to it blindly (Node::ReportUnreachable).
TEST(GrpcTransport, AnUnreachablePeerIsReported) {
  PortReservation port;  // never listened on
  GrpcTransportOptions options = Options(1, {{2, port.address()}});
  absl::Notification reported;
  std::atomic<NodeId> who{0};
  options.on_unreachable = [&](NodeId to) {
    who = to;
    if (!reported.HasBeenNotified()) reported.Notify();
  };
  GrpcTransport t1(options);
  t1.Send(2, {Heartbeat(1, 1, 1, 2)});
  ASSERT_TRUE(reported.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(who.load(), 2u);
  t1.Stop();
}

TEST(GrpcTransport, MisaddressedBatchesAreRefused) {
  Receiver r2(2, "127.0.0.1:0");
  // Node 1 believes node 3 listens where node 2 does.
  GrpcTransport t1(Options(1, {{3, r2.address()}}));
  for (int i = 0; i < 20; ++i) t1.Send(3, {Heartbeat(1, 1, 1, 3)});
  absl::Time deadline = absl::Now() + kWait;
  while (t1.StatsForTesting(3).stream_failures == 0 && absl::Now() < deadline) {
    t1.Send(3, {Heartbeat(1, 1, 1, 3)});
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_GT(t1.StatsForTesting(3).stream_failures, 0u);
  EXPECT_EQ(r2.inbox.WaitFor(1, absl::ZeroDuration()), 0u);
}

// Messages to self, to an unknown node or empty sends go nowhere: the one
// real peer gets exactly the message addressed to it, sent after them on
// the same transport (a misrouted one would arrive first).
TEST(GrpcTransport, UnknownDestinationsAreDropped) {
  Receiver r2(2, "127.0.0.1:0");
  Receiver r3(3, "127.0.0.1:0");  // self (1) is configured to look like node 3
  GrpcTransport t1(Options(1, {{1, r3.address()}, {2, r2.address()}}));  // self is ignored
  t1.Send(1, {Heartbeat(1, 1, 1, 1)});
  t1.Send(42, {Heartbeat(2, 1, 1, 42)});
  t1.Send(2, {});
  t1.Send(2, {Heartbeat(3, 7, 1, 2)});
  ASSERT_EQ(r2.inbox.WaitFor(1), 1u);
  std::vector<std::pair<NodeId, ShardMessage>> at2 = r2.inbox.Take();
  ASSERT_EQ(at2.size(), 1u);
  EXPECT_EQ(at2[0].second.shard, 3u);
  EXPECT_EQ(at2[0].second.message.term(), 7u);
  t1.Stop();
  EXPECT_EQ(r3.inbox.Take().size(), 0u);  // nothing was sent to "self"
}

}  // namespace
}  // namespace tessera::server
