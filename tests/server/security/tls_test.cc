// The client port's TLS and the reloading of certificates (issue
// "security"): what a server built from TlsCredentials accepts and refuses,
// and that new certificate files are used without a restart. Real gRPC on
// 127.0.0.1, certificates from deploy/gen-certs.sh.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "server/observability/grpc_log.h"
#include "server/security/tls.h"
#include "server/transport/grpc_server.h"
#include "tessera/kv.grpc.pb.h"
#include "tests/testing/process.h"

namespace tessera::server {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::MakeTempDir;
using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(30);

void GenCerts(const std::string& dir, const std::string& what, const std::string& env = "") {
  const std::string command =
      absl::StrCat(env, " ", TESSERA_SOURCE_DIR, "/deploy/gen-certs.sh '", dir, "' ", what);
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
}

// Certificates made once per test binary: the cluster CA with members 1-2,
// user "alice" and an expired user "old"; another CA with a member 1 and a
// user "alice" of its own.
struct Certs {
  std::string dir = MakeTempDir("tessera-tls-certs");
  std::string other = MakeTempDir("tessera-tls-other-ca");
  Certs() {
    GenCerts(dir, "1 2");
    GenCerts(dir, "--user alice");
    GenCerts(dir, "--user old", "TESSERA_CERT_DAYS=-1");
    GenCerts(other, "1");
    GenCerts(other, "--user alice");
  }
};
const Certs& TheCerts() {
  static const Certs* certs = new Certs();
  return *certs;
}

security::TlsFiles NodeFiles(const std::string& dir, uint64_t id) {
  return {.cert = absl::StrCat(dir, "/node-", id, ".crt"),
          .key = absl::StrCat(dir, "/node-", id, ".key"),
          .ca = absl::StrCat(dir, "/ca.crt")};
}

std::string Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Replaces `to` by renaming a copy of `from` into place, as a rotation should.
void Replace(const std::string& from, const std::string& to) {
  std::filesystem::copy_file(from, to + ".new", std::filesystem::copy_options::overwrite_existing);
  std::filesystem::rename(to + ".new", to);
}

// Cluster.NodeStatus answers with the common name of the caller's verified
// certificate in `epoch`'s place: 1 for "alice", 0 for none.
class WhoAmI final : public v1::Cluster::Service {
 public:
  grpc::Status NodeStatus(grpc::ServerContext* context, const v1::NodeStatusRequest*,
                          v1::NodeStatusResponse* response) override {
    std::optional<std::string> name = security::CertifiedName(*context->auth_context());
    response->set_node_id(name == "alice" ? 1 : 0);
    return grpc::Status::OK;
  }
};

// A client port served with `credentials` (ClientCertificates::kOptional).
class TlsServer {
 public:
  explicit TlsServer(const security::TlsCredentials& credentials) {
    GrpcServerOptions options;
    options.address = "127.0.0.1:0";
    options.services = {&service_};
    options.credentials = credentials.server(security::ClientCertificates::kOptional);
    options.name = "client";
    absl::StatusOr<std::unique_ptr<GrpcServer>> started = StartGrpcServer(std::move(options));
    EXPECT_THAT(started, IsOk());
    if (started.ok()) server_ = *std::move(started);
  }
  ~TlsServer() {
    if (server_) server_->Shutdown();
  }
  std::string address() const { return absl::StrCat("127.0.0.1:", server_->port()); }

 private:
  WhoAmI service_;
  std::unique_ptr<GrpcServer> server_;
};

// What a client with these files gets from one call (a fresh connection).
absl::StatusOr<uint64_t> Call(const std::string& address, const std::string& ca,
                              const std::string& cert = "", const std::string& key = "") {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!ca.empty()) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = Read(ca);
    if (!cert.empty()) {
      options.pem_cert_chain = Read(cert);
      options.pem_private_key = Read(key);
    }
    credentials = grpc::SslCredentials(options);
  }
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a new connection per call
  auto stub = v1::Cluster::NewStub(grpc::CreateCustomChannel(address, credentials, args));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::NodeStatusResponse response;
  grpc::Status s = stub->NodeStatus(&context, {}, &response);
  if (!s.ok()) return absl::UnavailableError(s.error_message());
  return response.node_id();
}

security::TlsCredentials Load(const security::TlsFiles& files, uint64_t id) {
  absl::StatusOr<security::TlsCredentials> c = security::TlsCredentials::Load(files, id, "--tls");
  EXPECT_THAT(c, IsOk());
  return c.ok() ? *std::move(c) : security::TlsCredentials::Insecure();
}

// Waits (bounded) until gRPC has reported more failed handshakes than `before`.
bool HandshakeFailuresAbove(uint64_t before) {
  const absl::Time until = absl::Now() + kWait;
  while (TlsHandshakeFailures() <= before && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  return TlsHandshakeFailures() > before;
}

TEST(ClientTls, ErrorsNameTheClientPortFlags) {
  const Certs& c = TheCerts();
  EXPECT_THAT(security::TlsCredentials::Load(NodeFiles(c.dir, 1), 2, "--tls"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--tls-cert")));
  security::TlsFiles wrong_ca = NodeFiles(c.dir, 1);
  wrong_ca.ca = c.other + "/ca.crt";
  EXPECT_THAT(security::TlsCredentials::Load(wrong_ca, 1, "--tls"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not valid under --tls-ca")));
}

TEST(ClientTls, PlaintextIsRefusedAndCounted) {
  const Certs& c = TheCerts();
  TlsServer server(Load(NodeFiles(c.dir, 1), 1));
  const uint64_t before = TlsHandshakeFailures();
  EXPECT_THAT(Call(server.address(), /*ca=*/""), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(HandshakeFailuresAbove(before));
  // A TLS client that trusts the CA gets in, without a certificate of its own.
  EXPECT_THAT(Call(server.address(), c.dir + "/ca.crt"), IsOk());
}

TEST(ClientTls, TheVerifiedCertificateNamesTheUser) {
  const Certs& c = TheCerts();
  TlsServer server(Load(NodeFiles(c.dir, 1), 1));
  absl::StatusOr<uint64_t> alice = Call(server.address(), c.dir + "/ca.crt",
                                        c.dir + "/user-alice.crt", c.dir + "/user-alice.key");
  ASSERT_THAT(alice, IsOk());
  EXPECT_EQ(*alice, 1u);
  absl::StatusOr<uint64_t> nobody = Call(server.address(), c.dir + "/ca.crt");
  ASSERT_THAT(nobody, IsOk());
  EXPECT_EQ(*nobody, 0u);
}

TEST(ClientTls, ACertificateOfAnotherCaIsRefused) {
  const Certs& c = TheCerts();
  TlsServer server(Load(NodeFiles(c.dir, 1), 1));
  EXPECT_THAT(Call(server.address(), c.dir + "/ca.crt", c.other + "/user-alice.crt",
                   c.other + "/user-alice.key"),
              StatusIs(absl::StatusCode::kUnavailable));
  // Nor does a client that trusts only the other CA accept this server.
  EXPECT_THAT(Call(server.address(), c.other + "/ca.crt"),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST(ClientTls, AnExpiredCertificateIsRefused) {
  const Certs& c = TheCerts();
  TlsServer server(Load(NodeFiles(c.dir, 1), 1));
  EXPECT_THAT(
      Call(server.address(), c.dir + "/ca.crt", c.dir + "/user-old.crt", c.dir + "/user-old.key"),
      StatusIs(absl::StatusCode::kUnavailable));
}

TEST(ClientTls, ARotatedCertificateIsUsedWithoutARestart) {
  const Certs& c = TheCerts();
  // The server's files are copies, rotated below to a member 1 certificate of
  // the other CA, with both CAs trusted during the change.
  const std::string live = MakeTempDir("tessera-tls-live");
  security::TlsFiles files = NodeFiles(live, 1);
  Replace(c.dir + "/node-1.crt", files.cert);
  Replace(c.dir + "/node-1.key", files.key);
  Replace(c.dir + "/ca.crt", files.ca);
  security::TlsCredentials credentials = Load(files, 1);
  TlsServer server(credentials);
  ASSERT_THAT(Call(server.address(), c.dir + "/ca.crt"), IsOk());
  ASSERT_THAT(Call(server.address(), c.other + "/ca.crt"),
              StatusIs(absl::StatusCode::kUnavailable));

  {
    std::ofstream both(live + "/both.crt");
    both << Read(c.dir + "/ca.crt") << Read(c.other + "/ca.crt");
  }
  Replace(live + "/both.crt", files.ca);
  Replace(c.other + "/node-1.key", files.key);
  Replace(c.other + "/node-1.crt", files.cert);
  EXPECT_THAT(credentials.Recheck(), IsOk());
  // gRPC re-reads the files every TlsCredentials::kReloadSeconds; the new
  // certificate is served to new connections without a restart.
  const absl::Time until = absl::Now() + kWait;
  while (!Call(server.address(), c.other + "/ca.crt").ok() && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_THAT(Call(server.address(), c.other + "/ca.crt"), IsOk());
  EXPECT_THAT(Call(server.address(), c.dir + "/ca.crt"), StatusIs(absl::StatusCode::kUnavailable));
  // Client certificates of both CAs are accepted now.
  EXPECT_THAT(Call(server.address(), c.other + "/ca.crt", c.other + "/user-alice.crt",
                   c.other + "/user-alice.key"),
              IsOk());
  EXPECT_THAT(Call(server.address(), c.other + "/ca.crt", c.dir + "/user-alice.crt",
                   c.dir + "/user-alice.key"),
              IsOk());

  // A broken rotation is reported by Recheck (tessera-server's SIGHUP).
  Replace(c.dir + "/node-2.key", files.key);
  EXPECT_THAT(credentials.Recheck(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("does not match")));
  std::filesystem::remove_all(live);
}

}  // namespace
}  // namespace tessera::server

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  tessera::server::RouteGrpcCoreLogs();
  return RUN_ALL_TESTS();
}
