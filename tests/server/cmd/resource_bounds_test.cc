// Resource bounds of a real tessera-server process (issue 12, defects 5, 8
// and 9): a connection flood is refused at accept and the node keeps
// serving, during the flood and after it; a second server on a running
// node's ports fails to start with "address in use" and the first keeps
// serving; calls to random method names do not add metric series.
//
// Each test runs a one-member cluster on reserved 127.0.0.1 ports
// (tests/testing/process.h) through the client SDK, and stops its processes
// by pid.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/byte_buffer.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tests/testing/process.h"

namespace tessera::server {
namespace {

using ::tessera::testing::ChildProcess;
using ::tessera::testing::IsOk;
using ::tessera::testing::MakeTempDir;
using ::tessera::testing::PortReservation;
using ::tessera::testing::Tail;
using ::testing::HasSubstr;

// A one-member cluster on reserved ports.
class OneNode {
 public:
  OneNode() : dir_(MakeTempDir("tessera-bounds")) {
    tessera::testing::PeerTlsFlags(dir_ + "/certs", 1, 1);
  }
  ~OneNode() {
    process_.Kill();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  std::vector<std::string> Args(const std::string& data_dir) const {
    return {TESSERA_SERVER_BINARY,
            "--node-id=1",
            "--data-dir=" + data_dir,
            absl::StrCat("--initial-cluster=1=", client_.address(), "/", peer_.address()),
            "--shards=4",
            "--tick-ms=20",
            "--election-ticks=5",
            "--metrics-listen=127.0.0.1:0",
            "--port-file=" + dir_ + "/ports",
            "--peer-cert=" + dir_ + "/certs/node-1.crt",
            "--peer-key=" + dir_ + "/certs/node-1.key",
            "--peer-ca=" + dir_ + "/certs/ca.crt"};
  }
  void Start(int file_limit = 0) { process_.Start(Args(dir_ + "/data"), log(), file_limit); }

  // A client of this node whose first put has succeeded (so its one
  // connection is open), or an error after `timeout`.
  absl::StatusOr<std::unique_ptr<client::Client>> ReadyClient(absl::Duration timeout) const {
    client::ClientOptions options;
    options.endpoints = {client_.address()};
    options.attempt_timeout = absl::Seconds(1);
    absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Create(options);
    if (!c.ok()) return c.status();
    client::CallOptions call;
    call.timeout = timeout;
    absl::StatusOr<client::PutResult> put = (*c)->Put("ready", "1", call);
    if (!put.ok()) return put.status();
    return c;
  }

  // The metrics port from the port file (0 until it is written).
  int MetricsPort() const {
    std::ifstream in(dir_ + "/ports");
    for (std::string line; std::getline(in, line);) {
      int port = 0;
      if (line.rfind("metrics_port=", 0) == 0 && absl::SimpleAtoi(line.substr(13), &port)) {
        return port;
      }
    }
    return 0;
  }

  const std::string& dir() const { return dir_; }
  std::string log() const { return dir_ + "/log"; }
  const PortReservation& client_port() const { return client_; }
  ChildProcess& process() { return process_; }

 private:
  const std::string dir_;
  PortReservation client_;
  PortReservation peer_;
  ChildProcess process_;
};

sockaddr_in Loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

// GET http://127.0.0.1:port/path (HTTP/1.0); the body, or "" on failure.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr = Loopback(port);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\n\r\n");
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buf[8192];
      for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) response.append(buf, n);
    }
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

// The value of the sample `series` (name{labels}) in a /metrics text, or -1.
double Sample(const std::string& text, const std::string& series) {
  const size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  const size_t from = at + series.size() + 2;
  double value = -1;
  if (!absl::SimpleAtod(text.substr(from, text.find('\n', from) - from), &value)) return -1;
  return value;
}

// Whether the server has closed (reset) a flood connection.
bool ClosedByServer(int fd) {
  pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLERR | POLLHUP)) return true;
  char c;
  const ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

// Issue 12 defect 5: 22,000 idle connections used up the file limit; RocksDB
// could not open a WAL, the raft loop stopped, and the node never accepted a
// connection again. Here the server runs with a file limit of 256 and gets
// 512 idle connections.
TEST(ResourceBounds, ConnectionFloodIsRefusedAtAcceptAndTheNodeKeepsServing) {
  constexpr int kFileLimit = 256;
  constexpr int kFlood = 2 * kFileLimit;
  // This test holds the flood's sockets itself.
  rlimit own;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &own), 0);
  if (own.rlim_cur < own.rlim_max) {
    own.rlim_cur = own.rlim_max;
    setrlimit(RLIMIT_NOFILE, &own);
  }
  ASSERT_GE(own.rlim_cur, static_cast<rlim_t>(kFlood + 256)) << "the test's own file limit";

  OneNode node;
  node.Start(kFileLimit);
  absl::StatusOr<std::unique_ptr<client::Client>> before = node.ReadyClient(absl::Seconds(30));
  ASSERT_THAT(before, IsOk()) << Tail(node.log(), 30);
  const int metrics_port = node.MetricsPort();
  ASSERT_GT(metrics_port, 0);
  double cap = Sample(HttpGet(metrics_port, "/metrics"),
                      "tessera_grpc_server_max_connections{port=\"client\"}");
  EXPECT_GT(cap, 0) << "no connection cap on the client port";
  EXPECT_LT(cap, kFileLimit);
  if (cap <= 0) cap = kFileLimit;  // carry on: show what the flood does

  // The flood: idle connections that never send a byte.
  std::vector<int> flood;
  const sockaddr_in addr = Loopback(node.client_port().port());
  for (int i = 0; i < kFlood; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0) << "socket " << i;
    if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
      ASSERT_EQ(errno, EINPROGRESS) << "connect " << i;
    }
    flood.push_back(fd);
  }
  // All but at most `cap` of them are refused at accept (closed by the server).
  const int must_refuse = kFlood - static_cast<int>(cap);
  int refused = 0;
  std::vector<bool> closed(flood.size(), false);
  for (absl::Time deadline = absl::Now() + absl::Seconds(30);
       refused < must_refuse && absl::Now() < deadline;) {
    for (size_t i = 0; i < flood.size(); ++i) {
      if (!closed[i] && ClosedByServer(flood[i])) {
        closed[i] = true;
        ++refused;
      }
    }
    if (refused < must_refuse) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_GE(refused, must_refuse) << Tail(node.log(), 20);
  const std::string metrics = HttpGet(metrics_port, "/metrics");
  EXPECT_GE(Sample(metrics, "tessera_grpc_server_refused_connections_total{port=\"client\"}"),
            must_refuse);
  EXPECT_LE(Sample(metrics, "tessera_grpc_server_open_connections{port=\"client\"}"), cap);

  // During the flood storage keeps working: 40 MiB of puts through the
  // connection opened before it fill the raft log's 32 MiB memtable, so
  // RocksDB flushes and opens a new WAL and SST files.
  const std::string value(1 << 20, 'v');
  client::CallOptions call;
  call.timeout = absl::Seconds(30);
  for (int i = 0; i < 40; ++i) {
    ASSERT_THAT((*before)->Put(absl::StrCat("during-", i), value, call).status(), IsOk())
        << "put " << i << "\n"
        << Tail(node.log(), 20);
  }
  EXPECT_TRUE(node.process().running());

  // After the flood a new client connects and reads and writes.
  for (int fd : flood) close(fd);
  absl::StatusOr<std::unique_ptr<client::Client>> after = node.ReadyClient(absl::Seconds(30));
  ASSERT_THAT(after, IsOk()) << Tail(node.log(), 20);
  ASSERT_THAT((*after)->Put("after", "ok", call).status(), IsOk());
  absl::StatusOr<client::KeyValue> got = (*after)->Get("during-39", call);
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->value, value);
  EXPECT_THAT(Tail(node.log(), 1000), ::testing::Not(HasSubstr("Too many open files")));

  node.process().Signal(SIGTERM);
  EXPECT_EQ(node.process().Wait(absl::Seconds(30)), 0) << Tail(node.log(), 20);
}

// Issue 12 defect 8: a second tessera-server with the same node id (another
// data dir) started silently on a running node's ports (SO_REUSEPORT), and
// half the calls went to it.
TEST(ResourceBounds, DuplicateServerOnTheSamePortsFailsToStart) {
  OneNode node;
  node.Start();
  absl::StatusOr<std::unique_ptr<client::Client>> first = node.ReadyClient(absl::Seconds(30));
  ASSERT_THAT(first, IsOk()) << Tail(node.log(), 30);

  const std::string duplicate_log = node.dir() + "/duplicate.log";
  std::vector<std::string> args = node.Args(node.dir() + "/duplicate-data");
  for (std::string& arg : args) {
    if (arg.rfind("--port-file=", 0) == 0) arg = "--port-file=" + node.dir() + "/duplicate-ports";
  }
  ChildProcess duplicate;
  duplicate.Start(args, duplicate_log);
  EXPECT_EQ(duplicate.Wait(absl::Seconds(30)), 1) << Tail(duplicate_log, 20);
  EXPECT_THAT(Tail(duplicate_log, 5), HasSubstr("address in use"));

  // The first keeps serving, every call.
  client::CallOptions call;
  call.timeout = absl::Seconds(10);
  for (int i = 0; i < 20; ++i) {
    ASSERT_THAT((*first)->Put(absl::StrCat("k", i), "v", call).status(), IsOk());
    ASSERT_THAT((*first)->Get(absl::StrCat("k", i), call).status(), IsOk());
  }
  node.process().Signal(SIGTERM);
  EXPECT_EQ(node.process().Wait(absl::Seconds(30)), 0) << Tail(node.log(), 20);
}

// Issue 12 defect 9: 20,000 calls to random "/tessera.v1.KV/X..." method
// names grew /metrics from 39 KB to 48 MB for good.
TEST(ResourceBounds, RandomMethodNamesDoNotGrowMetrics) {
  OneNode node;
  node.Start();
  absl::StatusOr<std::unique_ptr<client::Client>> c = node.ReadyClient(absl::Seconds(30));
  ASSERT_THAT(c, IsOk()) << Tail(node.log(), 30);
  const int metrics_port = node.MetricsPort();
  ASSERT_GT(metrics_port, 0);
  grpc::GenericStub stub(
      grpc::CreateChannel(node.client_port().address(), grpc::InsecureChannelCredentials()));
  auto call = [&stub](const std::string& method) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    grpc::Slice empty("");
    grpc::ByteBuffer in(&empty, 1);
    grpc::ByteBuffer out;
    absl::Notification done;
    grpc::StatusCode code = grpc::StatusCode::OK;
    stub.UnaryCall(&context, method, grpc::StubOptions(), &in, &out, [&](grpc::Status s) {
      code = s.error_code();
      done.Notify();
    });
    done.WaitForNotification();
    return code;
  };
  ASSERT_EQ(call("/tessera.v1.KV/X0"), grpc::StatusCode::UNIMPLEMENTED);
  // The scheduler asks every member (here: this node) for Cluster.NodeStatus
  // twice a second; its series appear at its first round, which may come
  // after the first scrape. Created here first, so that only unknown
  // methods could grow the page.
  ASSERT_EQ(call("/tessera.v1.Cluster/NodeStatus"), grpc::StatusCode::OK);
  const size_t before = HttpGet(metrics_port, "/metrics").size();
  for (int i = 1; i <= 500; ++i) {
    ASSERT_EQ(call(absl::StrCat("/tessera.v1.KV/X", i)), grpc::StatusCode::UNIMPLEMENTED);
  }
  const std::string after = HttpGet(metrics_port, "/metrics");
  // Counters and gauges change digits, not series.
  EXPECT_LT(after.size(), before + 2048) << "grew from " << before;
  EXPECT_EQ(Sample(after,
                   "tessera_grpc_server_handled_total{grpc_code=\"UNIMPLEMENTED\","
                   "grpc_method=\"unknown\",grpc_service=\"unknown\"}"),
            501);
  node.process().Signal(SIGTERM);
  EXPECT_EQ(node.process().Wait(absl::Seconds(30)), 0) << Tail(node.log(), 20);
}

}  // namespace
}  // namespace tessera::server
