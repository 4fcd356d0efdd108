// Tests of server/grpc_server.h: our own listening socket (no port sharing),
// the per-port connection cap, TLS through the external connection
// acceptor, and the file-descriptor budget.
#include "server/transport/grpc_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tessera/kv.grpc.pb.h"
#include "tests/testing/process.h"
#include "tests/testing/wait.h"

namespace tessera::server {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

// Every KV method answers UNIMPLEMENTED: a call that gets that answer went
// through a served connection.
class EmptyKv final : public v1::KV::CallbackService {};

GrpcServerOptions Options(grpc::Service* service, const std::string& address = "127.0.0.1:0") {
  GrpcServerOptions options;
  options.address = address;
  options.services = {service};
  options.sweep_interval = absl::Milliseconds(50);
  return options;
}

// One Get with a fresh channel (its own connection); the gRPC code.
grpc::StatusCode CallOnce(
    const std::string& target,
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials(),
    absl::Duration timeout = absl::Seconds(5)) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = v1::KV::NewStub(grpc::CreateCustomChannel(target, credentials, args));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  v1::GetResponse response;
  return stub->Get(&context, v1::GetRequest(), &response).error_code();
}

int ConnectIdle(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

using ::tessera::testing::WaitFor;

TEST(StartGrpcServer, RejectsBadAddresses) {
  EmptyKv kv;
  EXPECT_THAT(StartGrpcServer(Options(&kv, "nonsense")).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(StartGrpcServer(Options(&kv, "256.256.256.256:1")).status(),
              StatusIs(absl::StatusCode::kUnavailable));
  GrpcServerOptions zero = Options(&kv);
  zero.max_connections = 0;
  EXPECT_THAT(StartGrpcServer(std::move(zero)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// Issue 12 defect 8: gRPC's SO_REUSEPORT let two servers listen on one port.
TEST(StartGrpcServer, SecondListenerOnTheSamePortFailsWithAddressInUse) {
  EmptyKv kv;
  absl::StatusOr<std::unique_ptr<GrpcServer>> first = StartGrpcServer(Options(&kv));
  ASSERT_THAT(first, IsOk());
  const std::string address = absl::StrCat("127.0.0.1:", (*first)->port());
  EmptyKv other;
  absl::StatusOr<std::unique_ptr<GrpcServer>> second = StartGrpcServer(Options(&other, address));
  EXPECT_THAT(second.status(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("address in use"));
  EXPECT_EQ(CallOnce(address), grpc::StatusCode::UNIMPLEMENTED);
  // A port reserved by the test harness (SO_REUSEADDR, not listening) can
  // be listened on, and a restart gets it back.
  ::tessera::testing::PortReservation reserved;
  for (int round = 0; round < 2; ++round) {
    absl::StatusOr<std::unique_ptr<GrpcServer>> s =
        StartGrpcServer(Options(&other, reserved.address()));
    ASSERT_THAT(s, IsOk()) << "round " << round;
    EXPECT_EQ(CallOnce(reserved.address()), grpc::StatusCode::UNIMPLEMENTED);
  }
}

// Issue 12 defect 5: idle connections used up the file limit.
TEST(StartGrpcServer, RefusesConnectionsBeyondTheCapUntilOthersClose) {
  EmptyKv kv;
  GrpcServerOptions options = Options(&kv);
  options.max_connections = 3;
  uint64_t reported_open = 0, reported_refused = 0;
  options.on_connections = [&](uint64_t open, uint64_t refused) {
    reported_open = open;  // the accept thread only
    reported_refused = refused;
  };
  absl::StatusOr<std::unique_ptr<GrpcServer>> server = StartGrpcServer(std::move(options));
  ASSERT_THAT(server, IsOk());
  GrpcServer& s = **server;
  const std::string address = absl::StrCat("127.0.0.1:", s.port());

  std::vector<int> idle;
  for (int i = 0; i < 10; ++i) {
    idle.push_back(ConnectIdle(s.port()));
    ASSERT_GE(idle.back(), 0);
  }
  ASSERT_TRUE(WaitFor([&] { return s.stats().accepted == 10; }));
  EXPECT_EQ(s.stats().open, 3u);
  EXPECT_EQ(s.stats().refused, 7u);
  // Refused ones are reset at once; the others stay open (gRPC sends its
  // HTTP/2 settings on them).
  int reset = 0;
  for (int fd : idle) {
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    char buf[64];
    if (poll(&p, 1, 1000) > 0 && recv(fd, buf, sizeof(buf), MSG_DONTWAIT) <= 0) ++reset;
  }
  EXPECT_EQ(reset, 7);
  // At the cap a real client is refused too...
  EXPECT_NE(CallOnce(address, grpc::InsecureChannelCredentials(), absl::Milliseconds(500)),
            grpc::StatusCode::UNIMPLEMENTED);
  // ...and served once the idle connections close.
  for (int fd : idle) close(fd);
  ASSERT_TRUE(WaitFor([&] { return s.stats().open == 0; })) << s.stats().open;
  EXPECT_EQ(CallOnce(address), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_GE(s.stats().refused, 8u);
  s.Shutdown();
  EXPECT_EQ(reported_open, s.stats().open);
  EXPECT_EQ(reported_refused, s.stats().refused);
}

// The lead's peer TLS passes SslServerCredentials: the handshake runs in gRPC
// over the connections our accept thread hands over.
TEST(StartGrpcServer, ServesTlsThroughTheExternalAcceptor) {
  const std::string dir = ::tessera::testing::MakeTempDir("tessera-grpc-tls");
  const std::string command = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "
      "subjectAltName=IP:127.0.0.1 -keyout ",
      dir, "/key.pem -out ", dir, "/cert.pem >", dir, "/openssl.log 2>&1");
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  auto read = [](const std::string& path) {
    std::ifstream in(path);
    std::stringstream out;
    out << in.rdbuf();
    return out.str();
  };
  const std::string key = read(dir + "/key.pem");
  const std::string cert = read(dir + "/cert.pem");
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({key, cert});
  EmptyKv kv;
  GrpcServerOptions options = Options(&kv);
  options.credentials = grpc::SslServerCredentials(ssl);
  absl::StatusOr<std::unique_ptr<GrpcServer>> server = StartGrpcServer(std::move(options));
  ASSERT_THAT(server, IsOk());
  const std::string address = absl::StrCat("127.0.0.1:", (*server)->port());
  grpc::SslCredentialsOptions client;
  client.pem_root_certs = cert;
  EXPECT_EQ(CallOnce(address, grpc::SslCredentials(client)), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(CallOnce(address, grpc::InsecureChannelCredentials(), absl::Seconds(1)),
            grpc::StatusCode::UNAVAILABLE);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}

TEST(PlanFdBudget, SplitsTheFileLimit) {
  absl::StatusOr<FdBudget> small = PlanFdBudget(256, 0, 0);
  ASSERT_THAT(small, IsOk());
  EXPECT_EQ(small->storage_max_open_files, 64);
  EXPECT_EQ(small->reserved, 144u);
  EXPECT_EQ(small->max_peer_connections, 8u);
  EXPECT_EQ(small->max_client_connections, 40u);

  absl::StatusOr<FdBudget> usual = PlanFdBudget(20000, 0, 0);
  ASSERT_THAT(usual, IsOk());
  EXPECT_EQ(usual->storage_max_open_files, 4096);
  EXPECT_EQ(usual->max_peer_connections, 1024u);
  EXPECT_EQ(usual->max_client_connections, 20000u - 4096 - (128 + 1250) - 1024);

  absl::StatusOr<FdBudget> huge = PlanFdBudget(uint64_t{1} << 20, 0, 0);
  ASSERT_THAT(huge, IsOk());
  EXPECT_EQ(huge->max_client_connections, 65536u);

  absl::StatusOr<FdBudget> explicit_caps = PlanFdBudget(20000, 100, 10);
  ASSERT_THAT(explicit_caps, IsOk());
  EXPECT_EQ(explicit_caps->max_client_connections, 100u);
  EXPECT_EQ(explicit_caps->max_peer_connections, 10u);

  EXPECT_THAT(PlanFdBudget(20000, 19000, 0).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(PlanFdBudget(128, 0, 0).status(), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace tessera::server
