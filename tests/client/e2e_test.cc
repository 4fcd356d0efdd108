// End to end: the SDK against three real tessera-server processes on
// 127.0.0.1, with the leader of most shards killed (kill -9) in the middle
// of a write workload. Every write must succeed (its deadline is far above
// the election time) and apply exactly once: a key written k times has
// version k.
//
// Process handling follows tests/server/cmd/integration_test.cc: every port is
// reserved up front with SO_REUSEADDR (the servers bind the same ports),
// readiness is Cluster.NodeStatus showing a leader for every shard, and each
// process is stopped by pid (SIGKILL + waitpid) in a destructor, also when
// the test fails.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/bench/lock_check.h"
#include "client/client.h"
#include "client/concurrency.h"
#include "client/core.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "proto/grpc_status.h"
#include "proto/key_hash.h"
#include "proto/testing/status_matchers.h"
#include "tests/testing/process.h"

namespace tessera::client {
namespace {

using ::tessera::testing::ChildProcess;
using ::tessera::testing::IsOk;
using ::tessera::testing::MakeTempDir;
using ::tessera::testing::PeerTlsFlags;
using ::tessera::testing::PortReservation;
using ::tessera::testing::TearDownCluster;

constexpr int kNodes = 3;
constexpr uint32_t kShards = 8;

class ClusterProcesses {
 public:
  explicit ClusterProcesses(const std::vector<std::string>& extra_flags = {})
      : dir_(MakeTempDir("tessera-client-e2e")) {
    std::vector<std::string> members;
    for (int i = 0; i < kNodes; ++i) {
      members.push_back(
          absl::StrCat(i + 1, "=", client_ports_[i].address(), "/", peer_ports_[i].address()));
    }
    for (int i = 0; i < kNodes; ++i) {
      std::vector<std::string> args = {
          TESSERA_SERVER_BINARY,
          absl::StrCat("--node-id=", i + 1),
          absl::StrCat("--data-dir=", dir_, "/node", i + 1),
          absl::StrCat("--initial-cluster=", absl::StrJoin(members, ",")),
          absl::StrCat("--shards=", kShards),
          "--tick-ms=20",
          "--election-ticks=10",
          "--drain-timeout-ms=1000",
          absl::StrCat("--port-file=", dir_, "/node", i + 1, ".ports")};
      for (std::string& flag : PeerTlsFlags(dir_ + "/certs", kNodes, i + 1)) {
        args.push_back(std::move(flag));
      }
      args.insert(args.end(), extra_flags.begin(), extra_flags.end());
      processes_[i].Start(args, Log(i));
    }
  }
  ~ClusterProcesses() {
    TearDownCluster(
        processes_, [this](int i) { return Log(i); }, dir_, ::testing::Test::HasFailure(), 30);
  }

  std::string Log(int i) const { return absl::StrCat(dir_, "/node", i + 1, ".log"); }
  std::vector<std::string> endpoints() const {
    std::vector<std::string> out;
    for (const PortReservation& p : client_ports_) out.push_back(p.address());
    return out;
  }
  std::string endpoint(int i) const { return client_ports_[i].address(); }
  ChildProcess& process(int i) { return processes_[i]; }

 private:
  std::string dir_;
  PortReservation client_ports_[kNodes];
  PortReservation peer_ports_[kNodes];
  ChildProcess processes_[kNodes];
};

// shard -> 0-based node index of its leader, among running nodes that answer.
std::map<uint32_t, int> Leaders(Client& client, ClusterProcesses& cluster) {
  std::map<uint32_t, int> leaders;
  CallOptions call;
  call.timeout = absl::Seconds(1);
  for (int i = 0; i < kNodes; ++i) {
    if (!cluster.process(i).running()) continue;
    absl::StatusOr<v1::NodeStatusResponse> s = client.NodeStatus(cluster.endpoint(i), call);
    if (!s.ok()) continue;
    for (const v1::ShardStatus& st : s->shards()) {
      if (st.role() == "leader") leaders[st.shard()] = i;
    }
  }
  return leaders;
}

// A client of `cluster` (batched stream as given, 1 s attempts), once every
// shard has a leader (bounded: the test fails after 60 s).
void ConnectWhenReady(ClusterProcesses& cluster, bool use_batch_stream,
                      std::unique_ptr<Client>* out) {
  ClientOptions options;
  options.endpoints = cluster.endpoints();
  options.use_batch_stream = use_batch_stream;
  options.attempt_timeout = absl::Seconds(1);
  absl::StatusOr<std::unique_ptr<Client>> created = Client::Create(options);
  ASSERT_THAT(created, IsOk());
  const absl::Time ready_by = absl::Now() + absl::Seconds(60);
  while (Leaders(**created, cluster).size() < kShards) {
    ASSERT_LT(absl::Now(), ready_by) << "cluster not ready";
    absl::SleepFor(absl::Milliseconds(50));
  }
  *out = *std::move(created);
}

// Writers keep putting while the node leading the most shards is killed
// (kill -9): no write fails and none applies twice (each key's version
// equals the number of puts acknowledged). With the batched stream (the
// SDK's default) the victim's KV.Batch stream breaks under the writes in
// flight on it, which are retried elsewhere with the same session seq.
void LeaderKilledMidWorkload(bool use_batch_stream) {
  ClusterProcesses cluster;
  std::unique_ptr<Client> connected;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, use_batch_stream, &connected));
  Client& client = *connected;

  constexpr int kWriters = 4;
  constexpr int kKeysPerWriter = 8;
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::atomic<int> total_writes{0};
  std::vector<std::map<std::string, uint64_t>> written(kWriters);
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      CallOptions call;
      call.timeout = absl::Seconds(15);  // far above the election time (~0.2-0.4 s)
      for (int round = 0; !stop.load() && round < 10000; ++round) {
        for (int k = 0; k < kKeysPerWriter; ++k) {
          const std::string key = absl::StrCat("w", w, ":k", k);
          absl::StatusOr<PutResult> put = client.Put(key, absl::StrCat("r", round), call);
          if (!put.ok()) {
            ++failures;
            ADD_FAILURE() << "put " << key << ": " << put.status();
            continue;
          }
          ++written[w][key];
          ++total_writes;
          EXPECT_EQ(put->version, written[w][key]) << key;
        }
      }
    });
  }

  // Let the workload run, then kill the node leading the most shards.
  const absl::Time warm_by = absl::Now() + absl::Seconds(30);
  while (total_writes.load() < 200 && absl::Now() < warm_by) absl::SleepFor(absl::Milliseconds(10));
  std::map<int, int> led;
  for (const auto& [shard, node] : Leaders(client, cluster)) ++led[node];
  int victim = 0;
  for (const auto& [node, count] : led) {
    if (count > led[victim]) victim = node;
  }
  const int before_kill = total_writes.load();
  cluster.process(victim).Kill();
  // Keep writing until a good number of writes went through after the kill.
  const absl::Time after_by = absl::Now() + absl::Seconds(60);
  while (total_writes.load() < before_kill + 400 && absl::Now() < after_by) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  stop = true;
  for (std::thread& t : writers) t.join();

  EXPECT_EQ(failures.load(), 0);
  EXPECT_GE(total_writes.load(), before_kill + 400) << "writes stalled after the kill";
  CallOptions read;
  read.timeout = absl::Seconds(15);
  for (int w = 0; w < kWriters; ++w) {
    for (const auto& [key, count] : written[w]) {
      absl::StatusOr<KeyValue> got = client.Get(key, read);
      ASSERT_THAT(got, IsOk()) << key;
      EXPECT_EQ(got->version, count) << key << " written " << count << " times";
    }
  }
  // The dead node's breaker keeps calls away from it.
  std::cerr << "writes: " << total_writes.load() << " (" << before_kill << " before killing node "
            << victim + 1 << ")\n";
  Client::Core::Node* dead = client.core_for_testing().FindNode(cluster.endpoint(victim));
  ASSERT_NE(dead, nullptr);
  if (use_batch_stream) {
    ASSERT_NE(dead->batch, nullptr);
    EXPECT_GE(dead->batch->streams_opened(), 1u) << "the writes did not use the KV.Batch stream";
    std::cerr << "attempts failed by the victim's stream breaking: "
              << dead->batch->ops_failed_by_breaks() << "\n";
  } else {
    EXPECT_EQ(dead->batch, nullptr);
  }
}

TEST(ClientEndToEnd, LeaderKilledMidWorkloadNoWriteFailsNoneAppliedTwice) {
  LeaderKilledMidWorkload(/*use_batch_stream=*/true);
}

TEST(ClientEndToEnd, LeaderKilledMidWorkloadNoWriteFailsNoneAppliedTwiceUnary) {
  LeaderKilledMidWorkload(/*use_batch_stream=*/false);
}

// A shard splits under a write and read workload: `cluster split-shard` is
// recorded by the metadata group's leader, its scheduler has the shard's
// leader propose the split, the upper half of the keys becomes shard
// kShards on the same nodes, and the map records it. No request fails (the
// SDK follows the stale-route errors), no write applies twice (each key's
// version is the number of puts acknowledged; a write moved to the new
// shard keeps its session seq), scans return every key once (a scan that
// meets the new layout goes on over it), and the upper keys are served by
// the new shard afterwards.
TEST(ClientEndToEnd, AShardSplitsUnderLoadNoRequestFailsNoneAppliedTwice) {
  ClusterProcesses cluster;
  std::unique_ptr<Client> connected;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, /*use_batch_stream=*/true, &connected));
  Client& client = *connected;

  // Keys of shard 0 only: the one that splits.
  constexpr uint32_t kSplit = 0;
  constexpr int kWriters = 4;
  constexpr int kKeysPerWriter = 8;
  std::vector<std::vector<std::string>> keys(kWriters);
  for (int i = 0, w = 0; w < kWriters; ++i) {
    std::string key = absl::StrCat("split:", i);
    if (ShardForKey(key, kShards) != kSplit) continue;
    keys[w].push_back(std::move(key));
    if (keys[w].size() == kKeysPerWriter) ++w;
  }
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::atomic<int> total_writes{0};
  std::vector<std::map<std::string, uint64_t>> written(kWriters);
  std::vector<std::thread> threads;
  CallOptions call;
  call.timeout = absl::Seconds(15);
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int round = 0; !stop.load() && round < 10000; ++round) {
        for (const std::string& key : keys[w]) {
          absl::StatusOr<PutResult> put = client.Put(key, absl::StrCat("r", round), call);
          if (!put.ok()) {
            ++failures;
            ADD_FAILURE() << "put " << key << ": " << put.status();
            continue;
          }
          ++written[w][key];
          ++total_writes;
          EXPECT_EQ(put->version, written[w][key]) << key;
        }
      }
    });
  }
  threads.emplace_back([&] {  // a reader of every key
    for (int round = 0; !stop.load() && round < 100000; ++round) {
      const std::string& key = keys[round % kWriters][round % kKeysPerWriter];
      absl::StatusOr<KeyValue> got = client.Get(key, call);
      if (!got.ok() && got.status().code() != absl::StatusCode::kNotFound) {
        ++failures;
        ADD_FAILURE() << "get " << key << ": " << got.status();
      }
    }
  });

  std::atomic<int> scans{0};
  threads.emplace_back([&] {  // scans of every key, both kinds, from the first round on
    while (!stop.load() && total_writes.load() < kWriters * kKeysPerWriter) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    ScanOptions all;
    all.prefix = "split:";
    for (int round = 0; !stop.load() && round < 100000; ++round) {
      std::vector<std::string> seen;
      absl::Status status;
      if (round % 2 == 0) {
        absl::StatusOr<ScanResult> r = client.Scan(all, call);
        status = r.status();
        if (r.ok()) {
          for (const KeyValue& kv : r->kvs) seen.push_back(kv.key);
        }
      } else {
        CallOptions paged = call;
        status = client
                     .ScanPages(all, paged,
                                [&](std::vector<KeyValue>& batch) {
                                  for (const KeyValue& kv : batch) seen.push_back(kv.key);
                                  return true;
                                })
                     .status();
      }
      if (!status.ok()) {
        ++failures;
        ADD_FAILURE() << "scan: " << status;
        continue;
      }
      EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
      EXPECT_EQ(seen.size(), static_cast<size_t>(kWriters * kKeysPerWriter))
          << "a scan missed or repeated keys";
      ++scans;
    }
  });

  const absl::Time warm_by = absl::Now() + absl::Seconds(30);
  while (total_writes.load() < 200 && absl::Now() < warm_by) absl::SleepFor(absl::Milliseconds(10));
  absl::Status asked = absl::UnavailableError("no member answered");
  for (int i = 0; i < kNodes && !asked.ok(); ++i) {
    asked = client.SplitShard(cluster.endpoint(i), kSplit, call).status();
  }
  ASSERT_THAT(asked, IsOk());
  // Bounded wait until the map records it, writes going on.
  bool split = false;
  const absl::Time split_by = absl::Now() + absl::Seconds(60);
  while (!split && absl::Now() < split_by) {
    absl::StatusOr<v1::ClusterMap> map = client.GetClusterMap(call);
    split = map.ok() && map->num_shards() == kShards + 1 && map->shards(kSplit).split_hash() == 0;
    if (!split) absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(split) << "the split was not recorded in time";
  const int at_split = total_writes.load();
  const absl::Time after_by = absl::Now() + absl::Seconds(60);
  while (total_writes.load() < at_split + 200 && absl::Now() < after_by) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  stop = true;
  for (std::thread& t : threads) t.join();

  EXPECT_EQ(failures.load(), 0);
  EXPECT_GE(total_writes.load(), at_split + 200) << "writes stalled after the split";
  EXPECT_GT(scans.load(), 0);
  int moved = 0;
  for (int w = 0; w < kWriters; ++w) {
    for (const auto& [key, count] : written[w]) {
      absl::StatusOr<KeyValue> got = client.Get(key, call);
      ASSERT_THAT(got, IsOk()) << key;
      EXPECT_EQ(got->version, count) << key << " written " << count << " times";
      std::optional<uint32_t> shard = client.core_for_testing().routes().ShardForKey(key);
      ASSERT_TRUE(shard.has_value());
      EXPECT_TRUE(*shard == kSplit || *shard == kShards) << key << " on shard " << *shard;
      moved += *shard == kShards;
    }
  }
  EXPECT_GT(moved, 0) << "no key moved to the new shard";
  EXPECT_LT(moved, kWriters * kKeysPerWriter) << "every key moved";
  // Every node hosts the new shard.
  for (int i = 0; i < kNodes; ++i) {
    absl::StatusOr<v1::NodeStatusResponse> s = client.NodeStatus(cluster.endpoint(i), call);
    ASSERT_THAT(s, IsOk());
    EXPECT_TRUE(std::any_of(s->shards().begin(), s->shards().end(),
                            [](const v1::ShardStatus& st) { return st.shard() == kShards; }))
        << "node " << i + 1;
  }
}

// ---- Watch ----

// What each key went through: "P<value>" per put, "D" per delete.
using History = std::map<std::string, std::vector<std::string>>;

// The first difference between what a watcher saw and what was written,
// briefly (values are long).
void ExpectSameHistory(const History& seen, const History& acked) {
  EXPECT_EQ(seen.size(), acked.size()) << "keys seen vs written";
  for (const auto& [key, ops] : acked) {
    auto it = seen.find(key);
    const size_t got = it == seen.end() ? 0 : it->second.size();
    if (got != ops.size()) {
      ADD_FAILURE() << key << ": " << got << " events seen, " << ops.size() << " written";
      return;
    }
    for (size_t i = 0; i < ops.size(); ++i) {
      if (it->second[i] != ops[i]) {
        ADD_FAILURE() << key << " event " << i << ": saw " << it->second[i].substr(0, 24)
                      << ", wrote " << ops[i].substr(0, 24);
        return;
      }
    }
  }
}

size_t Total(const History& h) {
  size_t n = 0;
  for (const auto& [key, ops] : h) n += ops.size();
  return n;
}

// Collects `watcher`'s events into `seen` (checking that each key's
// revisions rise) until `want` events arrived (re-read as it changes) or
// `deadline`.
void Collect(Watcher& watcher, const std::atomic<size_t>& want, absl::Time deadline,
             History* seen) {
  std::map<std::string, uint64_t> last;
  size_t count = 0;
  while (count < want.load() && absl::Now() < deadline) {
    absl::StatusOr<std::vector<WatchEvent>> events =
        watcher.Next(std::min(deadline, absl::Now() + absl::Milliseconds(200)));
    ASSERT_THAT(events, IsOk());
    for (const WatchEvent& e : *events) {
      EXPECT_GT(e.revision, last[e.key]) << e.key << ": revisions out of order";
      last[e.key] = e.revision;
      (*seen)[e.key].push_back(e.type == WatchEvent::Type::kPut ? "P" + e.kv.value : "D");
      ++count;
    }
  }
}

// Puts (and every 7th op deletes) keys "<prefix>w<w>/k<i>" from `writers`
// threads until `stop`, recording what was acknowledged.
class Writers {
 public:
  Writers(Client& client, std::string prefix, int writers, int rounds) : acked_(writers) {
    for (int w = 0; w < writers; ++w) {
      threads_.emplace_back([this, &client, prefix, w, rounds] {
        CallOptions call;
        call.timeout = absl::Seconds(15);  // far above an election
        for (int round = 0; !stop_.load() && round < rounds; ++round) {
          const std::string key = absl::StrCat(prefix, "w", w, "/k", round % 12);
          if (round % 7 == 6) {
            absl::StatusOr<bool> del = client.Delete(key, call);
            ASSERT_THAT(del, IsOk()) << key;
            if (*del) acked_[w][key].push_back("D");
          } else {
            const std::string value = absl::StrCat("r", round, std::string(value_bytes_, 'x'));
            ASSERT_THAT(client.Put(key, value, call), IsOk()) << key;
            acked_[w][key].push_back("P" + value);
          }
          ++writes_;
        }
      });
    }
  }
  ~Writers() { Join(); }
  int writes() const { return writes_.load(); }
  void WaitFor(int writes, absl::Duration at_most) {
    const absl::Time until = absl::Now() + at_most;
    while (writes_.load() < writes && absl::Now() < until) absl::SleepFor(absl::Milliseconds(10));
  }
  // Stops them; what they acknowledged, merged.
  History Join() {
    stop_ = true;
    for (std::thread& t : threads_) t.join();
    threads_.clear();
    History all;
    for (History& h : acked_) all.merge(h);
    return all;
  }
  static inline size_t value_bytes_ = 0;

 private:
  std::vector<History> acked_;
  std::atomic<int> writes_{0};
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

// Writers put and delete keys under a prefix spread over every shard while
// a prefix watcher runs and the node leading most shards is killed (kill
// -9): the watcher receives every acknowledged write exactly once, per key
// in order. Then a new watcher resumed from the first one's token receives
// exactly the writes made after it, and nothing before.
TEST(ClientEndToEnd, PrefixWatchSeesEveryWriteOnceAcrossAKillAndResumesFromItsToken) {
  ClusterProcesses cluster;
  std::unique_ptr<Client> connected;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, /*use_batch_stream=*/true, &connected));
  Client& client = *connected;
  WatchOptions options;
  options.key = "watch/";
  options.prefix = true;
  absl::StatusOr<std::unique_ptr<Watcher>> watcher = client.Watch(options);
  ASSERT_THAT(watcher, IsOk());

  History seen;
  std::atomic<size_t> want{SIZE_MAX};
  std::thread collector([&] { Collect(**watcher, want, absl::Now() + absl::Seconds(180), &seen); });
  History acked;
  {
    Writers writers(client, "watch/", 3, 100000);
    writers.WaitFor(150, absl::Seconds(30));
    std::map<int, int> led;
    for (const auto& [shard, node] : Leaders(client, cluster)) ++led[node];
    int victim = 0;
    for (const auto& [node, n] : led) {
      if (n > led[victim]) victim = node;
    }
    const int before_kill = writers.writes();
    cluster.process(victim).Kill();
    writers.WaitFor(before_kill + 300, absl::Seconds(60));
    acked = writers.Join();
    EXPECT_GE(writers.writes(), before_kill + 300) << "writes stalled after the kill";
  }
  want = Total(acked);
  collector.join();
  ExpectSameHistory(seen, acked);
  EXPECT_GE((*watcher)->restarts(), 1u) << "no shard's watch was on the killed node";

  // Resume in a new watcher from the token: only what follows.
  const std::string token = (*watcher)->ResumeToken();
  watcher->reset();
  History later;
  {
    Writers writers(client, "watch/after/", 2, 40);
    later = writers.Join();
  }
  options.resume_token = token;
  absl::StatusOr<std::unique_ptr<Watcher>> resumed = client.Watch(options);
  ASSERT_THAT(resumed, IsOk());
  History seen_later;
  std::atomic<size_t> want_later{Total(later)};
  Collect(**resumed, want_later, absl::Now() + absl::Seconds(60), &seen_later);
  ExpectSameHistory(seen_later, later);
  // And nothing more: no old event comes back.
  absl::StatusOr<std::vector<WatchEvent>> extra = (*resumed)->Next(absl::Now() + absl::Seconds(1));
  ASSERT_THAT(extra, IsOk());
  EXPECT_TRUE(extra->empty());
}

// A watcher that does not read while large values are written falls behind
// its server-side bound (--max-watcher-bytes): the server ends its watches
// rather than buffering, and the SDK resumes them from their revisions:
// once it reads, it gets every write exactly once.
TEST(ClientEndToEnd, ASlowWatcherIsCutOffAndResumesWithoutLoss) {
  ClusterProcesses cluster({"--max-watcher-bytes=8192"});
  std::unique_ptr<Client> connected;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, /*use_batch_stream=*/true, &connected));
  Client& client = *connected;
  WatchOptions options;
  options.key = "slow/";
  options.prefix = true;
  absl::StatusOr<std::unique_ptr<Watcher>> watcher = client.Watch(options);
  ASSERT_THAT(watcher, IsOk());
  History acked;
  {
    Writers::value_bytes_ = 16000;
    Writers writers(client, "slow/", 2, 400);
    acked = writers.Join();
    Writers::value_bytes_ = 0;
  }
  History seen;
  std::atomic<size_t> want{Total(acked)};
  Collect(**watcher, want, absl::Now() + absl::Seconds(120), &seen);
  ExpectSameHistory(seen, acked);
  // Whether the server cut it off depends on how much the transport
  // buffered; the raw stream below makes sure it does.
  std::cerr << "watch restarts: " << (*watcher)->restarts() << "\n";

  // A raw stream that does not read: the server's queue for it fills,
  // and it is ended with RESOURCE_EXHAUSTED and the revision to resume
  // from, after the events up to that revision.
  const uint32_t shard = *client.core_for_testing().routes().ShardForKey("{raw}");
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(cluster.endpoint(0), grpc::InsecureChannelCredentials());
  std::unique_ptr<v1::KV::Stub> stub = v1::KV::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
  auto stream = stub->Watch(&context);
  v1::WatchRequest create;
  create.mutable_create()->set_watch_id(7);
  create.mutable_create()->mutable_header()->set_shard(shard);
  create.mutable_create()->set_key("{raw}");
  ASSERT_TRUE(stream->Write(create));
  v1::WatchResponse response;
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_TRUE(response.created()) << response.DebugString();
  uint64_t last_put = 0;
  for (int i = 0; i < 300; ++i) {
    absl::StatusOr<PutResult> put = client.Put("{raw}", std::string(16000, 'a' + i % 26));
    ASSERT_THAT(put, IsOk());
    last_put = put->revision;
  }
  uint64_t events = 0;
  uint64_t last_event = 0;
  bool cut_off = false;
  while (!cut_off && stream->Read(&response)) {
    for (const v1::Event& e : response.events()) {
      EXPECT_GT(e.kv().mod_revision(), last_event);
      last_event = e.kv().mod_revision();
      ++events;
    }
    if (response.canceled()) {
      cut_off = true;
      EXPECT_EQ(response.error().code(), static_cast<int>(absl::StatusCode::kResourceExhausted))
          << response.error().message();
      EXPECT_EQ(response.revision(), last_event) << "the resume point is the last event sent";
    }
  }
  EXPECT_TRUE(cut_off) << "the server buffered " << events
                       << " events for a reader that did not read";
  EXPECT_LT(last_event, last_put);
  context.TryCancel();
  (void)stream->Finish();
}

// A single key from a revision: the writes at and after it. A revision the
// shard no longer keeps (compacted after --watch-history-revisions) ends
// the watch with kOutOfRange naming the oldest one kept.
TEST(ClientEndToEnd, KeyWatchFromARevisionAndFromACompactedOne) {
  ClusterProcesses cluster({"--watch-history-revisions=1024"});
  std::unique_ptr<Client> connected;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, /*use_batch_stream=*/true, &connected));
  Client& client = *connected;
  absl::StatusOr<PutResult> first = client.Put("{solo}", "a");
  ASSERT_THAT(first, IsOk());
  ASSERT_GT(first->revision, 0u);
  ASSERT_THAT(client.Put("{solo}", "b"), IsOk());
  absl::StatusOr<KeyValue> got = client.Get("{solo}");
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->create_revision, first->revision);
  EXPECT_GT(got->mod_revision, first->revision);

  WatchOptions options;
  options.key = "{solo}";
  options.start_revision = first->revision;
  options.prev_kv = true;
  absl::StatusOr<std::unique_ptr<Watcher>> watcher = client.Watch(options);
  ASSERT_THAT(watcher, IsOk());
  std::vector<WatchEvent> events;
  const absl::Time until = absl::Now() + absl::Seconds(20);
  while (events.size() < 2 && absl::Now() < until) {
    absl::StatusOr<std::vector<WatchEvent>> more =
        (*watcher)->Next(absl::Now() + absl::Milliseconds(200));
    ASSERT_THAT(more, IsOk());
    events.insert(events.end(), more->begin(), more->end());
  }
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kv.value, "a");
  EXPECT_EQ(events[0].revision, first->revision);
  EXPECT_FALSE(events[0].prev.has_value());
  EXPECT_EQ(events[1].kv.value, "b");
  ASSERT_TRUE(events[1].prev.has_value());
  EXPECT_EQ(events[1].prev->value, "a");
  watcher->reset();

  // More than two compaction steps of writes on the same shard (a hash tag).
  std::vector<std::future<absl::StatusOr<PutResult>>> puts;
  for (int i = 0; i < 2200; ++i) {
    puts.push_back(ToFuture<PutResult>([&](auto done) {
      client.PutAsync(absl::StrCat("{solo}:", i), "v", CallOptions{.timeout = absl::Seconds(30)},
                      done);
    }));
  }
  for (auto& f : puts) ASSERT_THAT(f.get(), IsOk());
  absl::StatusOr<std::unique_ptr<Watcher>> stale = client.Watch(options);
  ASSERT_THAT(stale, IsOk());
  absl::Status ended;
  const absl::Time by = absl::Now() + absl::Seconds(20);
  while (ended.ok() && absl::Now() < by) {
    absl::StatusOr<std::vector<WatchEvent>> more =
        (*stale)->Next(absl::Now() + absl::Milliseconds(200));
    if (!more.ok()) ended = more.status();
  }
  EXPECT_EQ(ended.code(), absl::StatusCode::kOutOfRange) << ended;
  EXPECT_THAT(std::string(ended.message()), ::testing::HasSubstr("oldest revision kept"));
}

// ---- Leases, locks ----

// The node leading the metadata group (0-based), or -1.
int MetaLeader(Client& client, ClusterProcesses& cluster) {
  CallOptions call;
  call.timeout = absl::Seconds(1);
  for (int i = 0; i < kNodes; ++i) {
    if (!cluster.process(i).running()) continue;
    absl::StatusOr<v1::NodeStatusResponse> s = client.NodeStatus(cluster.endpoint(i), call);
    if (s.ok() && s->has_meta_shard() && s->meta_shard().role() == "leader") return i;
  }
  return -1;
}

// Keys spread over every shard (one per shard at least).
std::vector<std::string> KeysOnEveryShard(const std::string& prefix) {
  std::vector<std::string> keys;
  std::set<uint32_t> shards;
  for (int i = 0; shards.size() < kShards || keys.size() < 2 * kShards; ++i) {
    std::string key = absl::StrCat(prefix, i);
    shards.insert(ShardForKey(key, kShards));
    keys.push_back(std::move(key));
  }
  return keys;
}

// A holder process (`tessera lease keepalive`) keeps a lease alive past its
// TTL; SIGSTOPped, it loses the lease: its keys on every shard are deleted,
// one revision per shard (as a watcher sees them), on every replica; a put
// naming the ended lease is refused.
TEST(ClientEndToEnd, APausedHolderLosesItsLeaseAndItsKeysOnEveryShard) {
  ClusterProcesses cluster;
  std::unique_ptr<Client> connected;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, /*use_batch_stream=*/true, &connected));
  Client& client = *connected;
  CallOptions slow;
  slow.timeout = absl::Seconds(30);
  absl::StatusOr<LeaseGrant> lease = client.GrantLease(absl::Seconds(6), slow);
  ASSERT_THAT(lease, IsOk());
  EXPECT_EQ(lease->ttl, absl::Seconds(6));
  const std::vector<std::string> keys = KeysOnEveryShard("svc/");
  CallOptions with_lease = slow;
  with_lease.lease = lease->id;
  for (const std::string& key : keys) ASSERT_THAT(client.Put(key, "up", with_lease), IsOk());
  ASSERT_THAT(client.Put("svc/unleased", "stays", slow), IsOk());
  WatchOptions w;
  w.key = "svc/";
  w.prefix = true;
  absl::StatusOr<std::unique_ptr<Watcher>> watcher = client.Watch(w);
  ASSERT_THAT(watcher, IsOk());

  ChildProcess holder;
  const std::string log = MakeTempDir("tessera-holder") + "/holder.log";
  holder.Start(
      {TESSERA_CLI_BINARY, absl::StrCat("--endpoints=", absl::StrJoin(cluster.endpoints(), ",")),
       "lease", "keepalive", absl::StrFormat("%016x", lease->id)},
      log);
  // The holder keeps it alive for twice its TTL.
  const absl::Time started = absl::Now();
  while (absl::Now() < started + 2 * lease->ttl) {
    ASSERT_THAT(client.LeaseTtl(lease->id, slow), IsOk());
    absl::SleepFor(absl::Milliseconds(200));
  }
  for (const std::string& key : keys) ASSERT_THAT(client.Get(key, slow), IsOk()) << key;

  holder.Signal(SIGSTOP);
  std::vector<WatchEvent> events;
  const absl::Time gone_by = absl::Now() + absl::Seconds(60);
  while (events.size() < keys.size() && absl::Now() < gone_by) {
    absl::StatusOr<std::vector<WatchEvent>> more =
        (*watcher)->Next(absl::Now() + absl::Milliseconds(200));
    ASSERT_THAT(more, IsOk());
    events.insert(events.end(), more->begin(), more->end());
  }
  holder.Signal(SIGCONT);
  ASSERT_EQ(events.size(), keys.size());
  std::map<uint32_t, uint64_t> revision_of_shard;
  for (const WatchEvent& e : events) {
    EXPECT_EQ(e.type, WatchEvent::Type::kDelete) << e.key;
    auto [it, first] = revision_of_shard.emplace(e.shard, e.revision);
    EXPECT_EQ(it->second, e.revision) << "shard " << e.shard << " deleted its keys at one revision";
  }
  EXPECT_EQ(revision_of_shard.size(), kShards);
  // Gone on every replica (each node's own replica, read without a leader).
  for (int i = 0; i < kNodes; ++i) {
    ClientOptions one;
    one.endpoints = {cluster.endpoint(i)};
    absl::StatusOr<std::unique_ptr<Client>> local = Client::Create(one);
    ASSERT_THAT(local, IsOk());
    CallOptions stale = slow;
    stale.consistency = Consistency::kStale;
    for (const std::string& key : keys) {
      const absl::Time by = absl::Now() + absl::Seconds(20);
      absl::StatusOr<KeyValue> got = (*local)->Get(key, stale);
      while (got.ok() && absl::Now() < by) {  // a follower applies a moment later
        absl::SleepFor(absl::Milliseconds(50));
        got = (*local)->Get(key, stale);
      }
      EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound) << key << " on node " << i + 1;
    }
  }
  EXPECT_THAT(client.Get("svc/unleased", slow), IsOk());
  // The holder finds out, and says so (exit 1: not found).
  EXPECT_EQ(holder.Wait(absl::Seconds(30)), 1);
  absl::StatusOr<PutResult> late = client.Put("svc/late", "x", with_lease);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kNotFound) << late.status();
  EXPECT_THAT(client.LeaseTtl(lease->id, slow).status().code(), absl::StatusCode::kNotFound);
}

// kill -9 of the metadata group's leader in the middle of a lease's TTL:
// the next leader restarts the countdown at the full TTL, so the lease does
// not end before it would have (it may end later).
TEST(ClientEndToEnd, KillingTheLeaseKeepersLeaderDoesNotEndALeaseEarly) {
  ClusterProcesses cluster;
  std::unique_ptr<Client> connected;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, /*use_batch_stream=*/true, &connected));
  Client& client = *connected;
  CallOptions slow;
  slow.timeout = absl::Seconds(30);
  absl::StatusOr<LeaseGrant> lease = client.GrantLease(absl::Seconds(10), slow);
  ASSERT_THAT(lease, IsOk());
  CallOptions with_lease = slow;
  with_lease.lease = lease->id;
  ASSERT_THAT(client.Put("session/a", "1", with_lease), IsOk());
  int leader = -1;
  const absl::Time found_by = absl::Now() + absl::Seconds(30);
  while ((leader = MetaLeader(client, cluster)) < 0) {
    ASSERT_LT(absl::Now(), found_by) << "no metadata group leader";
    absl::SleepFor(absl::Milliseconds(50));
  }
  absl::StatusOr<LeaseTimeToLive> before = client.LeaseTtl(lease->id, slow);
  ASSERT_THAT(before, IsOk());
  const absl::Time killed_at = absl::Now();
  const absl::Time old_end = killed_at + before->remaining;
  cluster.process(leader).Kill();
  absl::StatusOr<LeaseTimeToLive> after = absl::UnavailableError("not asked");
  absl::Time answered_at;
  const absl::Time by = absl::Now() + absl::Seconds(30);
  do {
    after = client.LeaseTtl(lease->id, slow);
    answered_at = absl::Now();
  } while (!after.ok() && absl::IsUnavailable(after.status()) && absl::Now() < by);
  ASSERT_THAT(after, IsOk());
  // The new leader's end is at most answered_at + remaining (the call may
  // have waited for the election): it must not come before the old end.
  EXPECT_GE(answered_at + after->remaining, old_end - absl::Milliseconds(100))
      << "remaining " << before->remaining << " before the kill, " << after->remaining << " after";
  EXPECT_THAT(client.Get("session/a", slow), IsOk());
}

// The Jepsen lock scenario: A holds the lock, then stalls (its lease is no
// longer renewed, as if paused) past its TTL; B gets the lock with a higher
// fencing token and writes; A wakes up believing it holds the lock and
// writes with its old token: the resource's token check refuses it.
TEST(ClientEndToEnd, AStalledLockHolderIsFencedOffByTheNextHoldersToken) {
  ClusterProcesses cluster;
  std::unique_ptr<Client> connected;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, /*use_batch_stream=*/true, &connected));
  Client& client = *connected;
  // The protected resource: a value with the highest token that wrote it
  // (fixed width, so byte order is numeric order); a write must carry a
  // higher one (client/README.md "Locks and fencing").
  const std::string fence = "resource/{report}/token";
  const std::string data = "resource/{report}/data";
  auto token_text = [](uint64_t token) { return absl::StrFormat("%020d", token); };
  ASSERT_THAT(client.Put(fence, token_text(0)), IsOk());
  auto fenced_write = [&](uint64_t token, const std::string& value) {
    TxnRequest txn;
    Compare lower;
    lower.key = fence;
    lower.target = Compare::Target::kValue;
    lower.op = Compare::Op::kLess;
    lower.value = token_text(token);
    txn.compares.push_back(lower);
    txn.success.push_back(TxnOp{TxnOp::Type::kPut, fence, token_text(token)});
    txn.success.push_back(TxnOp{TxnOp::Type::kPut, data, value});
    absl::StatusOr<TxnResult> r = client.Txn(txn);
    return r.ok() && r->succeeded;
  };

  absl::StatusOr<std::unique_ptr<Session>> a = Session::Create(&client, absl::Seconds(2));
  absl::StatusOr<std::unique_ptr<Session>> b = Session::Create(&client, absl::Seconds(2));
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  Mutex lock_a(&client, a->get(), "report");
  Mutex lock_b(&client, b->get(), "report");
  absl::StatusOr<uint64_t> token_a = lock_a.Lock(absl::Now() + absl::Seconds(30));
  ASSERT_THAT(token_a, IsOk());
  EXPECT_TRUE(fenced_write(*token_a, "by A"));
  // B queues behind A, and waits while A's lease lives.
  std::future<absl::StatusOr<uint64_t>> token_b =
      std::async(std::launch::async, [&] { return lock_b.Lock(absl::Now() + absl::Seconds(60)); });
  if (token_b.wait_for(std::chrono::milliseconds(500)) == std::future_status::ready) {
    EXPECT_TRUE((*a)->lost()) << "B got the lock while A's lease was live";
  }
  // A stalls: no more renewals.
  (*a)->Abandon();
  ASSERT_THAT(token_b.get(), IsOk());
  const uint64_t b_token = lock_b.token();
  EXPECT_GT(b_token, *token_a);
  EXPECT_TRUE((*a)->WaitLost(absl::Now() + absl::Seconds(10))) << "A's lease is over";
  EXPECT_TRUE(fenced_write(b_token, "by B"));
  // A resumes and writes with its old token: refused.
  EXPECT_FALSE(fenced_write(*token_a, "late write by A"));
  EXPECT_EQ(client.Get(data)->value, "by B");
  ASSERT_THAT(lock_b.Unlock(), IsOk());
}

// Waiters get the lock in the order they asked for it, one at a time.
TEST(ClientEndToEnd, LockWaitersAreServedInOrderOneAtATime) {
  ClusterProcesses cluster;
  std::unique_ptr<Client> connected;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, /*use_batch_stream=*/true, &connected));
  Client& client = *connected;
  constexpr int kWaiters = 4;
  std::vector<std::unique_ptr<Session>> sessions;
  std::vector<std::unique_ptr<Mutex>> locks;
  for (int i = 0; i < kWaiters; ++i) {
    absl::StatusOr<std::unique_ptr<Session>> s = Session::Create(&client, absl::Seconds(10));
    ASSERT_THAT(s, IsOk());
    sessions.push_back(*std::move(s));
    locks.push_back(std::make_unique<Mutex>(&client, sessions.back().get(), "queue"));
  }
  ASSERT_THAT(locks[0]->Lock(absl::Now() + absl::Seconds(30)), IsOk());
  // The others queue in order 1, 2, 3: each enters before the next starts.
  absl::Mutex mu;
  std::vector<int> order;
  int holding = 0;
  bool overlap = false;
  std::vector<std::thread> threads;
  for (int i = 1; i < kWaiters; ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<uint64_t> token = locks[i]->Lock(absl::Now() + absl::Seconds(60));
      if (!token.ok()) return;
      {
        absl::MutexLock lock(&mu);
        order.push_back(i);
        overlap = overlap || ++holding > 1;
      }
      absl::SleepFor(absl::Milliseconds(50));  // hold it a little (not a synchronisation)
      {
        absl::MutexLock lock(&mu);
        --holding;
      }
      locks[i]->Unlock().IgnoreError();
    });
    // Queued: its key exists (bounded wait).
    const absl::Time by = absl::Now() + absl::Seconds(30);
    while (!client.Get(locks[i]->key()).ok()) {
      ASSERT_LT(absl::Now(), by);
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  ASSERT_THAT(locks[0]->Unlock(), IsOk());
  for (std::thread& t : threads) t.join();
  EXPECT_THAT(order, ::testing::ElementsAre(1, 2, 3));
  EXPECT_FALSE(overlap);
}

// The chaos suite's lock checker (tessera-bench --locks) finds nothing wrong
// with the lock, and catches workers that write without waiting for it.
TEST(ClientEndToEnd, TheLockCheckerPassesTheLockAndCatchesUnlockedWriters) {
  ClusterProcesses cluster;
  std::unique_ptr<Client> connected;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, /*use_batch_stream=*/true, &connected));
  for (const bool unlocked : {false, true}) {
    SCOPED_TRACE(unlocked ? "unlocked writers" : "the lock");
    absl::StatusOr<std::unique_ptr<bench::LockCheck>> check =
        bench::LockCheck::Start(cluster.endpoints(), 3, /*testing_unlocked=*/unlocked);
    ASSERT_THAT(check, IsOk());
    EXPECT_TRUE((*check)->WaitForAcquisitions(300, absl::Now() + absl::Seconds(120)));
    const bench::LockVerdict verdict = (*check)->Finish();
    EXPECT_GE(verdict.acquisitions, 300u);
    if (unlocked) {
      EXPECT_GT(verdict.violations, 0u) << "two writers at once went unnoticed";
    } else {
      EXPECT_EQ(verdict.violations, 0u) << (verdict.examples.empty() ? "" : verdict.examples[0]);
      EXPECT_EQ(verdict.fenced_writes, verdict.acquisitions);
    }
  }
}

// `tessera lock NAME -- COMMAND` runs COMMAND with the fencing token in its
// environment; `tessera elect` campaigns and an observer sees the leader;
// an SDK leader proclaims a new value and resigns to the next in line.
TEST(ClientEndToEnd, CliLockAndElectAndAnElectionsProclaimAndResign) {
  ClusterProcesses cluster;
  std::unique_ptr<Client> connected;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, /*use_batch_stream=*/true, &connected));
  const std::string dir = MakeTempDir("tessera-cli-lock");
  const std::string endpoints =
      absl::StrCat("--endpoints=", absl::StrJoin(cluster.endpoints(), ","));
  ChildProcess lock;
  lock.Start({TESSERA_CLI_BINARY, endpoints, "lock", "job", "--", "/bin/sh", "-c",
              absl::StrCat("echo $TESSERA_LOCK_TOKEN > ", dir, "/token; exit 7")},
             dir + "/lock.log");
  EXPECT_EQ(lock.Wait(absl::Seconds(60)), 7) << "exits with the command's code";
  std::ifstream in(dir + "/token");
  uint64_t token = 0;
  in >> token;
  EXPECT_GT(token, 0u);

  ChildProcess leader;
  leader.Start({TESSERA_CLI_BINARY, endpoints, "elect", "primary", "node-a"}, dir + "/elect.log");
  Election observer(connected.get(), nullptr, "primary");
  std::optional<KeyValue> seen;
  ASSERT_THAT(observer.Observe(
                  [&](const std::optional<KeyValue>& now) {
                    seen = now;
                    return !now.has_value();  // until someone leads
                  },
                  absl::Now() + absl::Seconds(60)),
              IsOk());
  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(seen->value, "node-a");
  leader.Signal(SIGTERM);  // resigns
  EXPECT_EQ(leader.Wait(absl::Seconds(30)), 0);
  absl::StatusOr<std::optional<KeyValue>> after = observer.Leader(absl::Now() + absl::Seconds(10));
  ASSERT_THAT(after, IsOk());
  EXPECT_FALSE(after->has_value()) << "resigned";

  // SDK: the leader proclaims a new value, which an observer sees; a
  // contender that does not lead cannot proclaim.
  absl::StatusOr<std::unique_ptr<Session>> first =
      Session::Create(connected.get(), absl::Seconds(10));
  absl::StatusOr<std::unique_ptr<Session>> second =
      Session::Create(connected.get(), absl::Seconds(10));
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(second, IsOk());
  Election leading(connected.get(), first->get(), "primary");
  Election waiting(connected.get(), second->get(), "primary");
  ASSERT_THAT(leading.Campaign("v1", absl::Now() + absl::Seconds(30)), IsOk());
  std::vector<std::string> values;
  std::thread watching([&] {
    observer
        .Observe(
            [&](const std::optional<KeyValue>& now) {
              if (now.has_value()) values.push_back(now->value);
              return !now.has_value() || now->value != "v2";
            },
            absl::Now() + absl::Seconds(60))
        .IgnoreError();
  });
  // The second contender queues behind the leader (its Campaign cannot
  // finish while v1 leads) and cannot proclaim.
  absl::StatusOr<uint64_t> queued = waiting.Campaign("w", absl::Now() + absl::Milliseconds(300));
  EXPECT_EQ(queued.status().code(), absl::StatusCode::kDeadlineExceeded) << "v1 leads";
  EXPECT_EQ(waiting.Proclaim("w2").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_THAT(leading.Proclaim("v2"), IsOk());
  watching.join();
  ASSERT_FALSE(values.empty());
  EXPECT_EQ(values.back(), "v2");
  ASSERT_THAT(leading.Resign(), IsOk());
  absl::StatusOr<uint64_t> next = waiting.Campaign("w", absl::Now() + absl::Seconds(30));
  EXPECT_THAT(next, IsOk()) << "the next in line leads once the leader resigned";
}

// Client TLS (issue "security"): a cluster started with --tls-cert/--tls-key/
// --tls-ca serves the SDK and the CLI over TLS, its nodes' own calls to each
// other's client ports (a lease check on a node that does not lead the
// metadata group) work, a plaintext client gets nothing, and SIGHUP checks
// the certificate files.
TEST(ClientEndToEnd, ATlsClusterServesTlsClientsOnly) {
  const std::string certs = MakeTempDir("tessera-e2e-tls");
  for (const char* what : {"1 2 3", "--user alice"}) {
    const std::string command =
        absl::StrCat(TESSERA_SOURCE_DIR, "/deploy/gen-certs.sh '", certs, "' ", what);
    ASSERT_EQ(std::system(command.c_str()), 0);
  }
  ClusterProcesses cluster({absl::StrCat("--tls-cert=", certs, "/node-{id}.crt"),
                            absl::StrCat("--tls-key=", certs, "/node-{id}.key"),
                            absl::StrCat("--tls-ca=", certs, "/ca.crt")});
  ClientOptions options;
  options.endpoints = cluster.endpoints();
  options.attempt_timeout = absl::Seconds(1);
  options.tls = {.ca_file = certs + "/ca.crt",
                 .cert_file = certs + "/user-alice.crt",
                 .key_file = certs + "/user-alice.key"};
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  ASSERT_THAT(client, IsOk());
  CallOptions call;
  call.timeout = absl::Seconds(30);
  const absl::Time ready_by = absl::Now() + absl::Seconds(60);
  while (!(*client)->Put("tls/first", "1", call).ok()) {
    ASSERT_LT(absl::Now(), ready_by) << "no TLS put succeeded";
  }
  // Keys on every shard attached to a lease: every shard leader checks the
  // lease, most of them with the metadata group's leader over TLS.
  absl::StatusOr<LeaseGrant> lease = (*client)->GrantLease(absl::Seconds(60), call);
  ASSERT_THAT(lease, IsOk());
  call.lease = lease->id;
  for (int i = 0; i < 32; ++i) {
    ASSERT_THAT((*client)->Put(absl::StrCat("tls/leased/", i), "v", call), IsOk()) << i;
  }
  call.lease = 0;
  absl::StatusOr<KeyValue> got = (*client)->Get("tls/first", call);
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->value, "1");

  ClientOptions plain;
  plain.endpoints = cluster.endpoints();
  plain.attempt_timeout = absl::Milliseconds(500);
  absl::StatusOr<std::unique_ptr<Client>> plaintext = Client::Create(plain);
  ASSERT_THAT(plaintext, IsOk());
  CallOptions short_call;
  short_call.timeout = absl::Seconds(2);
  absl::StatusOr<KeyValue> refused = (*plaintext)->Get("tls/first", short_call);
  EXPECT_FALSE(refused.ok());
  EXPECT_TRUE(absl::IsUnavailable(refused.status()) || absl::IsDeadlineExceeded(refused.status()))
      << refused.status();

  // The CLI takes the same settings from the environment.
  setenv("TESSERA_TLS_CA", (certs + "/ca.crt").c_str(), 1);
  ChildProcess cli;
  cli.Start(
      {TESSERA_CLI_BINARY, absl::StrCat("--endpoints=", absl::StrJoin(cluster.endpoints(), ",")),
       "get", "tls/first"},
      certs + "/cli.out");
  unsetenv("TESSERA_TLS_CA");
  EXPECT_EQ(cli.Wait(absl::Seconds(60)), 0);
  std::ifstream out(certs + "/cli.out");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(out), {}), "1");

  // SIGHUP: the node checks its certificate files and says so.
  cluster.process(0).Signal(SIGHUP);
  const absl::Time logged_by = absl::Now() + absl::Seconds(30);
  bool logged = false;
  while (!logged && absl::Now() < logged_by) {
    std::ifstream log(cluster.Log(0));
    const std::string text(std::istreambuf_iterator<char>(log), {});
    logged = text.find("the client port's certificate files are valid") != std::string::npos;
    if (!logged) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(logged);
  EXPECT_TRUE(cluster.process(0).running());
}

// Users and permissions (issue "security") on a plaintext 3-node cluster:
// root sets them up and enables auth; a user with read on app/ cannot write
// app/x or read other/; nobody is refused; a wrong password is refused and
// then throttled; a grant takes effect on every node; a token expires and
// the SDK renews it by itself, the batched stream included.
TEST(ClientEndToEnd, UsersRolesAndTokens) {
  ClusterProcesses cluster({"--auth-token-ttl-seconds=10"});
  std::unique_ptr<Client> admin;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, /*use_batch_stream=*/true, &admin));
  CallOptions call;
  call.timeout = absl::Seconds(30);
  auto change = [&](auto fill) {
    v1::AuthChangeRequest c;
    fill(c);
    return admin->ChangeAuth(c, call);
  };
  ASSERT_THAT(change([](auto& c) {
                c.mutable_user_add()->set_name("root");
                c.mutable_user_add()->set_password("rootpw");
              }),
              IsOk());
  ASSERT_THAT(change([](auto& c) {
                c.mutable_user_grant_role()->set_user("root");
                c.mutable_user_grant_role()->set_role("root");
              }),
              IsOk());
  ASSERT_THAT(change([](auto& c) {
                c.mutable_user_add()->set_name("alice");
                c.mutable_user_add()->set_password("alicepw");
              }),
              IsOk());
  ASSERT_THAT(change([](auto& c) { c.set_role_add("app-reader"); }), IsOk());
  ASSERT_THAT(change([](auto& c) {
                c.mutable_role_grant()->set_role("app-reader");
                c.mutable_role_grant()->mutable_permission()->set_access(v1::Permission::READ);
                c.mutable_role_grant()->mutable_permission()->set_key("app/");
                c.mutable_role_grant()->mutable_permission()->set_range_end("app0");
              }),
              IsOk());
  ASSERT_THAT(change([](auto& c) {
                c.mutable_user_grant_role()->set_user("alice");
                c.mutable_user_grant_role()->set_role("app-reader");
              }),
              IsOk());
  ASSERT_THAT(admin->Put("app/x", "1", call), IsOk());
  ASSERT_THAT(admin->Put("other/y", "2", call), IsOk());
  ASSERT_THAT(change([](auto& c) { c.set_enable(true); }), IsOk());

  auto signed_in = [&](const std::string& user, const std::string& password) {
    ClientOptions options;
    options.endpoints = cluster.endpoints();
    options.attempt_timeout = absl::Seconds(1);
    options.user = user;
    options.password = password;
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Create(options);
    EXPECT_THAT(c, IsOk());
    return c.ok() ? *std::move(c) : nullptr;
  };
  std::unique_ptr<Client> alice = signed_in("alice", "alicepw");
  std::unique_ptr<Client> root = signed_in("root", "rootpw");
  ASSERT_NE(alice, nullptr);
  ASSERT_NE(root, nullptr);
  // Every node follows the enable within a bounded time (it polls the
  // metadata group every 100 ms): the anonymous admin client is refused.
  const absl::Time enabled_by = absl::Now() + absl::Seconds(10);
  while (admin->Get("app/x", call).ok() && absl::Now() < enabled_by) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(admin->Get("app/x", call).status().code(), absl::StatusCode::kUnauthenticated);

  absl::StatusOr<KeyValue> read = alice->Get("app/x", call);
  ASSERT_THAT(read, IsOk());
  EXPECT_EQ(read->value, "1");
  absl::StatusOr<PutResult> write = alice->Put("app/x", "9", call);
  EXPECT_EQ(write.status().code(), absl::StatusCode::kPermissionDenied) << write.status();
  EXPECT_THAT(std::string(write.status().message()),
              ::testing::HasSubstr("no write permission on key \"app/x\""));
  EXPECT_EQ(alice->Get("other/y", call).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(alice->ChangeAuth(v1::AuthChangeRequest(), call).code(),
            absl::StatusCode::kPermissionDenied);
  ASSERT_THAT(root->Get("other/y", call), IsOk());

  // A wrong password: refused, and after a few attempts from this address
  // throttled (RESOURCE_EXHAUSTED with a retry hint).
  std::unique_ptr<Client> wrong = signed_in("alice", "nope");
  ASSERT_NE(wrong, nullptr);
  absl::StatusCode last = absl::StatusCode::kOk;
  for (int i = 0; i < 10 && last != absl::StatusCode::kResourceExhausted; ++i) {
    last = wrong->Get("app/x", call).status().code();
    EXPECT_TRUE(last == absl::StatusCode::kUnauthenticated ||
                last == absl::StatusCode::kResourceExhausted)
        << last;
  }
  EXPECT_EQ(last, absl::StatusCode::kResourceExhausted);

  // A grant reaches every node: each refuses alice's put of app/x until it
  // has the new state, then lets it through (the node checks before it
  // routes, so a follower answers UNAVAILABLE, not PERMISSION_DENIED).
  const absl::Time granted_at = absl::Now();
  ASSERT_THAT(
      root->ChangeAuth(
          [] {
            v1::AuthChangeRequest c;
            c.mutable_role_grant()->set_role("app-reader");
            c.mutable_role_grant()->mutable_permission()->set_access(v1::Permission::READWRITE);
            c.mutable_role_grant()->mutable_permission()->set_key("app/");
            c.mutable_role_grant()->mutable_permission()->set_range_end("app0");
            return c;
          }(),
          call),
      IsOk());
  absl::Duration slowest;
  for (int i = 0; i < kNodes; ++i) {
    auto stub = v1::KV::NewStub(
        grpc::CreateChannel(cluster.endpoint(i), grpc::InsecureChannelCredentials()));
    absl::StatusCode code = absl::StatusCode::kPermissionDenied;
    while (code == absl::StatusCode::kPermissionDenied &&
           absl::Now() < granted_at + absl::Seconds(10)) {
      // A raw Put to node i with the SDK's token.
      v1::PutRequest request;
      request.set_key("app/x");
      request.set_value("v");
      v1::PutResponse response;
      grpc::ClientContext raw;
      raw.AddMetadata("authorization", absl::StrCat("Bearer ", alice->AuthToken()));
      code = FromGrpcStatus(stub->Put(&raw, request, &response)).code();
      if (code == absl::StatusCode::kPermissionDenied) absl::SleepFor(absl::Milliseconds(10));
    }
    EXPECT_NE(code, absl::StatusCode::kPermissionDenied) << "node " << i + 1;
    slowest = std::max(slowest, absl::Now() - granted_at);
  }
  std::cout << "the grant was in force on all " << kNodes << " nodes "
            << absl::ToInt64Milliseconds(slowest) << " ms after Change returned\n";
  EXPECT_THAT(alice->Put("app/x", "2", call), IsOk());

  // Tokens last 10 s here: the SDK renews alice's before it expires (and
  // after a refusal), across three lifetimes, on the batched stream.
  const std::string first_token = alice->AuthToken();
  const absl::Time until = absl::Now() + absl::Seconds(25);
  int puts = 0;
  while (absl::Now() < until) {
    ASSERT_THAT(alice->Put("app/renewed", absl::StrCat(puts), call), IsOk()) << puts;
    ++puts;
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_NE(alice->AuthToken(), first_token) << "renewed";
  // The first token has expired by now: a node refuses it, saying so.
  auto stub =
      v1::KV::NewStub(grpc::CreateChannel(cluster.endpoint(0), grpc::InsecureChannelCredentials()));
  grpc::ClientContext expired;
  expired.AddMetadata("authorization", absl::StrCat("Bearer ", first_token));
  v1::GetRequest get;
  get.set_key("app/x");
  v1::GetResponse got;
  grpc::Status refused = stub->Get(&expired, get, &got);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(refused.error_message(), ::testing::HasSubstr("expired"));

  // Rate limits: alice may make 5 operations per second on each node. A
  // burst straight to a node is refused with a retry hint; the SDK waits as
  // told and completes every put.
  ASSERT_THAT(root->ChangeAuth(
                  [] {
                    v1::AuthChangeRequest c;
                    v1::Limits::User* u = c.mutable_set_limits()->add_users();
                    u->set_user("alice");
                    u->set_ops_per_sec(5);
                    return c;
                  }(),
                  call),
              IsOk());
  bool limited = false;
  const absl::Time limited_by = absl::Now() + absl::Seconds(10);
  while (!limited && absl::Now() < limited_by) {  // until node 1 has the limits
    for (int i = 0; i < 20 && !limited; ++i) {
      grpc::ClientContext raw;
      raw.AddMetadata("authorization", absl::StrCat("Bearer ", alice->AuthToken()));
      grpc::Status s = stub->Get(&raw, get, &got);
      if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        limited = true;
        std::optional<v1::ErrorDetail> detail = GetErrorDetail(FromGrpcStatus(s));
        ASSERT_TRUE(detail.has_value() && detail->has_retry_after()) << s.error_message();
        EXPECT_GT(detail->retry_after().retry_after_ms(), 0u);
        EXPECT_THAT(s.error_message(), ::testing::HasSubstr("rate limit"));
      }
    }
  }
  EXPECT_TRUE(limited);
  for (int i = 0; i < 20; ++i) {
    ASSERT_THAT(alice->Put(absl::StrCat("app/limited/", i), "v", call), IsOk()) << i;
  }
  ASSERT_THAT(root->Get("app/limited/19", call), IsOk());
}

// The storage quota (Limits::storage_quota_bytes): nodes over it refuse
// puts (final, ErrorDetail.quota_exceeded) and serve gets and deletes;
// once the keys are deleted they compact and take puts again by
// themselves.
TEST(ClientEndToEnd, ANodeOverItsStorageQuotaRefusesPutsUntilDeletesBringItUnder) {
  ClusterProcesses cluster;
  std::unique_ptr<Client> client;
  ASSERT_NO_FATAL_FAILURE(ConnectWhenReady(cluster, /*use_batch_stream=*/true, &client));
  CallOptions call;
  call.timeout = absl::Seconds(30);
  v1::AuthChangeRequest limits;
  limits.mutable_set_limits()->set_storage_quota_bytes(16 << 20);
  ASSERT_THAT(client->ChangeAuth(limits, call), IsOk());
  const std::string value(64 << 10, 'v');
  int written = 0;
  absl::Status refused;
  for (; written < 2000; ++written) {  // bounded: 125 MiB
    absl::StatusOr<PutResult> put = client->Put(absl::StrCat("big/", written), value, call);
    if (!put.ok()) {
      refused = put.status();
      break;
    }
  }
  ASSERT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  std::optional<v1::ErrorDetail> detail = GetErrorDetail(refused);
  ASSERT_TRUE(detail.has_value() && detail->has_quota_exceeded()) << refused;
  EXPECT_EQ(detail->quota_exceeded().quota_bytes(), 16u << 20);
  EXPECT_THAT(std::string(refused.message()), ::testing::HasSubstr("over its storage quota"));
  std::cout << written << " puts of 64 KiB before the quota of 16 MiB refused one\n";
  ASSERT_GT(written, 10);
  // Reads and deletes still work.
  ASSERT_THAT(client->Get("big/0", call), IsOk());
  for (int i = 0; i < written; ++i) {
    ASSERT_THAT(client->Delete(absl::StrCat("big/", i), call), IsOk()) << i;
  }
  // The nodes compact by themselves (and drop the watch history holding the
  // deleted values): puts come back without anyone disarming anything.
  const absl::Time until = absl::Now() + absl::Seconds(120);
  absl::Status last;
  while (absl::Now() < until) {
    last = client->Put("big/again", value, call).status();
    if (last.ok()) break;
    absl::SleepFor(absl::Milliseconds(500));
  }
  EXPECT_THAT(last, IsOk());
}

}  // namespace
}  // namespace tessera::client
