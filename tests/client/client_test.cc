// The SDK against an in-process fake cluster (fake_cluster.h): routing,
// retries, circuit breaker, exactly-once writes, scans, read cache, async.
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "client/core.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/grpc_status.h"
#include "proto/key_hash.h"
#include "proto/testing/status_matchers.h"
#include "tests/client/fake_cluster.h"
#include "tests/testing/wait.h"

namespace tessera::client {
namespace {

using ::tessera::client::testing::FakeAction;
using ::tessera::client::testing::FakeCall;
using ::tessera::client::testing::FakeCluster;
using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;

ClientOptions Options(const FakeCluster& cluster) {
  ClientOptions o;
  o.endpoints = {cluster.address(0)};
  o.attempt_timeout = absl::Milliseconds(300);
  o.backoff = {absl::Milliseconds(2), absl::Milliseconds(20), 2.0};
  return o;
}

std::unique_ptr<Client> MakeClient(ClientOptions options) {
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Create(std::move(options));
  EXPECT_THAT(c, IsOk());
  return std::move(*c);
}

using ::tessera::testing::WaitFor;

TEST(ClientFake, CreateNeedsEndpoints) {
  ClientOptions o;
  o.endpoints.clear();
  EXPECT_THAT(Client::Create(o), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ClientFake, PutGetDeleteFollowingLeaderHints) {
  FakeCluster cluster({});
  for (uint32_t s = 0; s < cluster.shards(); ++s) cluster.SetLeader(s, 2);
  auto client = MakeClient(Options(cluster));
  absl::StatusOr<PutResult> put = client->Put("k1", "v1");
  ASSERT_THAT(put, IsOk());
  EXPECT_EQ(put->version, 1u);
  absl::StatusOr<KeyValue> got = client->Get("k1");
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->value, "v1");
  EXPECT_EQ(got->version, 1u);
  const uint32_t shard = ShardForKey("k1", cluster.shards());
  EXPECT_EQ(client->core_for_testing().routes().Leaders().at(shard), cluster.address(2));
  EXPECT_THAT(client->Delete("k1"), IsOk());
  EXPECT_THAT(client->Get("k1"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_FALSE(*client->Delete("k1"));
  // Leader moves: the hint from the old leader is followed.
  cluster.SetLeader(shard, 1);
  ASSERT_THAT(client->Put("k1", "v2"), IsOk());
  EXPECT_EQ(client->core_for_testing().routes().Leaders().at(shard), cluster.address(1));
}

// NOT_FOUND as a call's status (a node that does not host the replica) is
// never a missing key: the Get goes to another replica, and if none
// answers otherwise it fails with another code.
TEST(ClientFake, NotFoundFromANodeIsNotAMissingKey) {
  FakeCluster cluster({});
  auto client = MakeClient(Options(cluster));
  ASSERT_THAT(client->Put("k1", "v1"), IsOk());
  std::atomic<int> refused{0};
  std::atomic<bool> always{false};
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    if (call.method == "Get" && (always.load() || refused.fetch_add(1) == 0)) {
      a.kind = FakeAction::Kind::kError;
      a.error = absl::NotFoundError("shard 0 has no replica on this node");
    }
    return a;
  });
  absl::StatusOr<KeyValue> got = client->Get("k1");
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->value, "v1");
  EXPECT_GE(refused.load(), 2);
  always = true;
  CallOptions shortly;
  shortly.timeout = absl::Milliseconds(300);
  got = client->Get("k1", shortly);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().code(), absl::StatusCode::kNotFound) << got.status();
}

// A closed loop of callers, each making its next request from the callback
// of its last (as tessera-bench does): the requests made while one
// response's results are delivered go out corked, in one message. Without
// the cork a response brought back a message of one request and another of
// the rest, and the messages split further every round.
TEST(ClientFake, RequestsMadeFromTheCallbacksOfOneResponseGoInOneMessage) {
  FakeCluster cluster({.nodes = 1, .serve_batch = true});
  auto client = MakeClient(Options(cluster));
  ASSERT_THAT(client->Put("warm", "up"), IsOk());  // the map and the stream are ready
  const int before = cluster.batch_messages();
  constexpr int kCallers = 16;
  constexpr int kRounds = 50;
  std::atomic<int> succeeded{0};
  std::atomic<int> finished{0};
  absl::Notification all_finished;
  std::function<void(int, int)> next = [&](int caller, int round) {
    client->PutAsync(absl::StrCat("k", caller), "v", {},
                     [&, caller, round](absl::StatusOr<PutResult> r) {
                       succeeded += r.ok() ? 1 : 0;
                       if (round + 1 < kRounds) return next(caller, round + 1);
                       if (++finished == kCallers) all_finished.Notify();
                     });
  };
  // Every caller starts from one callback: their first requests go together.
  client->PutAsync("start", "v", {}, [&](absl::StatusOr<PutResult>) {
    for (int c = 0; c < kCallers; ++c) next(c, 0);
  });
  ASSERT_TRUE(all_finished.WaitForNotificationWithTimeout(absl::Seconds(60)));
  EXPECT_EQ(succeeded.load(), kCallers * kRounds);
  // "start", then one message per round.
  EXPECT_EQ(cluster.batch_messages() - before, 1 + kRounds);
}

TEST(ClientFake, BinaryKeysAndValues) {
  FakeCluster cluster({});
  auto client = MakeClient(Options(cluster));
  const std::string key("k\0\xff", 3), value("\0\1\2\xfe", 4);
  ASSERT_THAT(client->Put(key, value), IsOk());
  EXPECT_EQ(client->Get(key)->value, value);
}

TEST(ClientFake, StaleEpochRefreshesTheMapFromTheError) {
  FakeCluster cluster({});
  auto client = MakeClient(Options(cluster));
  ASSERT_THAT(client->Put("a", "1"), IsOk());
  EXPECT_EQ(client->core_for_testing().routes().epoch(), 7u);
  cluster.SetEpoch(9);
  ASSERT_THAT(client->Put("a", "2"), IsOk());
  EXPECT_EQ(client->core_for_testing().routes().epoch(), 9u);
  EXPECT_EQ(cluster.applies("a"), 2);
}

TEST(ClientFake, UnavailableAndResourceExhaustedAreRetried) {
  FakeCluster cluster({});
  std::atomic<int> failures{0};
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    if (call.method == "Put" && failures.fetch_add(1) < 4) {
      a.kind = FakeAction::Kind::kError;
      a.error = failures.load() % 2 ? absl::ResourceExhaustedError("queue full")
                                    : absl::UnavailableError("no leader");
    }
    return a;
  });
  auto client = MakeClient(Options(cluster));
  ASSERT_THAT(client->Put("r", "v"), IsOk());
  EXPECT_EQ(cluster.applies("r"), 1);
  EXPECT_GE(failures.load(), 5);
}

// The byte budget's refusal: RESOURCE_EXHAUSTED with a retry-after hint.
FakeAction Overloaded(uint32_t retry_after_ms) {
  FakeAction a;
  a.kind = FakeAction::Kind::kError;
  a.error = absl::ResourceExhaustedError("too many request bytes in flight");
  v1::ErrorDetail detail;
  detail.mutable_retry_after()->set_retry_after_ms(retry_after_ms);
  SetErrorDetail(a.error, detail);
  return a;
}

// A CANCELLED the client did not ask for comes from the server side (a node
// shutting down drops calls it had not started): retried, once applied.
TEST(ClientFake, ServerSideCancellationIsRetried) {
  FakeCluster cluster({});
  std::atomic<int> puts{0};
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    if (call.method == "Put" && puts.fetch_add(1) == 0) {
      a.kind = FakeAction::Kind::kError;
      a.error = absl::CancelledError("the server is shutting down");
    }
    return a;
  });
  auto client = MakeClient(Options(cluster));
  ASSERT_THAT(client->Put("c", "v"), IsOk());
  EXPECT_EQ(cluster.applies("c"), 1);
  EXPECT_GE(puts.load(), 2);
}

// RESOURCE_EXHAUSTED with ErrorDetail.retry_after: the retry waits at least
// the hint (the backoff of these options is at most 20 ms).
TEST(ClientFake, RetryAfterHintIsWaitedBeforeRetrying) {
  FakeCluster cluster({});
  absl::Mutex mu;
  std::vector<absl::Time> arrivals;
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    if (call.method != "Put") return a;
    absl::MutexLock lock(&mu);
    arrivals.push_back(absl::Now());
    if (arrivals.size() == 1) {
      a = Overloaded(400);
    }
    return a;
  });
  auto client = MakeClient(Options(cluster));
  ASSERT_THAT(client->Put("r", "v"), IsOk());
  EXPECT_EQ(cluster.applies("r"), 1);
  absl::MutexLock lock(&mu);
  ASSERT_GE(arrivals.size(), 2u);  // then maybe a not-leader hop
  EXPECT_GE(arrivals[1] - arrivals[0], absl::Milliseconds(400));
  EXPECT_LT(arrivals[1] - arrivals[0], absl::Seconds(10));  // generous: a shared machine
}

// A hint beyond the call's deadline: the call fails at once with the
// server's RESOURCE_EXHAUSTED instead of waiting for a certain timeout.
TEST(ClientFake, RetryAfterBeyondTheDeadlineFailsAtOnce) {
  FakeCluster cluster({});
  std::atomic<int> puts{0};
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    if (call.method != "Put") return a;
    ++puts;
    a = Overloaded(60000);
    return a;
  });
  ClientOptions options = Options(cluster);
  options.default_timeout = absl::Seconds(20);
  auto client = MakeClient(options);
  const absl::Time start = absl::Now();
  EXPECT_THAT(client->Put("r", "v"),
              StatusIs(absl::StatusCode::kResourceExhausted, ::testing::HasSubstr("in flight")));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(puts.load(), 1);
  EXPECT_EQ(cluster.applies("r"), 0);
}

// Server pushback: a retry-after hint holds back the client's other requests
// to that node too, so they wait in the client instead of crossing the
// network to be refused. Here the node asks for 60 s: a second call with a
// 20 s deadline is not sent at all and fails at once.
TEST(ClientFake, RetryAfterHoldsBackOtherRequestsToThatNode) {
  FakeCluster cluster({});
  for (uint32_t s = 0; s < cluster.shards(); ++s) cluster.SetLeader(s, 0);
  std::atomic<int> puts{0};
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    if (call.method != "Put" || puts.fetch_add(1) != 0) return a;
    a = Overloaded(60000);
    return a;
  });
  ClientOptions options = Options(cluster);
  options.default_timeout = absl::Seconds(20);
  auto client = MakeClient(options);
  ASSERT_THAT(client->Get("warm"), StatusIs(absl::StatusCode::kNotFound));  // routes known
  EXPECT_THAT(client->Put("a", "v"), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(client->Put("b", "v"),
              StatusIs(absl::StatusCode::kResourceExhausted, ::testing::HasSubstr("not sent")));
  EXPECT_EQ(puts.load(), 1);
  EXPECT_EQ(cluster.applies("b"), 0);
  // Reads to that node wait too.
  EXPECT_THAT(client->Get("a"), StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(ClientFake, ErrorsThatAreNotSafeToRetryReturnAtOnce) {
  FakeCluster cluster({});
  std::atomic<int> puts{0};
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    if (call.method == "Put") {
      ++puts;
      a.kind = FakeAction::Kind::kError;
      a.error = absl::InvalidArgumentError("value too large");
    }
    return a;
  });
  auto client = MakeClient(Options(cluster));
  EXPECT_THAT(client->Put("x", "v"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(puts.load(), 1);
}

TEST(ClientFake, DeadlineRespectedWhenEveryNodeIsDown) {
  FakeCluster cluster({});
  ClientOptions options = Options(cluster);
  options.default_timeout = absl::Seconds(60);
  auto client = MakeClient(options);
  ASSERT_THAT(client->Put("d", "v"), IsOk());  // map cached
  for (int i = 0; i < 3; ++i) cluster.SetDown(i, true);
  CallOptions call;
  call.timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  absl::StatusOr<KeyValue> got = client->Get("d", call);
  const absl::Duration took = absl::Now() - start;
  // UNAVAILABLE (the last attempt was refused) or DEADLINE_EXCEEDED (the
  // deadline cut the last attempt short): both are what happened.
  ASSERT_FALSE(got.ok());
  EXPECT_THAT(got.status().code(), ::testing::AnyOf(absl::StatusCode::kUnavailable,
                                                    absl::StatusCode::kDeadlineExceeded));
  EXPECT_GE(took, absl::Milliseconds(250));
  // The call's 300 ms deadline ended it, not the client's 60 s default
  // (a wide bound: the machine is shared).
  EXPECT_LT(took, absl::Seconds(30));
  // A write that may have reached a node reports an unknown outcome.
  EXPECT_THAT(client->Put("d", "w", call), StatusIs(absl::StatusCode::kDeadlineExceeded));
}

TEST(ClientFake, CircuitBreakerSkipsADeadNodeThenProbesAndCloses) {
  FakeCluster cluster({});
  for (uint32_t s = 0; s < cluster.shards(); ++s) cluster.SetLeader(s, 1);
  ClientOptions o = Options(cluster);
  o.endpoints = cluster.addresses();
  o.breaker = {.failure_threshold = 2, .cool_down = absl::Milliseconds(300)};
  auto client = MakeClient(o);
  ASSERT_THAT(client->Put("warm", "v"), IsOk());
  cluster.SetDown(0, true);
  const int before = cluster.calls(0);
  CallOptions stale;
  stale.consistency = Consistency::kStale;
  for (int i = 0; i < 60; ++i) {
    ASSERT_THAT(client->Put(absl::StrCat("k", i), "v"), IsOk());
    ASSERT_THAT(client->Get(absl::StrCat("k", i), stale), IsOk());
  }
  // Node 0 failed `failure_threshold` times, then was skipped.
  EXPECT_LE(cluster.calls(0) - before, 3);
  Client::Core::Node* node = client->core_for_testing().FindNode(cluster.address(0));
  ASSERT_NE(node, nullptr);
  EXPECT_EQ(node->breaker.state(absl::Now()), CircuitBreaker::State::kOpen);
  // Back up: after the cool-down one probe goes through and closes it.
  cluster.SetDown(0, false);
  ASSERT_TRUE(WaitFor([&] {
    EXPECT_THAT(client->Get("k1", stale), IsOk());
    return node->breaker.state(absl::Now()) == CircuitBreaker::State::kClosed;
  }));
  EXPECT_GT(cluster.calls(0) - before, 2);
}

// A draining node names the leader: the client goes there at once, and
// counts the answer as a failure of the node (it is going away), unlike a
// follower's plain not-leader answer.
TEST(ClientFake, DrainingNodeIsLeftForTheLeaderItNames) {
  FakeCluster cluster({});
  for (uint32_t s = 0; s < cluster.shards(); ++s) cluster.SetLeader(s, 0);
  ClientOptions o = Options(cluster);
  o.breaker = {.failure_threshold = 1, .cool_down = absl::Seconds(30)};
  auto client = MakeClient(o);
  ASSERT_THAT(client->Put("k", "v"), IsOk());
  const uint32_t shard = ShardForKey("k", cluster.shards());
  cluster.SetLeader(shard, 1);
  std::atomic<int> refused{0};
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    if (call.node != 0 || call.method != "Put") return a;
    ++refused;
    a.kind = FakeAction::Kind::kError;
    a.error = absl::UnavailableError("node 1 is shutting down");
    v1::ErrorDetail detail;
    detail.mutable_not_leader()->set_leader_node(2);
    detail.mutable_not_leader()->set_leader_address(cluster.address(1));
    detail.mutable_not_leader()->set_reason(v1::ErrorDetail::NotLeader::REASON_DRAINING);
    SetErrorDetail(a.error, detail);
    return a;
  });
  ASSERT_THAT(client->Put("k", "w"), IsOk());
  EXPECT_EQ(refused.load(), 1);
  EXPECT_EQ(client->core_for_testing().routes().Leaders().at(shard), cluster.address(1));
  Client::Core::Node* node = client->core_for_testing().FindNode(cluster.address(0));
  ASSERT_NE(node, nullptr);
  EXPECT_EQ(node->breaker.state(absl::Now()), CircuitBreaker::State::kOpen);

  // A plain not-leader answer (node 3 leads now; node 2, the cached
  // leader, follows): the node is fine.
  cluster.SetHook(nullptr);
  cluster.SetLeader(shard, 2);
  Client::Core::Node* follower = client->core_for_testing().FindNode(cluster.address(1));
  ASSERT_NE(follower, nullptr);
  ASSERT_THAT(client->Put("k", "x"), IsOk());
  EXPECT_EQ(client->core_for_testing().routes().Leaders().at(shard), cluster.address(2));
  EXPECT_EQ(follower->breaker.state(absl::Now()), CircuitBreaker::State::kClosed);
}

TEST(ClientFake, WriteWhoseReplyIsLostIsRetriedAndAppliedOnce) {
  FakeCluster cluster({});
  std::atomic<int> attempts{0};
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    if (call.method == "Put" && call.key == "once") {
      attempts++;
      // Applies, then drops the reply: twice for the same seq.
      if (call.attempt_of_seq <= 2) a.kind = FakeAction::Kind::kDropAfterApply;
    }
    return a;
  });
  auto client = MakeClient(Options(cluster));
  absl::StatusOr<PutResult> put = client->Put("once", "v");
  ASSERT_THAT(put, IsOk());
  EXPECT_EQ(put->version, 1u);
  // Two lost replies, then the answer. On a loaded machine the third
  // attempt can also outlive its 300 ms and be sent once more (seen on CI:
  // 4 attempts): it is a retry of the same write, applied once all the same.
  EXPECT_GE(attempts.load(), 3);
  EXPECT_EQ(cluster.applies("once"), 1);
  ASSERT_THAT(client->Put("once", "w"), IsOk());
  EXPECT_EQ(client->Get("once")->version, 2u);
  EXPECT_EQ(cluster.applies("once"), 2);
}

TEST(ClientFake, ConcurrentWritersWithDuplicatedRequestsApplyEachWriteOnce) {
  FakeCluster cluster({.nodes = 3, .shards = 8});
  std::atomic<int> n{0};
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    // Every third write's first attempt is applied and its reply lost.
    if (call.method == "Put" && call.attempt_of_seq == 1 && n.fetch_add(1) % 3 == 0) {
      a.kind = FakeAction::Kind::kDropAfterApply;
    }
    return a;
  });
  ClientOptions o = Options(cluster);
  o.attempt_timeout = absl::Milliseconds(150);
  auto client = MakeClient(o);
  constexpr int kThreads = 4, kKeys = 5, kWrites = 4;
  std::vector<std::thread> threads;
  std::atomic<int> failed{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kKeys; ++i) {
        for (int w = 0; w < kWrites; ++w) {
          if (!client->Put(absl::StrCat("t", t, "k", i), absl::StrCat(w)).ok()) ++failed;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failed.load(), 0);
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kKeys; ++i) {
      const std::string key = absl::StrCat("t", t, "k", i);
      EXPECT_EQ(cluster.applies(key), kWrites) << key;
      EXPECT_EQ(client->Get(key)->version, static_cast<uint64_t>(kWrites)) << key;
    }
  }
}

TEST(ClientFake, FirstWritesToAShardSendZeroThenTrackFirstIncomplete) {
  FakeCluster cluster({});
  std::vector<FakeCall> seen;
  absl::Mutex mu;
  cluster.SetHook([&](const FakeCall& call) {
    if (call.method == "Put") {
      absl::MutexLock lock(&mu);
      seen.push_back(call);
    }
    return FakeAction{};
  });
  auto client = MakeClient(Options(cluster));
  ASSERT_THAT(client->Put("s", "1"), IsOk());
  ASSERT_THAT(client->Put("s", "2"), IsOk());
  absl::MutexLock lock(&mu);
  std::vector<FakeCall> at_leader;
  for (const FakeCall& c : seen) {
    if (c.node == cluster.leader(c.shard)) at_leader.push_back(c);
  }
  ASSERT_EQ(at_leader.size(), 2u);
  EXPECT_EQ(at_leader[0].first_incomplete_seq, 0u);
  EXPECT_NE(at_leader[0].client_id, 0u);
  EXPECT_EQ(at_leader[1].client_id, at_leader[0].client_id);
  EXPECT_EQ(at_leader[1].first_incomplete_seq, at_leader[1].seq);
  EXPECT_GT(at_leader[1].seq, at_leader[0].seq);
}

TEST(ClientFake, EvictedSessionOnFirstAttemptStartsAFreshSession) {
  FakeCluster cluster({});
  auto client = MakeClient(Options(cluster));
  ASSERT_THAT(client->Put("e", "1"), IsOk());
  const uint32_t shard = ShardForKey("e", cluster.shards());
  const uint64_t old_id = client->core_for_testing().sessions().ClientIdForTesting(shard);
  cluster.EvictSessions();
  ASSERT_THAT(client->Put("e", "2"), IsOk());
  EXPECT_NE(client->core_for_testing().sessions().ClientIdForTesting(shard), old_id);
  EXPECT_EQ(cluster.applies("e"), 2);
}

TEST(ClientFake, EvictedSessionOnRetryIsAnUnknownOutcome) {
  FakeCluster cluster({});
  auto client = MakeClient(Options(cluster));
  ASSERT_THAT(client->Put("u", "1"), IsOk());
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    if (call.method == "Put" && call.key == "u" && call.attempt_of_seq == 1) {
      a.kind = FakeAction::Kind::kDropAfterApply;
    }
    if (call.method == "Put" && call.key == "u" && call.attempt_of_seq == 2) {
      cluster.EvictSessions();
    }
    return a;
  });
  EXPECT_THAT(client->Put("u", "2"), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(cluster.applies("u"), 2);  // applied once, never twice
}

TEST(ClientFake, ScanMergesShardsInKeyOrderWithLimitAndPaging) {
  FakeCluster cluster({.nodes = 3, .shards = 5});
  std::vector<std::string> keys;
  for (int i = 0; i < 60; ++i) {
    keys.push_back(absl::StrCat(i % 2 ? "p/" : "q/", 1000 + i));
    cluster.Seed(keys.back(), absl::StrCat("v", i));
  }
  std::sort(keys.begin(), keys.end());
  ClientOptions o = Options(cluster);
  o.scan_page_size = 4;  // many pages per shard
  auto client = MakeClient(o);
  absl::StatusOr<ScanResult> all = client->Scan({});
  ASSERT_THAT(all, IsOk());
  ASSERT_EQ(all->kvs.size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) EXPECT_EQ(all->kvs[i].key, keys[i]);
  EXPECT_FALSE(all->more);

  std::vector<std::string> paged;
  ScanOptions scan{.limit = 13};
  for (int page = 0; page < 10; ++page) {
    absl::StatusOr<ScanResult> r = client->Scan(scan);
    ASSERT_THAT(r, IsOk());
    EXPECT_LE(r->kvs.size(), 13u);
    for (const KeyValue& kv : r->kvs) paged.push_back(kv.key);
    if (!r->more) break;
    scan.start = r->next_start;
  }
  EXPECT_EQ(paged, keys);

  absl::StatusOr<ScanResult> p = client->Scan({.prefix = "p/", .limit = 5});
  ASSERT_THAT(p, IsOk());
  ASSERT_EQ(p->kvs.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(p->kvs[i].key, keys[i]);
  EXPECT_TRUE(p->more);
  absl::StatusOr<ScanResult> range = client->Scan({.start = keys[10], .end = keys[20]});
  ASSERT_THAT(range, IsOk());
  ASSERT_EQ(range->kvs.size(), 10u);
  EXPECT_EQ(range->kvs.front().key, keys[10]);
  EXPECT_THAT(client->Scan({.start = "a", .prefix = "p"}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// ScanPages: Scan's keys in Scan's order, handed over in batches of at most
// a page while at most a few pages per shard are fetched ahead of the
// consumer (Scan fetches everything first), with Scan's limit semantics.
TEST(ClientFake, ScanPagesStreamsScansKeysFetchingFewPagesAhead) {
  constexpr int kShards = 5;
  constexpr uint32_t kPage = 4;
  FakeCluster cluster({.nodes = 3, .shards = kShards});
  std::vector<std::string> keys;
  for (int i = 0; i < 2000; ++i) {
    keys.push_back(absl::StrCat(i % 2 ? "p/" : "q/", 10000 + i));
    cluster.Seed(keys.back(), absl::StrCat("v", i));
  }
  std::sort(keys.begin(), keys.end());
  auto scans = std::make_shared<std::atomic<int>>(0);  // outlives late handlers
  cluster.SetHook([scans](const FakeCall& call) {
    if (call.method == "Scan") ++*scans;
    return FakeAction();
  });
  ClientOptions o = Options(cluster);
  o.scan_page_size = kPage;
  auto client = MakeClient(o);

  std::vector<std::string> got;
  int most_ahead = 0;  // pages fetched beyond those the consumer has had
  absl::StatusOr<ScanResult> all = client->ScanPages({}, {}, [&](std::vector<KeyValue>& batch) {
    EXPECT_FALSE(batch.empty());
    EXPECT_LE(batch.size(), kPage);
    for (const KeyValue& kv : batch) got.push_back(kv.key);
    most_ahead = std::max(most_ahead, scans->load() - static_cast<int>(got.size() / kPage));
    return true;
  });
  ASSERT_THAT(all, IsOk());
  EXPECT_EQ(got, keys);
  EXPECT_TRUE(all->kvs.empty());
  EXPECT_FALSE(all->more);
  // A shard buffers under two pages and has at most one more in flight.
  EXPECT_LE(most_ahead, 4 * kShards) << "of " << scans->load() << " pages";

  // A limit: `more` and `next_start` as Scan's, resuming gives the rest.
  std::vector<std::string> paged;
  ScanOptions scan{.limit = 13};
  for (int turn = 0; turn < 200; ++turn) {
    absl::StatusOr<ScanResult> r = client->ScanPages(scan, {}, [&](std::vector<KeyValue>& batch) {
      for (const KeyValue& kv : batch) paged.push_back(kv.key);
      return true;
    });
    ASSERT_THAT(r, IsOk());
    EXPECT_EQ(paged.size() % 13 == 0 && paged.size() < keys.size(), r->more) << paged.size();
    if (!r->more) break;
    EXPECT_EQ(r->next_start, paged.back() + std::string(1, '\0'));
    scan.start = r->next_start;
  }
  EXPECT_EQ(paged, keys);

  std::vector<std::string> exact;
  absl::StatusOr<ScanResult> whole =
      client->ScanPages({.limit = 2000}, {}, [&](std::vector<KeyValue>& batch) {
        for (const KeyValue& kv : batch) exact.push_back(kv.key);
        return true;
      });
  ASSERT_THAT(whole, IsOk());
  EXPECT_FALSE(whole->more);  // the limit is exactly the number of keys
  EXPECT_EQ(exact, keys);

  int batches = 0;
  EXPECT_THAT(client->ScanPages({}, {}, [&](std::vector<KeyValue>&) { return ++batches < 2; }),
              StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(batches, 2);
  EXPECT_THAT(client->ScanPages({.start = "a", .prefix = "p"}, {},
                                [](std::vector<KeyValue>&) { return true; }),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// A page that fails ends the stream with its error after a prefix of the keys.
TEST(ClientFake, ScanPagesEndsWithAPagesError) {
  FakeCluster cluster({.nodes = 3, .shards = 4});
  std::vector<std::string> keys;
  for (int i = 0; i < 200; ++i) {
    keys.push_back(absl::StrCat("k", 1000 + i));
    cluster.Seed(keys.back(), "v");
  }
  auto scans = std::make_shared<std::atomic<int>>(0);  // outlives late handlers
  cluster.SetHook([scans](const FakeCall& call) {
    FakeAction a;
    if (call.method == "Scan" && ++*scans > 6) {
      a.kind = FakeAction::Kind::kError;
      a.error = absl::InvalidArgumentError("page refused");
    }
    return a;
  });
  ClientOptions o = Options(cluster);
  o.scan_page_size = 10;
  auto client = MakeClient(o);
  std::vector<std::string> got;
  EXPECT_THAT(client->ScanPages({}, {},
                                [&](std::vector<KeyValue>& batch) {
                                  for (const KeyValue& kv : batch) got.push_back(kv.key);
                                  return true;
                                }),
              StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_LT(got.size(), keys.size());
  EXPECT_EQ(got, std::vector<std::string>(keys.begin(), keys.begin() + got.size()));
}

TEST(ClientFake, StaleReadsGoToTheLeastLoadedReplica) {
  FakeCluster cluster({});
  cluster.Seed("hot", "v");
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    if (call.method == "Get" && call.node == 0) a.delay = absl::Milliseconds(200);  // slow
    return a;
  });
  ClientOptions o = Options(cluster);
  o.endpoints = cluster.addresses();
  auto client = MakeClient(o);
  ASSERT_THAT(client->GetClusterMap(), IsOk());
  CallOptions stale;
  stale.consistency = Consistency::kStale;
  std::atomic<int> done{0};
  const int before = cluster.calls(0);
  constexpr int kReads = 40;
  for (int i = 0; i < kReads; ++i) {
    client->GetAsync("hot", stale, [&](absl::StatusOr<KeyValue> r) {
      EXPECT_THAT(r, IsOk());
      ++done;
    });
    absl::SleepFor(absl::Milliseconds(2));  // pacing the load, not waiting for a result
  }
  ASSERT_TRUE(WaitFor([&] { return done.load() == kReads; }));
  // The slow node keeps its requests outstanding, so it gets few new ones.
  EXPECT_LE(cluster.calls(0) - before, 4);
}

TEST(ClientFake, ReadCacheServesStaleReadsAndReadsOwnWrites) {
  FakeCluster cluster({});
  ClientOptions o = Options(cluster);
  o.read_cache_bytes = 1 << 20;
  auto client = MakeClient(o);
  CallOptions stale;
  stale.consistency = Consistency::kStale;
  stale.max_staleness = absl::Seconds(60);
  ASSERT_THAT(client->Put("c", "mine"), IsOk());
  const int calls = cluster.calls(0) + cluster.calls(1) + cluster.calls(2);
  EXPECT_EQ(client->Get("c", stale)->value, "mine");  // own write, from the cache
  EXPECT_EQ(cluster.calls(0) + cluster.calls(1) + cluster.calls(2), calls);
  cluster.Seed("c", "theirs");                        // someone else's write
  EXPECT_EQ(client->Get("c", stale)->value, "mine");  // within the bound: cached
  EXPECT_EQ(client->Get("c")->value, "theirs");       // linearizable: never cached
  ASSERT_THAT(client->Put("c", "again"), IsOk());
  EXPECT_EQ(client->Get("c", stale)->value, "again");
  ASSERT_THAT(client->Delete("c"), IsOk());
  EXPECT_THAT(client->Get("c", stale), StatusIs(absl::StatusCode::kNotFound));
  // Beyond the staleness bound the cache is not used.
  cluster.Seed("d", "1");
  ASSERT_THAT(client->Get("d"), IsOk());
  stale.max_staleness = absl::Milliseconds(2);
  absl::SleepFor(absl::Milliseconds(5));  // ages the entry past the bound
  cluster.Seed("d", "2");
  EXPECT_EQ(client->Get("d", stale)->value, "2");
  ReadCacheStats stats = client->read_cache_stats();
  EXPECT_EQ(stats.hits, 4u);
  EXPECT_GE(stats.misses, 1u);
}

TEST(ClientFake, TxnAndCompareAndSet) {
  FakeCluster cluster({});
  auto client = MakeClient(Options(cluster));
  ASSERT_THAT(client->Put("acct:{1}:a", "10"), IsOk());
  EXPECT_THAT(client->CompareAndSet("acct:{1}:a", "11", "12"),
              StatusIs(absl::StatusCode::kAborted));
  absl::StatusOr<uint64_t> v = client->CompareAndSet("acct:{1}:a", "10", "12");
  ASSERT_THAT(v, IsOk());
  EXPECT_EQ(*v, 2u);
  EXPECT_THAT(client->CompareAndSetVersion("acct:{1}:a", 1, "x"),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(client->CompareAndSetVersion("acct:{1}:new", 0, "x"), IsOk());
  TxnRequest txn;
  txn.compares.push_back({.key = "acct:{1}:a", .target = Compare::Target::kValue, .value = "12"});
  txn.success.push_back({TxnOp::Type::kPut, "acct:{1}:b", "5"});
  txn.success.push_back({TxnOp::Type::kGet, "acct:{1}:a", ""});
  absl::StatusOr<TxnResult> r = client->Txn(txn);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->succeeded);
  ASSERT_EQ(r->results.size(), 2u);
  EXPECT_EQ(r->results[1].value, "12");
  // Keys on two shards.
  TxnRequest cross;
  for (int i = 0; i < 50 && cross.success.size() < 2; ++i) {
    const std::string k = absl::StrCat("x", i);
    if (cross.success.empty() ||
        ShardForKey(k, cluster.shards()) != ShardForKey(cross.success[0].key, cluster.shards())) {
      cross.success.push_back({TxnOp::Type::kPut, k, "v"});
    }
  }
  EXPECT_THAT(client->Txn(cross), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ClientFake, AsyncCallbacksAndFutures) {
  FakeCluster cluster({});
  auto client = MakeClient(Options(cluster));
  auto put = ToFuture<PutResult>(
      [&](Callback<PutResult> done) { client->PutAsync("f", "v", {}, std::move(done)); });
  ASSERT_THAT(put.get(), IsOk());
  absl::Notification got;
  client->GetAsync("f", {}, [&](absl::StatusOr<KeyValue> r) {
    EXPECT_EQ(r->value, "v");
    got.Notify();
  });
  EXPECT_TRUE(got.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

TEST(ClientFake, DestroyingTheClientCancelsCallsInFlight) {
  FakeCluster cluster({});
  cluster.Seed("slow", "v");
  absl::Notification reached;  // the Get is at the server
  cluster.SetHook([&](const FakeCall& call) {
    FakeAction a;
    if (call.method == "Get") {
      if (!reached.HasBeenNotified()) reached.Notify();
      a.delay = absl::Seconds(60);
    }
    return a;
  });
  ClientOptions o = Options(cluster);
  o.attempt_timeout = absl::Seconds(10);
  auto client = MakeClient(o);
  ASSERT_THAT(client->GetClusterMap(), IsOk());
  absl::Notification done;
  absl::Status status;
  CallOptions call;
  call.timeout = absl::Seconds(20);
  client->GetAsync("slow", call, [&](absl::StatusOr<KeyValue> r) {
    status = r.status();
    done.Notify();
  });
  ASSERT_TRUE(reached.WaitForNotificationWithTimeout(absl::Seconds(30)));
  const absl::Time start = absl::Now();
  client.reset();
  EXPECT_TRUE(done.HasBeenNotified());
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kCancelled));
  // Cancelled, not waited for: the server would answer after 60 s.
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
}

}  // namespace
}  // namespace tessera::client
