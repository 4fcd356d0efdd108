// The peer port's defences (issue "hardening"): mutual TLS with a cluster CA
// and the member id a certificate names, the data directory's identity and
// the incarnations peers remember, and the bounds on inbound snapshots.
// Real gRPC on 127.0.0.1, certificates from deploy/gen-certs.sh.
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "server/security/data_dir_identity.h"
#include "server/security/peer_registry.h"
#include "server/security/tls.h"
#include "server/transport/grpc_server.h"
#include "server/transport/grpc_transport.h"
#include "storage/engine.h"
#include "tests/testing/process.h"

namespace tessera::server {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::MakeTempDir;
using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(20);

// Certificates for members 1-3, made once per test binary.
const std::string& CertDir() {
  static const std::string* dir = [] {
    auto* d = new std::string(MakeTempDir("tessera-peer-certs"));
    tessera::testing::PeerTlsFlags(*d, 3, 1);
    return d;
  }();
  return *dir;
}

security::TlsFiles FilesOf(uint64_t id, const std::string& dir = CertDir()) {
  return {.cert = absl::StrCat(dir, "/node-", id, ".crt"),
          .key = absl::StrCat(dir, "/node-", id, ".key"),
          .ca = absl::StrCat(dir, "/ca.crt")};
}

security::TlsCredentials CredentialsOf(uint64_t id) {
  absl::StatusOr<security::TlsCredentials> c = security::TlsCredentials::Load(FilesOf(id), id);
  EXPECT_THAT(c, IsOk());
  return c.ok() ? *std::move(c) : security::TlsCredentials::Insecure();
}

// ---------------------------------------------------------------- credentials

TEST(TlsCredentials, LoadsMatchingFiles) {
  absl::StatusOr<security::TlsCredentials> c = security::TlsCredentials::Load(FilesOf(2), 2);
  ASSERT_THAT(c, IsOk());
  EXPECT_TRUE(c->secure());
}

TEST(TlsCredentials, RefusesACertificateOfAnotherMember) {
  EXPECT_THAT(
      security::TlsCredentials::Load(FilesOf(2), 3),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("names 'node-2', not 'node-3'")));
}

TEST(TlsCredentials, RefusesAKeyOfAnotherCertificate) {
  security::TlsFiles files = FilesOf(2);
  files.key = FilesOf(3).key;
  EXPECT_THAT(security::TlsCredentials::Load(files, 2),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("does not match")));
}

TEST(TlsCredentials, RefusesACertificateOfAnotherCa) {
  const std::string other = MakeTempDir("tessera-other-ca");
  tessera::testing::PeerTlsFlags(other, 2, 2);
  security::TlsFiles files = FilesOf(2, other);
  files.ca = FilesOf(2).ca;
  EXPECT_THAT(security::TlsCredentials::Load(files, 2),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is not valid under")));
  std::filesystem::remove_all(other);
}

TEST(TlsCredentials, RefusesMissingFiles) {
  security::TlsFiles files = FilesOf(2);
  files.ca = "/nonexistent/ca.crt";
  EXPECT_THAT(security::TlsCredentials::Load(files, 2),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cannot read --peer-ca")));
}

// ---------------------------------------------------------------- identity

TEST(DataDirIdentity, IsCreatedOnceAndKept) {
  const std::string dir = MakeTempDir("tessera-identity");
  absl::StatusOr<security::DataDirIdentity> first = security::LoadOrCreateIdentity(dir, 7, 4);
  ASSERT_THAT(first, IsOk());
  EXPECT_TRUE(first->created);
  EXPECT_NE(first->incarnation, 0u);
  absl::StatusOr<security::DataDirIdentity> again = security::LoadOrCreateIdentity(dir, 7, 4);
  ASSERT_THAT(again, IsOk());
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->incarnation, first->incarnation);
  std::filesystem::remove_all(dir);
}

TEST(DataDirIdentity, RefusesTheDirectoryOfAnotherNode) {
  const std::string dir = MakeTempDir("tessera-identity");
  ASSERT_THAT(security::LoadOrCreateIdentity(dir, 7, 2), IsOk());
  EXPECT_THAT(security::LoadOrCreateIdentity(dir, 7, 3),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("belongs to node 2")));
  std::filesystem::remove_all(dir);
}

TEST(DataDirIdentity, RefusesTheDirectoryOfAnotherCluster) {
  const std::string dir = MakeTempDir("tessera-identity");
  ASSERT_THAT(security::LoadOrCreateIdentity(dir, 7, 2), IsOk());
  EXPECT_THAT(security::LoadOrCreateIdentity(dir, 8, 2),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("another cluster")));
  std::filesystem::remove_all(dir);
}

TEST(DataDirIdentity, RefusesAMalformedFile) {
  const std::string dir = MakeTempDir("tessera-identity");
  std::ofstream(dir + "/TESSERA-IDENTITY") << "garbage\n";
  EXPECT_THAT(security::LoadOrCreateIdentity(dir, 7, 2), StatusIs(absl::StatusCode::kDataLoss));
  std::filesystem::remove_all(dir);
}

TEST(PeerRegistry, RemembersIncarnationsAcrossRestarts) {
  const std::string dir = MakeTempDir("tessera-registry");
  {
    absl::StatusOr<std::unique_ptr<security::PeerRegistry>> r = security::PeerRegistry::Open(dir);
    ASSERT_THAT(r, IsOk());
    EXPECT_THAT((*r)->Admit(2, 77), IsOk());
    EXPECT_THAT((*r)->Admit(2, 77), IsOk());
    EXPECT_THAT((*r)->Admit(3, 88), IsOk());
  }
  absl::StatusOr<std::unique_ptr<security::PeerRegistry>> r = security::PeerRegistry::Open(dir);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ((*r)->Known(2), 77u);
  EXPECT_EQ((*r)->Known(3), 88u);
  EXPECT_EQ((*r)->Known(4), 0u);
  EXPECT_THAT((*r)->Admit(2, 78),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("its data is gone")));
  EXPECT_THAT((*r)->Admit(5, 0), StatusIs(absl::StatusCode::kFailedPrecondition));
  std::filesystem::remove_all(dir);
}

// ---------------------------------------------------------------- the peer service

// Collects deliveries and refusals of one PeerService. Thread-safe.
class Inbox {
 public:
  MessageHandler Handler() {
    return [this](NodeId from, std::vector<ShardMessage> messages) {
      absl::MutexLock lock(&mu_);
      for (ShardMessage& m : messages) received_.push_back({from, std::move(m)});
    };
  }
  std::function<void(const char*)> Refusals() {
    return [this](const char* reason) {
      absl::MutexLock lock(&mu_);
      refused_.push_back(reason);
    };
  }
  size_t WaitForMessages(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return received_.size() >= n; };
    mu_.AwaitWithTimeout(absl::Condition(&enough), kWait);
    return received_.size();
  }
  // Waits until `reason` was counted; returns whether it was.
  bool WaitForRefusal(const std::string& reason) {
    absl::MutexLock lock(&mu_);
    auto seen = [this, &reason]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return std::find(refused_.begin(), refused_.end(), reason) != refused_.end();
    };
    return mu_.AwaitWithTimeout(absl::Condition(&seen), kWait);
  }
  size_t messages() {
    absl::MutexLock lock(&mu_);
    return received_.size();
  }
  std::vector<std::pair<NodeId, ShardMessage>> Take() {
    absl::MutexLock lock(&mu_);
    return std::move(received_);
  }

 private:
  absl::Mutex mu_;
  std::vector<std::pair<NodeId, ShardMessage>> received_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> refused_ ABSL_GUARDED_BY(mu_);
};

// Member `id`'s receiving side with peer TLS, as tessera-server runs it.
struct SecureReceiver {
  explicit SecureReceiver(NodeId id, PeerServiceOptions extra = {})
      : credentials(CredentialsOf(id)), spool(MakeTempDir("tessera-spool")) {
    extra.self = id;
    extra.require_certified_sender = true;
    extra.registry = &registry;
    absl::StatusOr<std::unique_ptr<storage::Engine>> opened =
        storage::Engine::Open(spool + "/db", {});
    EXPECT_THAT(opened, IsOk());
    if (opened.ok()) engine = *std::move(opened);
    exchange = std::make_unique<SnapshotExchange>(&engine->kv_store());
    extra.snapshots = exchange.get();
    extra.on_refused = inbox.Refusals();
    service = std::make_unique<PeerService>(std::move(extra), inbox.Handler());
    GrpcServerOptions options;
    options.address = "127.0.0.1:0";
    options.services = {service.get()};
    options.max_receive_bytes = 64 << 20;
    options.credentials = credentials.server();
    options.name = "peer";
    absl::StatusOr<std::unique_ptr<GrpcServer>> s = StartGrpcServer(std::move(options));
    EXPECT_THAT(s, IsOk());
    if (s.ok()) started = *std::move(s);
  }
  ~SecureReceiver() {
    if (started) started->Shutdown();
    service.reset();
    exchange.reset();
    engine.reset();
    std::filesystem::remove_all(spool);
  }
  // Files staged and not yet committed.
  bool StagingEmpty() const { return std::filesystem::is_empty(spool + "/db/snapshot-staging"); }
  std::string address() const { return absl::StrCat("127.0.0.1:", started->port()); }

  security::TlsCredentials credentials;
  std::string spool;  // the engine's directory
  std::unique_ptr<storage::Engine> engine;
  std::unique_ptr<SnapshotExchange> exchange;
  security::PeerRegistry registry;
  Inbox inbox;
  std::unique_ptr<PeerService> service;
  std::unique_ptr<GrpcServer> started;
};

ShardMessage Heartbeat(ShardId shard, uint64_t from, uint64_t to) {
  ShardMessage m;
  m.shard = shard;
  m.message.set_type(raftpb::MSG_HEARTBEAT);
  m.message.set_term(1);
  m.message.set_from(from);
  m.message.set_to(to);
  return m;
}

// A raw Peer stub to member `to` presenting `as`'s certificate (0: no
// certificate at all, plaintext).
std::unique_ptr<peerpb::Peer::Stub> RawStub(const std::string& address, NodeId as, NodeId to) {
  if (as == 0) {
    return peerpb::Peer::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  }
  security::TlsCredentials c = CredentialsOf(as);
  grpc::ChannelArguments args;
  c.ConfigureChannelTo(to, &args);
  return peerpb::Peer::NewStub(grpc::CreateCustomChannel(address, c.channel(), args));
}

// Sends one batch on a raw stream; returns how the receiver ended the call.
grpc::Status SendRawBatch(peerpb::Peer::Stub& stub, const peerpb::MessageBatch& batch) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
  peerpb::StreamAck ack;
  std::unique_ptr<grpc::ClientWriter<peerpb::MessageBatch>> writer = stub.Stream(&context, &ack);
  if (writer->Write(batch)) writer->WritesDone();
  return writer->Finish();
}

peerpb::MessageBatch Batch(NodeId from, NodeId to, uint64_t incarnation) {
  peerpb::MessageBatch batch;
  batch.set_from_node(from);
  batch.set_to_node(to);
  batch.set_incarnation(incarnation);
  ShardMessage hb = Heartbeat(3, from, to);
  peerpb::ShardMessage* m = batch.add_messages();
  m->set_shard(hb.shard);
  *m->mutable_message() = hb.message;
  return batch;
}

TEST(PeerTls, MembersExchangeBatchesOverMutualTls) {
  SecureReceiver r2(2);
  security::TlsCredentials c1 = CredentialsOf(1);
  GrpcTransportOptions options;
  options.self = 1;
  options.incarnation = 11;
  options.credentials = &c1;
  options.peers = {{2, r2.address()}};
  options.min_backoff = absl::Milliseconds(10);
  options.max_backoff = absl::Milliseconds(100);
  GrpcTransport t1(options);
  t1.Send(2, {Heartbeat(3, 1, 2)});
  ASSERT_EQ(r2.inbox.WaitForMessages(1), 1u);
  EXPECT_EQ(r2.inbox.Take()[0].first, 1u);
  EXPECT_EQ(r2.registry.Known(1), 11u);  // recorded before delivery
}

TEST(PeerTls, ANodeWithoutACertificateDeliversNothing) {
  SecureReceiver r2(2);
  std::unique_ptr<peerpb::Peer::Stub> stub = RawStub(r2.address(), /*as=*/0, 2);
  grpc::Status s = SendRawBatch(*stub, Batch(1, 2, 5));
  EXPECT_FALSE(s.ok());  // the TLS handshake fails: UNAVAILABLE at the client
  EXPECT_EQ(r2.inbox.messages(), 0u);
  EXPECT_EQ(r2.registry.Known(1), 0u);
}

TEST(PeerTls, AUserCertificateOfTheClusterCaIsRefused) {
  // A client certificate (common name "alice") signed by the same CA passes
  // the handshake but names no member.
  const std::string dir = CertDir();
  const std::string command =
      absl::StrCat(TESSERA_SOURCE_DIR, "/deploy/gen-certs.sh '", dir, "' --user alice");
  ASSERT_EQ(std::system(command.c_str()), 0);
  SecureReceiver r2(2);
  auto read = [](const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = read(dir + "/ca.crt");
  tls.pem_cert_chain = read(dir + "/user-alice.crt");
  tls.pem_private_key = read(dir + "/user-alice.key");
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(security::MemberCertName(2));
  auto stub = peerpb::Peer::NewStub(
      grpc::CreateCustomChannel(r2.address(), grpc::SslCredentials(tls), args));
  grpc::Status s = SendRawBatch(*stub, Batch(1, 2, 5));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("names 'alice', not node-<id>"));
  EXPECT_EQ(r2.inbox.messages(), 0u);
  EXPECT_EQ(r2.registry.Known(1), 0u);
}

TEST(PeerTls, AMemberClaimingAnotherIdIsRefusedAndCounted) {
  SecureReceiver r2(2);
  std::unique_ptr<peerpb::Peer::Stub> stub = RawStub(r2.address(), /*as=*/3, 2);
  grpc::Status s = SendRawBatch(*stub, Batch(/*from=*/1, 2, 5));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("node 3 sent a batch claiming to be node 1"));
  EXPECT_TRUE(r2.inbox.WaitForRefusal("sender_mismatch"));
  EXPECT_EQ(r2.inbox.messages(), 0u);
  // Snapshots are checked the same way.
  grpc::ClientContext context;
  peerpb::SnapshotAck ack;
  std::unique_ptr<grpc::ClientWriter<peerpb::SnapshotChunk>> writer =
      stub->Snapshot(&context, &ack);
  peerpb::SnapshotChunk chunk;
  chunk.set_from_node(1);
  chunk.set_to_node(2);
  chunk.set_incarnation(5);
  chunk.mutable_message()->set_type(raftpb::MSG_SNAP);
  chunk.set_last(true);
  if (writer->Write(chunk)) writer->WritesDone();
  EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(r2.inbox.messages(), 0u);
}

// Peer.ChangeReplica (the scheduler's steps) is for members only, checked
// as batches are: the certified sender, the addressee, the request's shape;
// only then does the node see it.
TEST(PeerTls, ReplicaChangesComeOnlyFromTheMemberNamedAndAreChecked) {
  absl::Mutex mu;
  std::vector<peerpb::ReplicaChangeRequest> seen;  // guarded by mu
  PeerServiceOptions extra;
  extra.on_replica_change = [&](const peerpb::ReplicaChangeRequest& request,
                                std::function<void(absl::Status)> done) {
    {
      absl::MutexLock lock(&mu);
      seen.push_back(request);
    }
    done(absl::UnavailableError("not the leader"));
  };
  SecureReceiver r2(2, std::move(extra));
  auto ask = [&](NodeId as, peerpb::ReplicaChangeRequest request) {
    std::unique_ptr<peerpb::Peer::Stub> stub = RawStub(r2.address(), as, 2);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    peerpb::ReplicaChangeResponse response;
    return stub->ChangeReplica(&context, request, &response);
  };
  peerpb::ReplicaChangeRequest good;
  good.set_from_node(1);
  good.set_to_node(2);
  good.set_shard(3);
  raftpb::ConfChangeSingle* add = good.mutable_conf_change()->add_changes();
  add->set_type(raftpb::CONF_CHANGE_ADD_LEARNER);
  add->set_node_id(3);

  EXPECT_EQ(ask(3, good).error_code(), grpc::StatusCode::PERMISSION_DENIED);  // claims to be 1
  EXPECT_TRUE(r2.inbox.WaitForRefusal("sender_mismatch"));
  EXPECT_NE(ask(0, good).error_code(), grpc::StatusCode::OK);  // no certificate
  peerpb::ReplicaChangeRequest elsewhere = good;
  elsewhere.set_to_node(3);
  EXPECT_EQ(ask(1, elsewhere).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  peerpb::ReplicaChangeRequest empty = good;
  empty.clear_conf_change();
  EXPECT_EQ(ask(1, empty).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  peerpb::ReplicaChangeRequest zero = good;
  zero.mutable_conf_change()->mutable_changes(0)->set_node_id(0);
  EXPECT_EQ(ask(1, zero).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(r2.inbox.WaitForRefusal("bad_replica_change"));
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(seen.empty());
  }
  // The member named, asking the right node: handed over, answered as done.
  grpc::Status answered = ask(1, good);
  EXPECT_EQ(answered.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(answered.error_message(), "not the leader");
  absl::MutexLock lock(&mu);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].conf_change().changes(0).node_id(), 3u);
}

TEST(PeerTls, SnapshotsInsideBatchesAreRefused) {
  SecureReceiver r2(2);
  std::unique_ptr<peerpb::Peer::Stub> stub = RawStub(r2.address(), 1, 2);
  peerpb::MessageBatch batch = Batch(1, 2, 5);
  batch.mutable_messages(0)->mutable_message()->set_type(raftpb::MSG_SNAP);
  EXPECT_TRUE(SendRawBatch(*stub, batch).ok());
  EXPECT_TRUE(r2.inbox.WaitForRefusal("snapshot_in_batch"));
  EXPECT_EQ(r2.inbox.messages(), 0u);
}

TEST(PeerTls, AMemberUnderANewIncarnationIsRefusedAndTold) {
  SecureReceiver r2(2);
  ASSERT_THAT(r2.registry.Admit(1, 11), IsOk());  // known from its earlier data directory
  security::TlsCredentials c1 = CredentialsOf(1);
  absl::Mutex mu;
  std::vector<absl::Status> refusals;
  GrpcTransportOptions options;
  options.self = 1;
  options.incarnation = 12;  // wiped and recreated
  options.credentials = &c1;
  options.peers = {{2, r2.address()}};
  options.min_backoff = absl::Milliseconds(10);
  options.max_backoff = absl::Milliseconds(100);
  options.on_refused = [&](NodeId to, const absl::Status& why) {
    EXPECT_EQ(to, 2u);
    absl::MutexLock lock(&mu);
    refusals.push_back(why);
  };
  GrpcTransport t1(options);
  // Raft keeps sending (heartbeats); a stream learns of its refusal at the
  // write after the receiver ended it.
  auto told = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return !refusals.empty(); };
  for (int i = 0; i < 1000; ++i) {
    t1.Send(2, {Heartbeat(3, 1, 2)});
    absl::MutexLock lock(&mu);
    if (mu.AwaitWithTimeout(absl::Condition(&told), absl::Milliseconds(20))) break;
  }
  {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(told());
    EXPECT_THAT(refusals[0],
                StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("its data is gone")));
  }
  EXPECT_TRUE(r2.inbox.WaitForRefusal("replaced_member"));
  EXPECT_EQ(r2.inbox.messages(), 0u);
  // Hello tells a starting node the same before it joins.
  std::unique_ptr<peerpb::Peer::Stub> stub = RawStub(r2.address(), 1, 2);
  grpc::ClientContext context;
  peerpb::HelloRequest hello;
  hello.set_from_node(1);
  hello.set_incarnation(12);
  peerpb::HelloResponse answer;
  ASSERT_TRUE(stub->Hello(&context, hello, &answer).ok());
  EXPECT_EQ(answer.known_incarnation(), 11u);
}

// ---------------------------------------------------------------- snapshot bounds

// Opens a snapshot stream as member 1 and sends its first chunk (a MSG_SNAP
// at index 7 with its metadata, as GrpcTransport sends it).
struct SnapshotStream {
  SnapshotStream(peerpb::Peer::Stub& stub, ShardId shard) {
    writer = stub.Snapshot(&context, &ack);
    peerpb::SnapshotChunk chunk;
    chunk.set_from_node(1);
    chunk.set_to_node(2);
    chunk.set_shard(shard);
    chunk.set_incarnation(5);
    chunk.set_format(2);
    raftpb::Message* m = chunk.mutable_message();
    m->set_type(raftpb::MSG_SNAP);
    m->set_from(1);
    m->set_to(2);
    m->set_term(2);
    m->mutable_snapshot()->mutable_metadata()->set_index(7);
    m->mutable_snapshot()->mutable_metadata()->set_term(2);
    m->mutable_snapshot()->mutable_metadata()->mutable_conf_state()->add_voters(1);
    first_ok = writer->Write(chunk);
  }
  // Sends chunk `seq` with `records` (whole records, format 2).
  bool Send(uint64_t seq, const std::vector<storage::SnapshotRecord>& records, bool last = false,
            uint64_t total = 0) {
    peerpb::SnapshotChunk chunk;
    chunk.set_seq(seq);
    for (const storage::SnapshotRecord& r : records) AppendSnapshotRecord(r, chunk.mutable_data());
    chunk.set_last(last);
    chunk.set_records(total);
    return writer->Write(chunk);
  }
  grpc::Status End() {
    writer->WritesDone();
    return writer->Finish();
  }
  grpc::ClientContext context;
  peerpb::SnapshotAck ack;
  std::unique_ptr<grpc::ClientWriter<peerpb::SnapshotChunk>> writer;
  bool first_ok = false;
};

TEST(PeerSnapshots, ConcurrentStreamsAreCapped) {
  SecureReceiver r2(2, {.max_inbound_snapshots = 2});
  std::unique_ptr<peerpb::Peer::Stub> stub = RawStub(r2.address(), 1, 2);
  SnapshotStream a(*stub, 1);
  SnapshotStream b(*stub, 2);
  ASSERT_TRUE(a.first_ok && b.first_ok);
  const absl::Time deadline = absl::Now() + kWait;
  while (r2.service->active_snapshots_for_testing() < 2 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));  // polling a condition, bounded
  }
  SnapshotStream c(*stub, 3);
  c.writer->WritesDone();
  grpc::Status third = c.writer->Finish();
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << third.error_message();
  EXPECT_TRUE(r2.inbox.WaitForRefusal("too_many_snapshots"));
  a.context.TryCancel();
  b.context.TryCancel();
  a.writer->Finish();
  b.writer->Finish();
}

TEST(PeerSnapshots, AnIdleStreamIsCut) {
  SecureReceiver r2(2, {.snapshot_idle_timeout = absl::Milliseconds(300)});
  std::unique_ptr<peerpb::Peer::Stub> stub = RawStub(r2.address(), 1, 2);
  SnapshotStream idle(*stub, 1);
  ASSERT_TRUE(idle.first_ok);
  grpc::Status s = idle.writer->Finish();  // returns once the receiver cuts it
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(r2.inbox.WaitForRefusal("snapshot_idle"));
  EXPECT_EQ(r2.inbox.messages(), 0u);
}

// Polls `cond` until it holds or kWait passes.
bool WaitForCondition(const std::function<bool()>& cond) {
  const absl::Time deadline = absl::Now() + kWait;
  while (!cond()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

// Bytes the process has allocated and not freed (both ends of the stream
// run here; resident memory would also count what malloc keeps cached).
int64_t LiveHeapBytes() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
}

// The defect: an endless snapshot stream grew a node from 39 MB to 1.6 GB.
// Now the records go to a staging file and the stream is cut at the bound.
TEST(PeerSnapshots, AnEndlessStreamIsCutAtItsBoundWithoutGrowingMemory) {
  constexpr uint64_t kBound = 256ull << 20;
  SecureReceiver r2(2, {.max_snapshot_bytes = kBound});
  std::unique_ptr<peerpb::Peer::Stub> stub = RawStub(r2.address(), 1, 2);
  const int64_t before = LiveHeapBytes();
  SnapshotStream endless(*stub, 1);
  ASSERT_TRUE(endless.first_ok);
  uint64_t sent = 0;
  int64_t peak = before;
  const std::string value(1 << 20, 'x');
  // Bounded: the receiver cuts the stream after kBound bytes.
  for (uint64_t seq = 1; sent < 4 * kBound; ++seq) {
    if (!endless.Send(seq, {{false, absl::StrCat("key", 100000 + seq), value}})) break;
    sent += value.size();
    if (sent % (32 << 20) == 0) peak = std::max(peak, LiveHeapBytes());
  }
  grpc::Status s = endless.writer->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_GE(sent, kBound - (8 << 20));
  EXPECT_LT(sent, 2 * kBound);
  // Both ends and their gRPC buffers live in this process: far below the
  // 256 MiB that holding the stream would take. (The node-level bound, 64 MiB
  // of RSS, is checked against a real server in server_integration_test.)
  EXPECT_LT(peak - before, int64_t{128} << 20) << "memory grew while receiving";
  EXPECT_TRUE(r2.inbox.WaitForRefusal("snapshot_too_large"));
  EXPECT_EQ(r2.inbox.messages(), 0u);
  // The staging file is gone.
  EXPECT_TRUE(WaitForCondition([&] { return r2.StagingEmpty(); }));
}

TEST(PeerSnapshots, ACompleteSnapshotIsStagedAndHandedOverWithAToken) {
  SecureReceiver r2(2);
  std::unique_ptr<peerpb::Peer::Stub> stub = RawStub(r2.address(), 1, 2);
  SnapshotStream stream(*stub, 4);
  ASSERT_TRUE(stream.first_ok);
  ASSERT_TRUE(stream.Send(1, {{true, "session", "s"}, {false, "a", std::string(300000, 'a')}}));
  ASSERT_TRUE(stream.Send(2, {{false, "b", std::string(300000, 'b')}}));
  ASSERT_TRUE(stream.Send(3, {}, /*last=*/true, /*total=*/3));
  grpc::Status s = stream.End();
  EXPECT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(r2.inbox.WaitForMessages(1), 1u);
  std::vector<std::pair<NodeId, ShardMessage>> got = r2.inbox.Take();
  EXPECT_EQ(got[0].second.shard, 4u);
  EXPECT_EQ(got[0].second.message.snapshot().metadata().index(), 7u);
  ASSERT_TRUE(IsStagedToken(got[0].second.message.snapshot().data()));
  // The node's loop commits it.
  absl::StatusOr<std::unique_ptr<storage::SnapshotStaging>> staging =
      r2.exchange->TakeStaged(got[0].second.message.snapshot().data());
  ASSERT_THAT(staging, IsOk());
  ASSERT_THAT((*staging)->Commit(), IsOk());
  storage::KvStore& kv = r2.engine->kv_store();
  EXPECT_EQ(*kv.AppliedIndex(4), 7u);
  EXPECT_EQ(*kv.Get(4, "b"), std::string(300000, 'b'));
  EXPECT_EQ(*kv.GetMeta(4, "session"), "s");
}

// Hostile chunks end the call with a clear error, are counted, and leave
// nothing staged.
TEST(PeerSnapshots, HostileChunksAreRefusedAndCounted) {
  SecureReceiver r2(2);
  std::unique_ptr<peerpb::Peer::Stub> stub = RawStub(r2.address(), 1, 2);
  // The previous call has ended (it counts against --max-inbound-snapshots
  // until then).
  auto idle = [&] {
    ASSERT_TRUE(WaitForCondition([&] { return r2.service->active_snapshots_for_testing() == 0; }));
  };
  {  // a chunk skipped
    SnapshotStream stream(*stub, 1);
    ASSERT_TRUE(stream.first_ok);
    stream.Send(1, {{false, "a", "1"}});
    stream.Send(3, {{false, "c", "1"}});
    grpc::Status s = stream.End();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("chunk 3 arrived, expected 2"));
    EXPECT_TRUE(r2.inbox.WaitForRefusal("snapshot_out_of_order"));
  }
  idle();
  {  // records out of order
    SnapshotStream stream(*stub, 1);
    ASSERT_TRUE(stream.first_ok);
    stream.Send(1, {{false, "b", "1"}, {false, "a", "1"}});
    grpc::Status s = stream.End();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_TRUE(r2.inbox.WaitForRefusal("bad_snapshot_data"));
  }
  idle();
  {  // garbage data
    SnapshotStream stream(*stub, 1);
    ASSERT_TRUE(stream.first_ok);
    peerpb::SnapshotChunk chunk;
    chunk.set_seq(1);
    chunk.set_data("not a snapshot");
    stream.writer->Write(chunk);
    grpc::Status s = stream.End();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  }
  idle();
  {  // fewer records than declared
    SnapshotStream stream(*stub, 1);
    ASSERT_TRUE(stream.first_ok);
    stream.Send(1, {{false, "a", "1"}});
    stream.Send(2, {}, /*last=*/true, /*total=*/2);
    grpc::Status s = stream.End();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("declares 2 records, 1 arrived"));
  }
  idle();
  {  // a first chunk of another format, or without metadata
    SnapshotStream stream(*stub, 1);
    stream.writer->WritesDone();
    stream.writer->Finish().IgnoreError();
    std::unique_ptr<grpc::ClientWriter<peerpb::SnapshotChunk>> writer;
    grpc::ClientContext context;
    peerpb::SnapshotAck ack;
    writer = stub->Snapshot(&context, &ack);
    peerpb::SnapshotChunk chunk;
    chunk.set_from_node(1);
    chunk.set_to_node(2);
    chunk.set_incarnation(5);
    chunk.set_format(1);
    chunk.mutable_message()->set_type(raftpb::MSG_SNAP);
    writer->Write(chunk);
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_TRUE(r2.inbox.WaitForRefusal("bad_snapshot_header"));
  }
  idle();
  {  // a stream that stops before its last chunk
    SnapshotStream stream(*stub, 1);
    ASSERT_TRUE(stream.first_ok);
    stream.Send(1, {{false, "a", "1"}});
    grpc::Status s = stream.End();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED) << s.error_message();
  }
  EXPECT_EQ(r2.inbox.messages(), 0u);
  EXPECT_EQ(r2.exchange->staged(), 0u);
  EXPECT_TRUE(WaitForCondition([&] { return r2.StagingEmpty(); }));
  EXPECT_EQ(*r2.engine->kv_store().AppliedIndex(1), 0u);
}

}  // namespace
}  // namespace tessera::server
