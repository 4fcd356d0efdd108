// Storage faults on command, end to end (issue 13 item 2; server/README.md
// "Fail-stop"): three real tessera-server processes on 127.0.0.1 run on the
// fault-injecting storage wrapper (--testing-storage-faults=<dir>/nodeN.faults,
// storage/fault_injection.h) while an SDK workload (writer threads putting
// with exactly-once sessions and reading their own keys back
// linearizably) runs. A fault is switched on for one node by writing its
// control file. Each test asserts:
//   - that node exits with code 3 and exactly one "fatal: ..." line naming
//     the operation and the injected I/O error;
//   - the other two elect leaders for every shard, and the workload
//     completes with no error surfaced by the SDK (every put acknowledged,
//     each key's version = the number of its puts, every read = the last
//     acknowledged value);
//   - restarted with the fault cleared, the node catches up (its applied
//     indexes reach the survivors' commit indexes; STALE reads at that node
//     return every acknowledged value), and with one of the others killed
//     (so it is needed for every quorum) every acknowledged write reads back
//     linearizably.
// Faults covered: the raft log save and the apply of committed entries on a
// node that leads shards, and the snapshot install of a follower that
// restarts behind the leaders' compacted logs (--snapshot-interval-entries
// small).
//
// No sleeps as synchronisation: every wait is a bounded loop on a
// condition (polled every 20-50 ms). Ports are reserved up front as in
// integration_test.cc; every process is stopped by pid (SIGKILL + waitpid),
// also when a test fails.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "proto/grpc_status.h"
#include "proto/key_hash.h"
#include "proto/testing/status_matchers.h"
#include "tessera/kv.grpc.pb.h"
#include "tests/testing/process.h"

namespace tessera::server {
namespace {

using ::tessera::testing::ChildProcess;
using ::tessera::testing::IsOk;
using ::tessera::testing::MakeTempDir;
using ::tessera::testing::PeerTlsFlags;
using ::tessera::testing::PortReservation;
using ::tessera::testing::Tail;
using ::tessera::testing::TearDownCluster;
using ::testing::HasSubstr;

constexpr int kNodes = 3;
constexpr uint32_t kShards = 8;

// Three tessera-server processes, each with a storage-fault control file
// (absent at first: no fault).
class FaultCluster {
 public:
  // `flags` are added to every node's command line.
  explicit FaultCluster(std::vector<std::string> flags = {})
      : dir_(MakeTempDir("tessera-faults")), flags_(std::move(flags)) {
    // The second key of the testing flag (flags.h): the children inherit it.
    setenv("TESSERA_ALLOW_TESTING_FLAGS", "1", 1);
    std::vector<std::string> members;
    for (int i = 0; i < kNodes; ++i) {
      members.push_back(
          absl::StrCat(i + 1, "=", client_ports_[i].address(), "/", peer_ports_[i].address()));
    }
    initial_cluster_ = absl::StrJoin(members, ",");
  }
  ~FaultCluster() {
    TearDownCluster(
        processes_, [this](int i) { return Log(i); }, dir_, ::testing::Test::HasFailure(), 40);
  }

  std::string Log(int i) const { return absl::StrCat(dir_, "/node", i + 1, ".log"); }
  std::string FaultFile(int i) const { return absl::StrCat(dir_, "/node", i + 1, ".faults"); }

  void Start(int i) {
    std::vector<std::string> args = {TESSERA_SERVER_BINARY,
                                     absl::StrCat("--node-id=", i + 1),
                                     absl::StrCat("--data-dir=", dir_, "/node", i + 1),
                                     absl::StrCat("--initial-cluster=", initial_cluster_),
                                     absl::StrCat("--shards=", kShards),
                                     "--tick-ms=20",
                                     "--election-ticks=10",
                                     "--drain-timeout-ms=1000",
                                     absl::StrCat("--testing-storage-faults=", FaultFile(i))};
    for (std::string& flag : PeerTlsFlags(dir_ + "/certs", kNodes, i + 1)) {
      args.push_back(std::move(flag));
    }
    args.insert(args.end(), flags_.begin(), flags_.end());
    processes_[i].Start(args, Log(i));
  }
  void StartAll() {
    for (int i = 0; i < kNodes; ++i) Start(i);
  }

  // Switches the faults `ops` (e.g. "save") on for node i: its control file
  // is written atomically.
  void SetFault(int i, const std::string& ops) {
    const std::string temp = FaultFile(i) + ".tmp";
    {
      std::ofstream out(temp, std::ios::trunc);
      out << ops << "\n";
    }
    ASSERT_EQ(std::rename(temp.c_str(), FaultFile(i).c_str()), 0);
  }
  void ClearFault(int i) { std::filesystem::remove(FaultFile(i)); }

  std::vector<std::string> endpoints() const {
    std::vector<std::string> out;
    for (const PortReservation& p : client_ports_) out.push_back(p.address());
    return out;
  }
  std::string endpoint(int i) const { return client_ports_[i].address(); }
  ChildProcess& process(int i) { return processes_[i]; }

 private:
  const std::string dir_;
  const std::vector<std::string> flags_;
  PortReservation client_ports_[kNodes];
  PortReservation peer_ports_[kNodes];
  std::string initial_cluster_;
  ChildProcess processes_[kNodes];
};

// Node i's Cluster.NodeStatus (one attempt, 1 s).
absl::StatusOr<v1::NodeStatusResponse> Status(client::Client& client, FaultCluster& cluster,
                                              int i) {
  if (!cluster.process(i).running()) return absl::UnavailableError("not running");
  client::CallOptions call;
  call.timeout = absl::Seconds(1);
  return client.NodeStatus(cluster.endpoint(i), call);
}

// shard -> 0-based index of its leader, among the running nodes that answer.
std::map<uint32_t, int> Leaders(client::Client& client, FaultCluster& cluster) {
  std::map<uint32_t, int> leaders;
  for (int i = 0; i < kNodes; ++i) {
    absl::StatusOr<v1::NodeStatusResponse> s = Status(client, cluster, i);
    if (!s.ok()) continue;
    for (const v1::ShardStatus& st : s->shards()) {
      if (st.role() == "leader") leaders[st.shard()] = i;
    }
  }
  return leaders;
}

// Waits (bounded) until every shard has a leader among the running nodes and
// every running node that answers has loaded the cluster map.
bool WaitLeaders(client::Client& client, FaultCluster& cluster,
                 absl::Duration timeout = absl::Seconds(60)) {
  for (const absl::Time deadline = absl::Now() + timeout; absl::Now() < deadline;) {
    bool loaded = true;
    for (int i = 0; i < kNodes && loaded; ++i) {
      absl::StatusOr<v1::NodeStatusResponse> s = Status(client, cluster, i);
      loaded = !s.ok() || s->epoch() != 0;
    }
    if (loaded && Leaders(client, cluster).size() == kShards) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

// Every shard's commit index as the running nodes report it (the highest).
std::map<uint32_t, uint64_t> CommitIndexes(client::Client& client, FaultCluster& cluster) {
  std::map<uint32_t, uint64_t> commit;
  for (int i = 0; i < kNodes; ++i) {
    absl::StatusOr<v1::NodeStatusResponse> s = Status(client, cluster, i);
    if (!s.ok()) continue;
    for (const v1::ShardStatus& st : s->shards()) {
      commit[st.shard()] = std::max(commit[st.shard()], st.commit_index());
    }
  }
  return commit;
}

// Waits (bounded) until node i serves by the map and has applied every shard
// up to `commit`; returns its last status.
absl::StatusOr<v1::NodeStatusResponse> WaitCaughtUp(client::Client& client, FaultCluster& cluster,
                                                    int i,
                                                    const std::map<uint32_t, uint64_t>& commit) {
  absl::StatusOr<v1::NodeStatusResponse> status;
  for (const absl::Time deadline = absl::Now() + absl::Seconds(60); absl::Now() < deadline;) {
    status = Status(client, cluster, i);
    bool caught_up = status.ok() && status->epoch() != 0 && status->shards_size() == kShards;
    for (int k = 0; caught_up && k < status->shards_size(); ++k) {
      caught_up = status->shards(k).applied_index() >= commit.at(status->shards(k).shard());
    }
    if (caught_up) return status;
    absl::SleepFor(absl::Milliseconds(50));
  }
  if (!status.ok()) return status.status();
  return absl::DeadlineExceededError(status->DebugString());
}

// The lines of `log` that contain `needle`.
std::vector<std::string> LinesWith(const std::string& log, const std::string& needle) {
  std::ifstream in(log);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (line.find(needle) != std::string::npos) lines.push_back(line);
  }
  return lines;
}

// Waits (bounded) for node i to exit; its exit code, -1 if it did not.
int WaitExit(FaultCluster& cluster, int i) { return cluster.process(i).Wait(absl::Seconds(60)); }

// Waits (bounded) until `condition` holds; false at the deadline.
template <typename Condition>
bool Await(Condition condition, absl::Duration timeout) {
  for (const absl::Time deadline = absl::Now() + timeout; absl::Now() < deadline;) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return condition();
}

// The SDK workload: kWriters threads, each owning two keys per shard. A
// round puts every key (exactly-once session: a retried put applies once)
// and reads it back linearizably; the value must be the one just
// acknowledged, with version = the number of acknowledged puts of the key.
// Every error the SDK surfaces is counted (the tests require none).
class Workload {
 public:
  static constexpr int kWriters = 4;
  static constexpr int kKeysPerShard = 2;

  explicit Workload(client::Client* client) : client_(client) {
    // Keys spread evenly over the shards, so every shard gets writes.
    keys_.resize(kWriters);
    std::map<uint32_t, int> per_shard;
    for (int n = 0; per_shard.size() < kShards ||
                    std::any_of(per_shard.begin(), per_shard.end(),
                                [](const auto& p) { return p.second < kWriters * kKeysPerShard; });
         ++n) {
      const std::string key = absl::StrCat("fault-key-", n);
      int& count = per_shard[ShardForKey(key, kShards)];
      if (count >= kWriters * kKeysPerShard) continue;
      keys_[count % kWriters].push_back(key);
      ++count;
    }
    acknowledged_.resize(kWriters);
    for (int w = 0; w < kWriters; ++w) {
      threads_.emplace_back([this, w] { Run(w); });
    }
  }
  ~Workload() { Stop(); }

  void Stop() {
    stop_ = true;
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }

  int puts() const { return puts_.load(); }
  int gets() const { return gets_.load(); }
  int errors() const { return errors_.load(); }
  std::string first_errors() const {
    absl::MutexLock lock(&mu_);
    return absl::StrJoin(first_errors_, "\n");
  }
  // key -> (last acknowledged value, acknowledged puts); after Stop().
  std::map<std::string, std::pair<std::string, uint64_t>> acknowledged() const {
    std::map<std::string, std::pair<std::string, uint64_t>> all;
    for (const auto& writer : acknowledged_) all.insert(writer.begin(), writer.end());
    return all;
  }

 private:
  void Error(const std::string& what) {
    ++errors_;
    absl::MutexLock lock(&mu_);
    if (first_errors_.size() < 10) first_errors_.push_back(what);
  }

  void Run(int w) {
    client::CallOptions call;
    call.timeout = absl::Seconds(30);  // far above an election (~0.2-0.4 s)
    std::map<std::string, std::pair<std::string, uint64_t>>& acked = acknowledged_[w];
    for (int round = 0; !stop_.load(); ++round) {
      for (const std::string& key : keys_[w]) {
        if (stop_.load()) return;
        const std::string value = absl::StrCat("w", w, "-r", round);
        absl::StatusOr<client::PutResult> put = client_->Put(key, value, call);
        if (!put.ok()) {
          Error(absl::StrCat("put ", key, ": ", put.status().ToString()));
          continue;
        }
        ++puts_;
        auto& [last, count] = acked[key];
        last = value;
        ++count;
        if (put->version != count) {
          Error(absl::StrCat("put ", key, ": version ", put->version, " after ", count, " puts"));
        }
        absl::StatusOr<client::KeyValue> got = client_->Get(key, call);
        if (!got.ok()) {
          Error(absl::StrCat("get ", key, ": ", got.status().ToString()));
          continue;
        }
        ++gets_;
        if (got->value != last || got->version != count) {
          Error(absl::StrCat("get ", key, ": ", got->value, " v", got->version, ", expected ", last,
                             " v", count));
        }
      }
    }
  }

  client::Client* const client_;
  std::vector<std::vector<std::string>> keys_;  // per writer
  std::vector<std::map<std::string, std::pair<std::string, uint64_t>>> acknowledged_;
  std::atomic<bool> stop_{false};
  std::atomic<int> puts_{0};
  std::atomic<int> gets_{0};
  std::atomic<int> errors_{0};
  mutable absl::Mutex mu_;
  std::vector<std::string> first_errors_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
};

std::unique_ptr<client::Client> NewClient(FaultCluster& cluster) {
  client::ClientOptions options;
  options.endpoints = cluster.endpoints();
  options.attempt_timeout = absl::Seconds(1);
  absl::StatusOr<std::unique_ptr<client::Client>> created = client::Client::Create(options);
  if (!created.ok()) {
    ADD_FAILURE() << created.status();
    return nullptr;
  }
  return *std::move(created);
}

// Node i's exit after the fault: code 3 and exactly one fatal line with
// `operation` and the injected error of `fault`. Returns the line from
// "fatal:" on ("" if there is none).
std::string ExpectFatalExit(FaultCluster& cluster, int i, const std::string& operation,
                            const std::string& fault) {
  EXPECT_EQ(WaitExit(cluster, i), 3) << Tail(cluster.Log(i), 20);
  const std::vector<std::string> fatal = LinesWith(cluster.Log(i), "fatal:");
  EXPECT_EQ(fatal.size(), 1u) << Tail(cluster.Log(i), 20);
  if (fatal.empty()) return "";
  EXPECT_THAT(fatal[0], HasSubstr("fatal: INTERNAL: shard"));
  EXPECT_THAT(fatal[0], HasSubstr(operation));
  EXPECT_THAT(fatal[0],
              HasSubstr(absl::StrCat("injected I/O error: storage fault \"", fault, "\" is on")));
  EXPECT_THAT(fatal[0], HasSubstr("exiting with code 3"));
  return fatal[0].substr(fatal[0].find("fatal:"));
}

// After the workload: restart node `i` with its fault cleared; it catches up
// and holds every acknowledged write; then with another node killed (so
// node i is in every quorum) every acknowledged write reads back.
void ExpectRestartLosesNothing(FaultCluster& cluster, client::Client& client, int i,
                               const std::map<std::string, std::pair<std::string, uint64_t>>& acked,
                               uint64_t* snapshots_installed) {
  const std::map<uint32_t, uint64_t> commit = CommitIndexes(client, cluster);
  ASSERT_EQ(commit.size(), kShards);
  cluster.ClearFault(i);
  cluster.Start(i);
  absl::StatusOr<v1::NodeStatusResponse> status = WaitCaughtUp(client, cluster, i, commit);
  ASSERT_THAT(status, IsOk()) << "node " << i + 1 << " did not catch up";
  *snapshots_installed = 0;
  for (const v1::ShardStatus& s : status->shards()) *snapshots_installed += s.snapshots_installed();

  // Its own replicas answer every acknowledged value (STALE reads at node i).
  std::unique_ptr<v1::KV::Stub> kv =
      v1::KV::NewStub(grpc::CreateChannel(cluster.endpoint(i), grpc::InsecureChannelCredentials()));
  for (const auto& [key, expected] : acked) {
    v1::GetRequest request;
    request.mutable_header()->set_shard(ShardForKey(key, kShards));
    request.mutable_header()->set_consistency(v1::READ_CONSISTENCY_STALE);
    request.set_key(key);
    v1::GetResponse response;
    absl::Status s;
    // A STALE read is refused (UNAVAILABLE) while the replica has not heard
    // from its leader lately (a leader change, a loaded machine): ask again.
    for (int attempt = 0; attempt < 100; ++attempt) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      response.Clear();
      s = FromGrpcStatus(kv->Get(&context, request, &response));
      if (s.code() != absl::StatusCode::kUnavailable) break;
      absl::SleepFor(absl::Milliseconds(50));
    }
    ASSERT_THAT(s, IsOk()) << key;
    ASSERT_TRUE(response.found()) << key;
    EXPECT_EQ(response.kv().value(), expected.first) << key;
    EXPECT_EQ(response.kv().version(), expected.second) << key;
  }

  // Node i is needed for every quorum now.
  const int other = (i + 1) % kNodes;
  cluster.process(other).Kill();
  ASSERT_TRUE(WaitLeaders(client, cluster)) << "no leaders with node " << other + 1 << " down";
  client::CallOptions call;
  call.timeout = absl::Seconds(30);
  for (const auto& [key, expected] : acked) {
    absl::StatusOr<client::KeyValue> got = client.Get(key, call);
    ASSERT_THAT(got, IsOk()) << key;
    EXPECT_EQ(got->value, expected.first) << key;
    EXPECT_EQ(got->version, expected.second) << key;
  }
}

// A fault on the node leading the most shards, mid-workload.
void RunLeaderFault(const std::string& fault, const std::string& operation) {
  FaultCluster cluster;
  cluster.StartAll();
  std::unique_ptr<client::Client> client = NewClient(cluster);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(WaitLeaders(*client, cluster)) << "cluster not ready";

  Workload workload(client.get());
  ASSERT_TRUE(Await([&] { return workload.puts() >= 200; }, absl::Seconds(60)))
      << "workload stalled before the fault";
  std::map<int, int> led;
  for (const auto& [shard, node] : Leaders(*client, cluster)) ++led[node];
  int victim = 0;
  for (const auto& [node, count] : led) {
    if (count > led[victim]) victim = node;
  }
  ASSERT_GE(led[victim], 1);
  const int puts_before = workload.puts();
  const absl::Time switched = absl::Now();
  cluster.SetFault(victim, fault);
  const std::string line = ExpectFatalExit(cluster, victim, operation, fault);
  const absl::Time exited = absl::Now();
  ASSERT_TRUE(WaitLeaders(*client, cluster)) << "no new leaders";
  const absl::Time led_again = absl::Now();
  const int puts_at_exit = workload.puts();
  EXPECT_TRUE(Await([&] { return workload.puts() >= puts_at_exit + 300; }, absl::Seconds(60)))
      << "writes stalled after the exit";
  workload.Stop();
  EXPECT_EQ(workload.errors(), 0) << workload.first_errors();
  std::cerr << "fault \"" << fault << "\" on node " << victim + 1 << " (leading " << led[victim]
            << " of " << kShards << " shards): exit 3 after " << exited - switched
            << "; line: " << line << "\n"
            << "new leaders for every shard " << led_again - exited << " after the exit\n"
            << "workload: " << workload.puts() << " puts, " << workload.gets() << " gets ("
            << puts_before << " puts before the fault, " << workload.puts() - puts_at_exit
            << " after the exit), " << workload.errors() << " errors surfaced\n";

  uint64_t snapshots = 0;
  ExpectRestartLosesNothing(cluster, *client, victim, workload.acknowledged(), &snapshots);
}

TEST(StorageFaults, RaftLogSaveFailureStopsTheLeaderAndLosesNothing) {
  RunLeaderFault("save", "raft log save");
}

TEST(StorageFaults, ApplyFailureStopsTheLeaderAndLosesNothing) {
  RunLeaderFault("apply", "apply committed entries");
}

// A follower that restarts behind the compacted logs needs a snapshot; its
// install fails, it exits; restarted without the fault it installs them.
TEST(StorageFaults, SnapshotInstallFailureStopsTheFollowerAndLosesNothing) {
  // Logs are compacted every 50 applied entries (keeping 25).
  FaultCluster cluster({"--snapshot-interval-entries=50"});
  cluster.StartAll();
  std::unique_ptr<client::Client> client = NewClient(cluster);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(WaitLeaders(*client, cluster)) << "cluster not ready";

  const int lagging = 2;
  absl::StatusOr<v1::NodeStatusResponse> before = Status(*client, cluster, lagging);
  ASSERT_THAT(before, IsOk());
  cluster.process(lagging).Kill();
  std::map<uint32_t, uint64_t> behind;  // the lagging node's last index per shard
  for (const v1::ShardStatus& s : before->shards()) behind[s.shard()] = s.last_index();
  ASSERT_TRUE(WaitLeaders(*client, cluster));

  Workload workload(client.get());
  // Every shard's leader applies 200 entries past what the lagging node
  // has: its logs are compacted past that node's last entry.
  const bool compacted = Await(
      [&] {
        const std::map<uint32_t, uint64_t> commit = CommitIndexes(*client, cluster);
        if (commit.size() != kShards) return false;
        for (const auto& [shard, index] : commit) {
          if (index < behind[shard] + 200) return false;
        }
        return true;
      },
      absl::Seconds(120));
  ASSERT_TRUE(compacted) << "the workload did not move every shard 200 entries on";

  cluster.SetFault(lagging, "install");
  const absl::Time started = absl::Now();
  cluster.Start(lagging);
  const std::string line =
      ExpectFatalExit(cluster, lagging, "install snapshot at index", "install");
  const absl::Time exited = absl::Now();
  const int puts_at_exit = workload.puts();
  EXPECT_TRUE(Await([&] { return workload.puts() >= puts_at_exit + 100; }, absl::Seconds(60)))
      << "writes stalled after the exit";
  workload.Stop();
  EXPECT_EQ(workload.errors(), 0) << workload.first_errors();
  std::cerr << "fault \"install\" on node " << lagging + 1 << " (restarted behind the logs): exit "
            << "3 " << exited - started << " after its start; line: " << line << "\n"
            << "workload: " << workload.puts() << " puts, " << workload.gets() << " gets, "
            << workload.errors() << " errors surfaced\n";

  uint64_t snapshots = 0;
  ExpectRestartLosesNothing(cluster, *client, lagging, workload.acknowledged(), &snapshots);
  EXPECT_GE(snapshots, 1u) << "the restarted node caught up without a snapshot";
  std::cerr << "restarted node " << lagging + 1 << " installed " << snapshots << " snapshots\n";
}

// The testing flag is refused, with one line and exit 2 (bad flags), unless
// the environment allows testing flags.
TEST(StorageFaults, TheTestingFlagIsRefusedWithoutTheEnvironmentVariable) {
  const std::string dir = MakeTempDir("tessera-faults-flag");
  for (const char* allow : {"", "0", "yes"}) {
    if (*allow == '\0') {
      unsetenv("TESSERA_ALLOW_TESTING_FLAGS");
    } else {
      setenv("TESSERA_ALLOW_TESTING_FLAGS", allow, 1);
    }
    PortReservation client_port, peer_port;
    const std::string log = dir + "/refused.log";
    std::filesystem::remove(log);
    ChildProcess p;
    p.Start({TESSERA_SERVER_BINARY, "--node-id=1", absl::StrCat("--data-dir=", dir, "/node1"),
             absl::StrCat("--initial-cluster=1=", client_port.address(), "/", peer_port.address()),
             "--insecure-peers=true", absl::StrCat("--testing-storage-faults=", dir, "/faults")},
            log);
    EXPECT_EQ(p.Wait(absl::Seconds(20)), 2) << "TESSERA_ALLOW_TESTING_FLAGS=" << allow;
    const std::vector<std::string> lines = LinesWith(log, "tessera-server:");
    ASSERT_EQ(lines.size(), 1u) << Tail(log, 10);
    EXPECT_THAT(lines[0], HasSubstr("--testing-storage-faults is for tests only"));
    EXPECT_THAT(lines[0], HasSubstr("TESSERA_ALLOW_TESTING_FLAGS=1"));
    EXPECT_FALSE(std::filesystem::exists(dir + "/node1")) << "it must not touch the data dir";
  }
  unsetenv("TESSERA_ALLOW_TESTING_FLAGS");
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}

}  // namespace
}  // namespace tessera::server
