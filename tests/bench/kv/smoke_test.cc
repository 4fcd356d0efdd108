// tessera-bench end to end: the binary run as a child process against a real
// 3-node Tessera cluster and (when /usr/bin/etcd is installed) a 1-member
// etcd, both on 127.0.0.1 with reserved ports; its exit codes for usage
// errors. Every process is started through tests/testing/process.h and
// stopped by pid, also when a test fails.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "etcd_kv.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tests/bench/kv/harness.h"
#include "tests/testing/process.h"

namespace tessera::bench {
namespace {

using ::tessera::testing::ChildProcess;
using ::tessera::testing::IsOk;
using ::tessera::testing::MakeTempDir;
using ::tessera::testing::PeerTlsFlags;
using ::tessera::testing::PortReservation;
using ::tessera::testing::Tail;

constexpr char kEtcd[] = "/usr/bin/etcd";
constexpr int kKeySpace = 1000;

// A run that completed without an error: ops > 0, ordered percentiles.
void ExpectCleanRun(const BenchRun& run, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(run.exit_code, 0) << run.out << run.err;
  ASSERT_EQ(run.json.front(), '{') << run.out;
  ASSERT_EQ(run.json.back(), '}') << run.out;
  EXPECT_GT(run.Number("ops"), 0) << run.json;
  EXPECT_EQ(run.Number("errors"), 0) << run.json;
  EXPECT_GT(run.Number("ops_per_sec"), 0) << run.json;
  EXPECT_LE(run.Number("p50_ms"), run.Number("p99_ms")) << run.json;
  EXPECT_LE(run.Number("p99_ms"), run.Number("max_ms")) << run.json;
  EXPECT_LE(run.Number("p999_ms"), run.Number("max_ms")) << run.json;
  EXPECT_GT(run.Number("p50_ms"), 0) << run.json;
}

TEST(BenchSmoke, TesseraWorkloadsRunCleanAndWriteTheKeys) {
  TesseraCluster cluster;
  client::ClientOptions options;
  options.endpoints = cluster.endpoints();
  absl::StatusOr<std::unique_ptr<client::Client>> created = client::Client::Create(options);
  ASSERT_THAT(created, IsOk());
  client::Client& sdk = **created;
  ASSERT_TRUE(cluster.WaitReady(sdk)) << "no leader for every shard";

  const std::string endpoints = "--endpoints=" + absl::StrJoin(cluster.endpoints(), ",");
  // Only a fill: keys 0..299 written once each, 0 measured ops.
  BenchRun fill =
      RunBench({endpoints, "--clients=64", "--key-space=300", "--fill", "--total=0", "put"});
  ASSERT_EQ(fill.exit_code, 0) << fill.out << fill.err;
  EXPECT_EQ(fill.Number("ops"), 0) << fill.json;
  EXPECT_EQ(fill.Number("errors"), 0) << fill.json;
  EXPECT_EQ(fill.Number("fill_ops"), 300) << fill.json;
  absl::StatusOr<client::KeyValue> last = sdk.Get("k000000000000299");
  ASSERT_THAT(last, IsOk());
  EXPECT_EQ(last->version, 1u);

  const std::string key_space = absl::StrCat("--key-space=", kKeySpace);
  BenchRun put = RunBench({endpoints, "--clients=1024", "--conns=2", "--duration=2s", "--fill",
                           key_space, "--seed=5", "put"});
  ExpectCleanRun(put, "put");
  EXPECT_EQ(put.Number("fill_ops"), kKeySpace) << put.json;
  EXPECT_EQ(put.Number("fill_errors"), 0) << put.json;
  EXPECT_EQ(put.Number("seed"), 5) << put.json;
  EXPECT_NE(put.out.find(absl::StrCat("fill: ", kKeySpace, " keys in ")), std::string::npos);
  EXPECT_NE(put.out.find("Latency distribution:"), std::string::npos) << put.out;
  EXPECT_EQ(put.err, "");

  BenchRun get = RunBench({endpoints, "--clients=256", "--duration=2s", key_space, "get"});
  ExpectCleanRun(get, "get");
  EXPECT_EQ(get.Number("misses"), 0) << get.json;  // the fill wrote every key
  ExpectCleanRun(RunBench({endpoints, "--clients=256", "--duration=2s", key_space,
                           "--read-ratio=0.5", "--consistency=stale", "mixed"}),
                 "mixed");
  BenchRun txn = RunBench({endpoints, "--clients=256", "--duration=2s", key_space, "txn"});
  ExpectCleanRun(txn, "txn");

  // --total stops after exactly that many requests.
  BenchRun total = RunBench({endpoints, "--clients=8", "--total=100", "--sequential-keys",
                             key_space, "--json-only", "get"});
  ExpectCleanRun(total, "total");
  EXPECT_EQ(total.Number("ops"), 100) << total.json;
  EXPECT_EQ(total.out, total.json + "\n");  // --json-only: one line

  // The keys are really there: "k" + zero-padded index, 16 bytes, and each
  // was written by the fill and the put/txn runs.
  absl::StatusOr<client::KeyValue> got = sdk.Get("k000000000000042");
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->value, std::string(256, 'v'));
  EXPECT_GE(got->version, 1u);

  // --verify: every key gained exactly the writes acknowledged to it.
  BenchRun verified = RunBench({endpoints, "--clients=64", "--duration=2s", key_space,
                                "--read-ratio=0.5", "--verify", "mixed"});
  ExpectCleanRun(verified, "verify");
  EXPECT_EQ(verified.Number("verify_keys"), kKeySpace) << verified.json;
  EXPECT_EQ(verified.Number("verify_unreadable"), 0) << verified.json;
  EXPECT_EQ(verified.Number("verify_mismatches"), 0) << verified.json;
  EXPECT_GT(verified.Number("verify_acked_writes"), 0) << verified.json;
  // ... and catches writes it did not make: another writer puts key 42
  // until the run is over (so at least once between its two reads).
  std::atomic<bool> done{false};
  std::thread other([&] {
    for (int i = 0; i < 100000 && !done.load(); ++i) (void)sdk.Put("k000000000000042", "x");
  });
  BenchRun caught = RunBench(
      {endpoints, "--clients=16", "--duration=1s", key_space, "--verify", "--json-only", "put"});
  done.store(true);
  other.join();
  EXPECT_EQ(caught.exit_code, 3) << caught.out << caught.err;
  EXPECT_GE(caught.Number("verify_mismatches"), 1) << caught.json;
  EXPECT_NE(caught.err.find("verify: mismatch: k000000000000042: version "), std::string::npos)
      << caught.err;

  // Every request failing (values over the server's 1 MiB limit) exits 1.
  BenchRun rejected = RunBench({endpoints, "--total=5", "--value-size=2000000", "put"});
  EXPECT_EQ(rejected.exit_code, 1) << rejected.out << rejected.err;
  EXPECT_EQ(rejected.Number("errors"), 5) << rejected.json;
  EXPECT_EQ(rejected.Number("ops"), 0) << rejected.json;
}

// A 1-member etcd on 127.0.0.1. etcd does not bind with SO_REUSEPORT, so its
// ports are reserved, then released just before it starts.
class EtcdMember {
 public:
  EtcdMember() {
    std::optional<PortReservation> client_port(std::in_place), peer_port(std::in_place);
    client_address_ = client_port->address();
    const std::string peer = "http://" + peer_port->address();
    const std::string client = "http://" + client_address_;
    client_port.reset();
    peer_port.reset();
    etcd_.Start({kEtcd, "--name", "e1", "--data-dir", dir_.path() + "/data", "--listen-client-urls",
                 client, "--advertise-client-urls", client, "--listen-peer-urls", peer,
                 "--initial-advertise-peer-urls", peer, "--initial-cluster", "e1=" + peer},
                dir_.path() + "/etcd.log");
  }
  ~EtcdMember() {
    etcd_.Kill();
    if (::testing::Test::HasFailure()) {
      std::cerr << "---- etcd ----\n" << Tail(dir_.path() + "/etcd.log", 20) << "\n";
    }
  }

  std::string endpoint() const { return client_address_; }

  // A linearizable Range of one key (after WaitReady()).
  grpc::Status Get(const std::string& key, etcdserverpb::RangeResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    etcdserverpb::RangeRequest request;
    request.set_key(key);
    return stub_->Range(&context, request, response);
  }

  // Until a Range succeeds. Each attempt has a channel (and a subchannel
  // pool) of its own: a channel refused while etcd starts would wait out
  // gRPC's reconnect backoff.
  bool WaitReady() {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      stub_ = etcdserverpb::KV::NewStub(grpc::CreateCustomChannel(
          "ipv4:" + client_address_, grpc::InsecureChannelCredentials(), args));
      etcdserverpb::RangeResponse response;
      if (Get("probe", &response).ok()) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

 private:
  TempDir dir_{"tessera-bench-etcd"};
  std::string client_address_;
  ChildProcess etcd_;
  std::unique_ptr<etcdserverpb::KV::Stub> stub_;
};

TEST(BenchSmoke, EtcdWorkloadsRunCleanAndWriteTheKeys) {
  if (access(kEtcd, X_OK) != 0) {
    GTEST_SKIP() << kEtcd << " is not installed (Debian package etcd-server)";
  }
  EtcdMember etcd;
  ASSERT_TRUE(etcd.WaitReady()) << "etcd did not answer";
  const std::string endpoints = "--endpoints=" + etcd.endpoint();
  const std::string key_space = absl::StrCat("--key-space=", kKeySpace);
  BenchRun put = RunBench({"--backend=etcd", endpoints, "--clients=1024", "--conns=2",
                           "--duration=2s", "--fill", key_space, "put"});
  ExpectCleanRun(put, "etcd put");
  EXPECT_EQ(put.Number("fill_ops"), kKeySpace) << put.json;
  BenchRun get =
      RunBench({"--backend=etcd", endpoints, "--clients=256", "--duration=2s", key_space, "get"});
  ExpectCleanRun(get, "etcd get");
  EXPECT_EQ(get.Number("misses"), 0) << get.json;
  ExpectCleanRun(RunBench({"--backend=etcd", endpoints, "--clients=256", "--duration=2s",
                           "--consistency=stale", key_space, "get"}),
                 "etcd stale get");
  ExpectCleanRun(
      RunBench({"--backend=etcd", endpoints, "--clients=256", "--duration=2s", key_space, "txn"}),
      "etcd txn");

  etcdserverpb::RangeResponse response;
  ASSERT_TRUE(etcd.Get("k000000000000042", &response).ok());
  ASSERT_EQ(response.kvs_size(), 1);
  EXPECT_EQ(response.kvs(0).value(), std::string(256, 'v'));
  EXPECT_GE(response.kvs(0).version(), 2);  // the fill, then puts or txns
}

TEST(BenchSmoke, UsageErrorsExitTwoWithOneLine) {
  PortReservation nobody;  // reserved, never listening: connections are refused
  const std::string dead = "--endpoints=" + nobody.address();
  const std::vector<std::vector<std::string>> cases = {
      {"frobnicate"},
      {},
      {"put", "get"},
      {"--clients=0", "put"},
      {"--clients=many", "put"},
      {"--read-ratio=1.5", "mixed"},
      {"--read-ratio=-0.1", "mixed"},
      {"--bogus=1", "put"},
      {"--backend=mysql", "put"},
      {"--endpoints=nohost", "put"},
      {"--endpoints=127.0.0.1:99999", "put"},
      {"--duration=soon", "put"},
      {"--consistency=eventual", "get"},
      {"--backend=etcd", "--consistency=lease", "get"},
      {"--key-size=3", "--key-space=100000", "put"},
      {"--verify", "--consistency=stale", "mixed"},
      {"--verify", "--key-space=10000001", "put"},
      {dead, "--timeout=1s", "put"},
      {"--backend=etcd", dead, "--timeout=1s", "put"},
  };
  for (const std::vector<std::string>& args : cases) {
    BenchRun run = RunBench(args);
    const std::string what = absl::StrJoin(args, " ");
    EXPECT_EQ(run.exit_code, 2) << what << "\n" << run.out << run.err;
    EXPECT_EQ(run.out, "") << what;
    ASSERT_FALSE(run.err.empty()) << what;
    EXPECT_EQ(run.err.find('\n'), run.err.size() - 1) << what << ": " << run.err;
    EXPECT_EQ(run.err.rfind("tessera-bench: ", 0), 0u) << what << ": " << run.err;
  }
  BenchRun help = RunBench({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("usage: tessera-bench"), std::string::npos);
}

}  // namespace
}  // namespace tessera::bench
