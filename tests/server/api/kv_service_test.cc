// KvService and ClusterService over real gRPC on 127.0.0.1, with a fake
// backend in place of Node + StateMachine.
#include "server/api/kv_service.h"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "proto/grpc_status.h"
#include "proto/key_hash.h"
#include "proto/testing/status_matchers.h"
#include "server/raftstore/completion_scope.h"
#include "server/transport/grpc_server.h"
#include "server/transport/grpc_transport.h"

namespace tessera::server {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The not_leader detail of `status`, failing the test if absent.
v1::ErrorDetail::NotLeader NotLeaderOf(const absl::Status& status) {
  std::optional<v1::ErrorDetail> detail = GetErrorDetail(status);
  EXPECT_TRUE(detail.has_value() && detail->has_not_leader()) << status;
  return detail.has_value() ? detail->not_leader() : v1::ErrorDetail::NotLeader();
}

// The fields google.rpc.BadRequest names in `status`.
std::vector<std::string> BadFields(const absl::Status& status) {
  std::vector<std::string> fields;
  if (std::optional<google::rpc::BadRequest> bad = GetBadRequest(status)) {
    for (const auto& v : bad->field_violations()) fields.push_back(v.field());
  }
  return fields;
}

constexpr char kCluster[] =
    "1=127.0.0.1:7001/127.0.0.1:7101,2=127.0.0.1:7002/127.0.0.1:7102,"
    "3=127.0.0.1:7003/127.0.0.1:7103";

// An in-memory stand-in for Node + StateMachine. Thread-safe.
class FakeBackend : public KvBackend {
 public:
  void Propose(ShardId shard, serverpb::Command command, absl::Time deadline,
               Node::ProposeCallback done) override {
    absl::StatusOr<serverpb::CommandResult> result;
    {
      absl::MutexLock lock(&mu_);
      last_command_ = command;
      last_deadline_ = deadline;
      if (hold_) {
        held_.push_back(std::move(done));
        held_commands_.push_back(command);
        return;
      }
      if (!propose_error_.ok()) {
        result = propose_error_;
      } else if (forced_result_.has_value()) {
        result = *forced_result_;
      } else {
        result = ApplyLocked(shard, command);
      }
    }
    done(std::move(result));
  }

  void ReadBarrier(ShardId /*shard*/, bool lease, absl::Time deadline,
                   Node::ReadCallback done) override {
    absl::Status status;
    {
      absl::MutexLock lock(&mu_);
      last_lease_ = lease;
      last_deadline_ = deadline;
      ++barriers_;
      status = barrier_error_;
      if (hold_barriers_) {
        held_barriers_.push_back(std::move(done));
        return;
      }
    }
    done(status);
  }
  // While holding, read barriers wait until ReleaseBarriers().
  void HoldBarriers() {
    absl::MutexLock lock(&mu_);
    hold_barriers_ = true;
  }
  bool WaitBarriersHeld(size_t n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]()
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return held_barriers_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }
  // Stops holding; answers the held barriers with `status`, in order.
  void ReleaseBarriers(const absl::Status& status) {
    std::vector<Node::ReadCallback> held;
    {
      absl::MutexLock lock(&mu_);
      hold_barriers_ = false;
      held.swap(held_barriers_);
    }
    for (auto& done : held) done(status);
  }
  void SetAppliedIndex(uint64_t index) {
    absl::MutexLock lock(&mu_);
    for (ShardStatus& s : statuses_) s.applied_index = s.commit_index = index;
  }
  // The watch hub's view: every shard whole, no history kept.
  absl::StatusOr<sm::ShardRange> Range(ShardId /*shard*/) const override {
    return sm::ShardRange{};
  }
  absl::StatusOr<HistoryPage> ReadHistory(ShardId shard, uint64_t /*from_revision*/,
                                          uint64_t /*max_bytes*/) const override {
    HistoryPage page;
    if (std::optional<ShardStatus> s = StatusOf(shard)) page.applied_index = s->applied_index;
    return page;
  }

  std::vector<ShardStatus> Status() const override {
    absl::MutexLock lock(&mu_);
    return statuses_;
  }

  absl::StatusOr<v1::GetResponse> Get(ShardId shard, absl::string_view key) const override {
    absl::MutexLock lock(&mu_);
    v1::GetResponse response;
    auto it = data_.find({shard, std::string(key)});
    if (it != data_.end()) {
      response.set_found(true);
      *response.mutable_kv() = it->second;
    }
    return response;
  }

  absl::StatusOr<v1::ScanResponse> Scan(ShardId shard,
                                        const v1::ScanRequest& request) const override {
    absl::MutexLock lock(&mu_);
    v1::ScanResponse response;
    for (const auto& [k, kv] : data_) {
      if (k.first != shard) continue;
      if (!absl::StartsWith(k.second, request.prefix())) continue;
      *response.add_kvs() = kv;
    }
    return response;
  }

  absl::Status Health() const override {
    absl::MutexLock lock(&mu_);
    return health_;
  }
  void SetHealth(absl::Status s) {
    absl::MutexLock lock(&mu_);
    health_ = std::move(s);
  }
  uint64_t AbandonedProposalBytes() const override {
    absl::MutexLock lock(&mu_);
    return abandoned_bytes_;
  }
  void SetAbandonedProposalBytes(uint64_t bytes) {
    absl::MutexLock lock(&mu_);
    abandoned_bytes_ = bytes;
  }

  void SetStatuses(std::vector<ShardStatus> statuses) {
    absl::MutexLock lock(&mu_);
    statuses_ = std::move(statuses);
  }
  void SetProposeError(absl::Status s) {
    absl::MutexLock lock(&mu_);
    propose_error_ = std::move(s);
  }
  void SetBarrierError(absl::Status s) {
    absl::MutexLock lock(&mu_);
    barrier_error_ = std::move(s);
  }
  void ForceResult(serverpb::CommandResult r) {
    absl::MutexLock lock(&mu_);
    forced_result_ = std::move(r);
  }
  // While holding, proposals wait (as in a busy Node) until CompleteHeld().
  void Hold() {
    absl::MutexLock lock(&mu_);
    hold_ = true;
  }
  // Waits until `n` proposals are held; false at the deadline.
  bool WaitHeld(size_t n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return held_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }
  // Stops holding and completes the held proposals with `result` (or, by
  // default, applies them), in reverse order of arrival and in one
  // completion run, as the raft loop's RunCompletions does.
  void CompleteHeld(
      const std::optional<absl::StatusOr<serverpb::CommandResult>>& result = std::nullopt) {
    std::vector<Node::ProposeCallback> held;
    std::vector<serverpb::Command> commands;
    {
      absl::MutexLock lock(&mu_);
      hold_ = false;
      held.swap(held_);
      commands.swap(held_commands_);
    }
    std::vector<absl::StatusOr<serverpb::CommandResult>> results;
    for (const serverpb::Command& c : commands) {
      if (result.has_value()) {
        results.push_back(*result);
      } else {
        absl::MutexLock lock(&mu_);
        results.push_back(ApplyLocked(ShardForKey(c.put().key(), 16), c));
      }
    }
    CompletionScope run;
    for (size_t i = held.size(); i-- > 0;) held[i](results[i]);
  }
  serverpb::Command last_command() const {
    absl::MutexLock lock(&mu_);
    return last_command_;
  }
  absl::Time last_deadline() const {
    absl::MutexLock lock(&mu_);
    return last_deadline_;
  }
  bool last_lease() const {
    absl::MutexLock lock(&mu_);
    return last_lease_;
  }
  int barriers() const {
    absl::MutexLock lock(&mu_);
    return barriers_;
  }

 private:
  serverpb::CommandResult ApplyLocked(ShardId shard, const serverpb::Command& command)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    serverpb::CommandResult result;
    if (command.has_put()) {
      v1::KeyValue& kv = data_[{shard, command.put().key()}];
      kv.set_key(command.put().key());
      kv.set_value(command.put().value());
      kv.set_version(kv.version() + 1);
      result.mutable_put()->set_version(kv.version());
    } else if (command.has_delete_()) {
      result.mutable_delete_()->set_deleted(data_.erase({shard, command.delete_().key()}) > 0);
    } else if (command.has_txn()) {
      result.mutable_txn()->set_succeeded(true);
    }
    return result;
  }

  mutable absl::Mutex mu_;
  std::map<std::pair<ShardId, std::string>, v1::KeyValue> data_ ABSL_GUARDED_BY(mu_);
  std::vector<ShardStatus> statuses_ ABSL_GUARDED_BY(mu_);
  absl::Status propose_error_ ABSL_GUARDED_BY(mu_);
  absl::Status barrier_error_ ABSL_GUARDED_BY(mu_);
  absl::Status health_ ABSL_GUARDED_BY(mu_);
  uint64_t abandoned_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<serverpb::CommandResult> forced_result_ ABSL_GUARDED_BY(mu_);
  serverpb::Command last_command_ ABSL_GUARDED_BY(mu_);
  absl::Time last_deadline_ ABSL_GUARDED_BY(mu_);
  bool last_lease_ ABSL_GUARDED_BY(mu_) = false;
  int barriers_ ABSL_GUARDED_BY(mu_) = 0;
  bool hold_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_barriers_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Node::ReadCallback> held_barriers_ ABSL_GUARDED_BY(mu_);
  std::vector<Node::ProposeCallback> held_ ABSL_GUARDED_BY(mu_);
  std::vector<serverpb::Command> held_commands_ ABSL_GUARDED_BY(mu_);
};

// Node 1 of kCluster serving KV + Cluster over the fake backend.
class KvServiceTest : public ::testing::Test {
 protected:
  explicit KvServiceTest(uint32_t replication = 3, uint64_t max_inflight_bytes = 64 << 20,
                         size_t max_batch_ops = 256, size_t max_batch_inflight_ops = 1024)
      : map_(*ClusterMap::Parse(kCluster, 16, replication)) {
    std::vector<ShardStatus> statuses;
    for (ShardId s : map_.ShardsOf(1)) {
      statuses.push_back({.shard = s,
                          .role = "leader",
                          .term = 3,
                          .leader = 1,
                          .commit_index = 10,
                          .applied_index = 10,
                          .last_index = 10,
                          .last_leader_contact = absl::Now()});
    }
    backend_.SetStatuses(statuses);
    KvServiceOptions options;
    options.self = 1;
    options.max_deadline = absl::Seconds(30);
    options.max_inflight_bytes = max_inflight_bytes;
    options.max_batch_ops = max_batch_ops;
    options.max_batch_inflight_ops = max_batch_inflight_ops;
    options.on_batch_op = [this](absl::string_view method, absl::StatusCode code, absl::Duration) {
      absl::MutexLock lock(&observed_mu_);
      observed_.push_back(absl::StrCat(method, " ", absl::StatusCodeToString(code)));
    };
    kv_ = std::make_unique<KvService>(options, &map_, &backend_);
    cluster_ = std::make_unique<ClusterService>(1, &map_, &backend_);
    GrpcServerOptions server_options;
    server_options.address = "127.0.0.1:0";
    server_options.services = {kv_.get(), cluster_.get()};
    server_options.max_receive_bytes = 16 << 20;
    absl::StatusOr<std::unique_ptr<GrpcServer>> started =
        StartGrpcServer(std::move(server_options));
    EXPECT_THAT(started, IsOk());
    server_ = *std::move(started);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    kv_stub_ = v1::KV::NewStub(channel_);
    cluster_stub_ = v1::Cluster::NewStub(channel_);
  }

  ~KvServiceTest() override {
    server_->Shutdown(absl::Now() + absl::Seconds(5));
    kv_.reset();
  }

  v1::RequestHeader HeaderFor(const std::string& key) const {
    v1::RequestHeader header;
    header.set_shard(ShardForKey(key, map_.num_shards()));
    header.set_epoch(map_.epoch());
    return header;
  }

  absl::StatusOr<v1::PutResponse> Put(const std::string& key, const std::string& value,
                                      std::optional<v1::RequestHeader> header = std::nullopt) {
    v1::PutRequest request;
    *request.mutable_header() = header.value_or(HeaderFor(key));
    request.set_key(key);
    request.set_value(value);
    return Call(&v1::KV::Stub::Put, request);
  }

  absl::StatusOr<v1::GetResponse> Get(const std::string& key,
                                      std::optional<v1::RequestHeader> header = std::nullopt) {
    v1::GetRequest request;
    *request.mutable_header() = header.value_or(HeaderFor(key));
    request.set_key(key);
    return Call(&v1::KV::Stub::Get, request);
  }

  template <typename Req, typename Resp>
  absl::StatusOr<Resp> Call(grpc::Status (v1::KV::Stub::*method)(grpc::ClientContext*, const Req&,
                                                                 Resp*),
                            const Req& request, absl::Duration timeout = absl::Seconds(10)) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    Resp response;
    absl::Status status = FromGrpcStatus((kv_stub_.get()->*method)(&context, request, &response));
    if (!status.ok()) return status;
    return response;
  }

  std::vector<std::string> observed() {
    absl::MutexLock lock(&observed_mu_);
    return observed_;
  }

  absl::Mutex observed_mu_;
  std::vector<std::string> observed_ ABSL_GUARDED_BY(observed_mu_);
  ClusterMap map_;
  FakeBackend backend_;
  std::unique_ptr<KvService> kv_;
  std::unique_ptr<ClusterService> cluster_;
  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::KV::Stub> kv_stub_;
  std::unique_ptr<v1::Cluster::Stub> cluster_stub_;
};

TEST_F(KvServiceTest, PutGetDeleteRoundTrip) {
  absl::StatusOr<v1::PutResponse> put = Put("alpha", "one");
  ASSERT_THAT(put, IsOk());
  EXPECT_EQ(put->version(), 1u);
  EXPECT_EQ(put->header().shard(), ShardForKey("alpha", 16));
  EXPECT_EQ(put->header().epoch(), map_.epoch());
  EXPECT_EQ(put->header().leader_node(), 1u);
  EXPECT_EQ(put->header().applied_index(), 10u);
  EXPECT_EQ(Put("alpha", "two")->version(), 2u);

  absl::StatusOr<v1::GetResponse> got = Get("alpha");
  ASSERT_THAT(got, IsOk());
  EXPECT_TRUE(got->found());
  EXPECT_EQ(got->kv().value(), "two");
  EXPECT_EQ(got->kv().version(), 2u);
  EXPECT_EQ(got->header().shard(), ShardForKey("alpha", 16));
  EXPECT_FALSE(backend_.last_lease());

  v1::DeleteRequest del;
  *del.mutable_header() = HeaderFor("alpha");
  del.set_key("alpha");
  absl::StatusOr<v1::DeleteResponse> deleted = Call(&v1::KV::Stub::Delete, del);
  ASSERT_THAT(deleted, IsOk());
  EXPECT_TRUE(deleted->deleted());
  EXPECT_FALSE(Get("alpha")->found());
}

TEST_F(KvServiceTest, EpochZeroSkipsTheEpochCheck) {
  v1::RequestHeader header = HeaderFor("k");
  header.set_epoch(0);
  EXPECT_THAT(Put("k", "v", header), IsOk());
}

TEST_F(KvServiceTest, SessionAndDeadlineReachTheNode) {
  v1::RequestHeader header = HeaderFor("k");
  header.mutable_session()->set_client_id(77);
  header.mutable_session()->set_seq(5);
  absl::Time before = absl::Now();
  ASSERT_THAT(Put("k", "v", header), IsOk());
  serverpb::Command command = backend_.last_command();
  EXPECT_EQ(command.session().client_id(), 77u);
  EXPECT_EQ(command.session().seq(), 5u);
  EXPECT_EQ(command.put().key(), "k");
  EXPECT_FALSE(command.put().has_header());
  // The client's 10 s deadline, not the 30 s cap.
  EXPECT_LT(backend_.last_deadline(), before + absl::Seconds(11));
  EXPECT_GT(backend_.last_deadline(), before + absl::Seconds(9));
}

TEST_F(KvServiceTest, LongDeadlinesAreCapped) {
  v1::PutRequest request;
  *request.mutable_header() = HeaderFor("k");
  request.set_key("k");
  absl::Time before = absl::Now();
  ASSERT_THAT(Call(&v1::KV::Stub::Put, request, absl::Hours(5)), IsOk());
  EXPECT_LT(backend_.last_deadline(), before + absl::Seconds(31));
}

TEST_F(KvServiceTest, InvalidArguments) {
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_THAT(Put("", "v"), StatusIs(kInvalid, HasSubstr("empty key")));
  EXPECT_THAT(Put(std::string(4097, 'k'), "v"), StatusIs(kInvalid, HasSubstr("4097")));
  EXPECT_THAT(Put(std::string(4096, 'k'), "v"), IsOk());
  EXPECT_THAT(Put("k", std::string((1 << 20) + 1, 'v')), StatusIs(kInvalid, HasSubstr("value")));
  EXPECT_THAT(Put("k", std::string(1 << 20, 'v')), IsOk());
  EXPECT_THAT(Get(""), StatusIs(kInvalid));

  v1::ScanRequest scan;
  scan.mutable_header()->set_shard(0);
  scan.set_prefix("p");
  scan.set_start("a");
  EXPECT_THAT(Call(&v1::KV::Stub::Scan, scan), StatusIs(kInvalid, HasSubstr("prefix")));
  scan.clear_prefix();
  scan.set_start("b");
  scan.set_end("a");
  EXPECT_THAT(Call(&v1::KV::Stub::Scan, scan), StatusIs(kInvalid, HasSubstr("start")));
  scan.clear_start();
  scan.clear_end();
  scan.set_limit(10001);
  EXPECT_THAT(Call(&v1::KV::Stub::Scan, scan), StatusIs(kInvalid, HasSubstr("limit")));
  scan.set_limit(10000);
  EXPECT_THAT(Call(&v1::KV::Stub::Scan, scan), IsOk());

  v1::GetRequest get;
  *get.mutable_header() = HeaderFor("k");
  get.mutable_header()->set_consistency(static_cast<v1::ReadConsistency>(7));
  get.set_key("k");
  EXPECT_THAT(Call(&v1::KV::Stub::Get, get), StatusIs(kInvalid, HasSubstr("consistency")));

  v1::TxnRequest txn;
  *txn.mutable_header() = HeaderFor("k");
  txn.add_success();  // no op set
  EXPECT_THAT(Call(&v1::KV::Stub::Txn, txn), StatusIs(kInvalid, HasSubstr("empty operation")));
  txn.clear_success();
  for (int i = 0; i < 1025; ++i) txn.add_success()->mutable_get()->set_key("k");
  EXPECT_THAT(Call(&v1::KV::Stub::Txn, txn), StatusIs(kInvalid, HasSubstr("limit")));
  txn.clear_success();
  v1::Compare* compare = txn.add_compares();
  compare->set_key("k");
  compare->set_op(static_cast<v1::Compare::Op>(42));
  EXPECT_THAT(Call(&v1::KV::Stub::Txn, txn), StatusIs(kInvalid, HasSubstr("unknown")));
  compare->set_op(v1::Compare::OP_EQUAL);
  compare->set_key("");
  EXPECT_THAT(Call(&v1::KV::Stub::Txn, txn), StatusIs(kInvalid, HasSubstr("empty key")));
}

// INVALID_ARGUMENT about one field names it in a google.rpc.BadRequest.
TEST_F(KvServiceTest, InvalidArgumentsNameTheField) {
  EXPECT_THAT(BadFields(Put("", "v").status()), ElementsAre("key"));
  EXPECT_THAT(BadFields(Put("k", std::string((1 << 20) + 1, 'v')).status()), ElementsAre("value"));
  absl::Status empty_get = Get("").status();
  EXPECT_THAT(BadFields(empty_get), ElementsAre("key"));
  std::optional<google::rpc::BadRequest> bad = GetBadRequest(empty_get);
  ASSERT_TRUE(bad.has_value());
  EXPECT_EQ(bad->field_violations(0).description(), empty_get.message());

  v1::ScanRequest scan;
  scan.mutable_header()->set_shard(0);
  scan.set_prefix("p");
  scan.set_start("a");
  EXPECT_THAT(BadFields(Call(&v1::KV::Stub::Scan, scan).status()), ElementsAre("prefix"));
  scan.clear_prefix();
  scan.set_start("b");
  scan.set_end("a");
  EXPECT_THAT(BadFields(Call(&v1::KV::Stub::Scan, scan).status()), ElementsAre("start"));
  scan.clear_start();
  scan.set_end(std::string(4097, 'e'));
  EXPECT_THAT(BadFields(Call(&v1::KV::Stub::Scan, scan).status()), ElementsAre("end"));
  scan.clear_end();
  scan.set_limit(10001);
  EXPECT_THAT(BadFields(Call(&v1::KV::Stub::Scan, scan).status()), ElementsAre("limit"));

  v1::GetRequest get;
  *get.mutable_header() = HeaderFor("k");
  get.mutable_header()->set_consistency(static_cast<v1::ReadConsistency>(7));
  get.set_key("k");
  EXPECT_THAT(BadFields(Call(&v1::KV::Stub::Get, get).status()), ElementsAre("header.consistency"));

  v1::TxnRequest txn;
  *txn.mutable_header() = HeaderFor("k");
  txn.add_success()->mutable_get()->set_key("k");
  txn.add_success()->mutable_put()->set_key("k");
  txn.mutable_success(1)->mutable_put()->set_value(std::string((1 << 20) + 1, 'v'));
  absl::Status big = Call(&v1::KV::Stub::Txn, txn).status();
  EXPECT_THAT(big, StatusIs(absl::StatusCode::kInvalidArgument,
                            HasSubstr("success[1].put.value: value of")));
  EXPECT_THAT(BadFields(big), ElementsAre("success[1].put.value"));
  txn.clear_success();
  txn.add_failure()->mutable_delete_()->set_key("");
  EXPECT_THAT(BadFields(Call(&v1::KV::Stub::Txn, txn).status()),
              ElementsAre("failure[0].delete.key"));
  txn.clear_failure();
  txn.add_compares()->set_key("k");
  txn.mutable_compares(0)->set_target(static_cast<v1::Compare::Target>(9));
  EXPECT_THAT(BadFields(Call(&v1::KV::Stub::Txn, txn).status()), ElementsAre("compares[0]"));
  // Keys spanning shards: no one field is at fault.
  txn.clear_compares();
  std::string other = "x";
  for (int i = 0; ShardForKey(other, 16) == ShardForKey("k", 16); ++i) other = absl::StrCat("x", i);
  txn.add_success()->mutable_put()->set_key("k");
  txn.add_success()->mutable_put()->set_key(other);
  absl::Status spanning = Call(&v1::KV::Stub::Txn, txn).status();
  EXPECT_THAT(spanning, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("span")));
  EXPECT_FALSE(GetBadRequest(spanning).has_value());
}

// Returns the stale_route map of `status`, failing the test if absent.
v1::ClusterMap StaleRouteMap(const absl::Status& status) {
  std::optional<v1::ErrorDetail> detail = GetErrorDetail(status);
  EXPECT_TRUE(detail.has_value() && detail->has_stale_route()) << status;
  return detail.has_value() ? detail->stale_route().current() : v1::ClusterMap();
}

// Regression (issue 12, defect 12): a body that does not decode got gRPC's
// UNIMPLEMENTED with an empty message.
TEST_F(KvServiceTest, UndecodableBodyIsInvalidArgumentNamingTheMessage) {
  grpc::GenericStub stub(channel_);
  // Field 2 (bytes) claiming 100 bytes, followed by 3.
  const std::string junk(
      "\x12\x64"
      "abc",
      5);
  for (const auto& [method, message] :
       std::vector<std::pair<std::string, std::string>>{{"Put", "tessera.v1.PutRequest"},
                                                        {"Get", "tessera.v1.GetRequest"},
                                                        {"Delete", "tessera.v1.DeleteRequest"},
                                                        {"Scan", "tessera.v1.ScanRequest"},
                                                        {"Txn", "tessera.v1.TxnRequest"}}) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    grpc::Slice slice(junk);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    absl::Notification done;
    grpc::Status status;
    stub.UnaryCall(&context, "/tessera.v1.KV/" + method, grpc::StubOptions(), &request, &response,
                   [&](grpc::Status s) {
                     status = std::move(s);
                     done.Notify();
                   });
    done.WaitForNotification();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_THAT(status.error_message(), HasSubstr("is not a valid " + message)) << method;
  }
  // Well-formed calls still work.
  EXPECT_THAT(Put("k", "v"), IsOk());
  EXPECT_THAT(Get("k"), IsOk());
}

// A call that ends without a request message (hostile, or a client that
// cancelled while sending one) is not reported as a malformed body: under
// overload the cancelled ones made INVALID_ARGUMENT look like client bugs.
TEST_F(KvServiceTest, CallWithoutARequestMessageIsNamedSo) {
  class NoMessageCall : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    void OnDone(const grpc::Status& s) override {
      status = s;
      done.Notify();
    }
    grpc::Status status;
    absl::Notification done;
  };
  grpc::GenericStub stub(channel_);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  NoMessageCall call;
  stub.PrepareBidiStreamingCall(&context, "/tessera.v1.KV/Put", grpc::StubOptions(), &call);
  call.StartWritesDone();
  call.StartCall();
  call.done.WaitForNotification();
  EXPECT_EQ(call.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(call.status.error_message(), HasSubstr("no tessera.v1.PutRequest message"));
  EXPECT_THAT(Put("k", "v"), IsOk());
}

TEST_F(KvServiceTest, ARangeVersionIsCheckedInsteadOfTheEpoch) {
  // Routed by another map (other epoch) whose layout of this shard is the
  // same: served, and the answer names the node's map.
  v1::RequestHeader header = HeaderFor("alpha");
  header.set_epoch(map_.epoch() + 1);
  header.set_range_version(1);
  absl::StatusOr<v1::PutResponse> put = Put("alpha", "v", header);
  ASSERT_THAT(put, IsOk());
  EXPECT_EQ(put->header().epoch(), map_.epoch());
  EXPECT_EQ(put->header().map_version(), 1u);

  // Routed by a layout of the shard that is not the node's: refused with
  // the current map.
  header.set_range_version(2);
  absl::StatusOr<v1::GetResponse> get = Get("alpha", header);
  ASSERT_THAT(
      get, StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("range version 2 of shard")));
  v1::ClusterMap current = StaleRouteMap(get.status());
  EXPECT_EQ(current.version(), 1u);
  EXPECT_EQ(current.shards(header.shard()).range_version(), 1u);

  // The other checks still hold: the key's shard, the shard's replicas.
  header.set_range_version(1);
  header.set_shard((header.shard() + 1) % 16);
  EXPECT_THAT(Get("alpha", header),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("belongs to shard")));
}

TEST_F(KvServiceTest, WrongShardOrEpochReturnsTheCurrentMap) {
  v1::RequestHeader header = HeaderFor("alpha");
  header.set_shard((header.shard() + 1) % 16);
  absl::StatusOr<v1::PutResponse> put = Put("alpha", "v", header);
  ASSERT_THAT(put, StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("belongs to shard")));
  v1::ClusterMap current = StaleRouteMap(put.status());
  EXPECT_EQ(current.epoch(), map_.epoch());
  EXPECT_EQ(current.shards_size(), 16);
  EXPECT_EQ(current.shards(0).leader(), 1u);  // leader hints
  EXPECT_EQ(current.shards(0).term(), 3u);

  header = HeaderFor("alpha");
  header.set_epoch(map_.epoch() + 1);
  absl::StatusOr<v1::GetResponse> get = Get("alpha", header);
  ASSERT_THAT(get, StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("epoch")));
  EXPECT_EQ(StaleRouteMap(get.status()).epoch(), map_.epoch());

  header.set_epoch(map_.epoch());
  header.set_shard(16);
  EXPECT_THAT(Get("alpha", header),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("does not exist")));

  // A Txn whose keys span shards: no route can fix it, so INVALID_ARGUMENT
  // naming the shards (not a stale route, which a client would retry
  // forever).
  std::string other = "b0";
  for (int i = 1; ShardForKey(other, 16) == ShardForKey("alpha", 16); ++i) {
    other = absl::StrCat("b", i);
  }
  v1::TxnRequest txn;
  *txn.mutable_header() = HeaderFor("alpha");
  txn.add_success()->mutable_put()->set_key("alpha");
  txn.add_success()->mutable_delete_()->set_key(other);
  const uint32_t a = ShardForKey("alpha", 16);
  const uint32_t b = ShardForKey(other, 16);
  absl::StatusOr<v1::TxnResponse> spanning = Call(&v1::KV::Stub::Txn, txn);
  EXPECT_THAT(
      spanning,
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr(absl::StrCat("span shards ", std::min(a, b), ", ", std::max(a, b)))));
  EXPECT_FALSE(GetErrorDetail(spanning.status()).has_value());
  // Routed by the other key's shard: the same answer.
  *txn.mutable_header() = HeaderFor(other);
  EXPECT_THAT(Call(&v1::KV::Stub::Txn, txn), StatusIs(absl::StatusCode::kInvalidArgument));
  // Hash tags keep a Txn in one shard.
  txn.clear_success();
  *txn.mutable_header() = HeaderFor("{acct}:a");
  txn.add_success()->mutable_put()->set_key("{acct}:a");
  txn.add_success()->mutable_put()->set_key("{acct}:b");
  absl::StatusOr<v1::TxnResponse> ok = Call(&v1::KV::Stub::Txn, txn);
  ASSERT_THAT(ok, IsOk());
  EXPECT_TRUE(ok->succeeded());
}

TEST_F(KvServiceTest, NotLeaderNamesTheLeaderAndItsAddress) {
  v1::ErrorDetail detail;
  detail.mutable_not_leader()->set_leader_node(2);
  absl::Status not_leader = absl::UnavailableError("not the leader");
  SetErrorDetail(not_leader, detail);
  backend_.SetProposeError(not_leader);
  absl::StatusOr<v1::PutResponse> put = Put("k", "v");
  ASSERT_THAT(put, StatusIs(absl::StatusCode::kUnavailable));
  std::optional<v1::ErrorDetail> got = GetErrorDetail(put.status());
  ASSERT_TRUE(got.has_value() && got->has_not_leader());
  EXPECT_EQ(got->not_leader().leader_node(), 2u);
  EXPECT_EQ(got->not_leader().leader_address(), "127.0.0.1:7002");

  // Without a detail from the node, the hint comes from the shard's status.
  backend_.SetProposeError(absl::OkStatus());
  std::vector<ShardStatus> statuses = backend_.Status();
  for (ShardStatus& s : statuses) {
    s.role = "follower";
    s.leader = 3;
  }
  backend_.SetStatuses(statuses);
  backend_.SetBarrierError(absl::UnavailableError("not the leader"));
  absl::StatusOr<v1::GetResponse> get = Get("k");
  ASSERT_THAT(get, StatusIs(absl::StatusCode::kUnavailable));
  got = GetErrorDetail(get.status());
  ASSERT_TRUE(got.has_value() && got->has_not_leader());
  EXPECT_EQ(got->not_leader().leader_node(), 3u);
  EXPECT_EQ(got->not_leader().leader_address(), "127.0.0.1:7003");
  EXPECT_EQ(got->not_leader().reason(), v1::ErrorDetail::NotLeader::REASON_NOT_LEADER);
}

// A node the map lists as a replica of the shard but that does not host it
// (its replica not created yet, or lost with its data directory) answers
// UNAVAILABLE, never NOT_FOUND: the SDK reads NOT_FOUND on a Get as a
// missing key.
TEST_F(KvServiceTest, AShardNotHostedHereIsUnavailableNotAMissingKey) {
  ASSERT_THAT(Put("k", "v"), IsOk());
  backend_.SetBarrierError(absl::NotFoundError("shard 0 has no replica on this node"));
  absl::StatusOr<v1::GetResponse> get = Get("k");
  ASSERT_THAT(get, StatusIs(absl::StatusCode::kUnavailable));
  std::optional<v1::ErrorDetail> detail = GetErrorDetail(get.status());
  ASSERT_TRUE(detail.has_value() && detail->has_not_leader());
  backend_.SetProposeError(absl::NotFoundError("shard 0 has no replica on this node"));
  EXPECT_THAT(Put("k", "w"), StatusIs(absl::StatusCode::kUnavailable));
}

// A replica that has just lost leadership answers its waiters "not leader"
// before it knows its successor (leader 0); by the time the call finishes
// it may know: the answer names the leader it knows then.
TEST_F(KvServiceTest, NotLeaderWithoutALeaderNamesTheOneLearnedSince) {
  v1::ErrorDetail detail;
  detail.mutable_not_leader()->set_leader_node(0);
  absl::Status lost = absl::UnavailableError("leadership lost");
  SetErrorDetail(lost, detail);
  backend_.SetProposeError(lost);
  std::vector<ShardStatus> statuses = backend_.Status();
  for (ShardStatus& s : statuses) {
    s.role = "follower";
    s.leader = 2;
  }
  backend_.SetStatuses(statuses);
  absl::StatusOr<v1::PutResponse> put = Put("k", "v");
  ASSERT_THAT(put, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("leadership lost")));
  v1::ErrorDetail::NotLeader hint = NotLeaderOf(put.status());
  EXPECT_EQ(hint.leader_node(), 2u);
  EXPECT_EQ(hint.leader_address(), "127.0.0.1:7002");

  // Still no leader known: none named (never this node itself).
  for (ShardStatus& s : statuses) s.leader = 1;
  backend_.SetStatuses(statuses);
  put = Put("k", "v");
  ASSERT_THAT(put, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(NotLeaderOf(put.status()).leader_node(), 0u);
  EXPECT_EQ(NotLeaderOf(put.status()).leader_address(), "");
}

// A node whose raft loop failed answers KV calls UNAVAILABLE saying so.
TEST_F(KvServiceTest, FailedNodeSaysSo) {
  backend_.SetHealth(absl::DataLossError("raft log save failed"));
  backend_.SetProposeError(absl::UnavailableError("node 1 failed (raft log save failed)"));
  absl::StatusOr<v1::PutResponse> put = Put("k", "v");
  ASSERT_THAT(put, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("failed")));
  v1::ErrorDetail::NotLeader hint = NotLeaderOf(put.status());
  EXPECT_EQ(hint.reason(), v1::ErrorDetail::NotLeader::REASON_NODE_FAILED);
  EXPECT_EQ(hint.leader_node(), 0u);
}

TEST_F(KvServiceTest, CommandErrorsBecomeStatuses) {
  serverpb::CommandResult result;
  result.set_code(static_cast<int>(absl::StatusCode::kFailedPrecondition));
  result.set_message("session expired");
  backend_.ForceResult(result);
  EXPECT_THAT(Put("k", "v"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("session expired")));
  result.set_code(1000);
  backend_.ForceResult(result);
  EXPECT_THAT(Put("k", "v"), StatusIs(absl::StatusCode::kInternal));
}

TEST_F(KvServiceTest, ReadConsistencies) {
  ASSERT_THAT(Put("k", "v"), IsOk());
  v1::RequestHeader header = HeaderFor("k");
  header.set_consistency(v1::READ_CONSISTENCY_LEASE);
  ASSERT_THAT(Get("k", header), IsOk());
  EXPECT_TRUE(backend_.last_lease());

  // STALE: no barrier; served while the replica heard from its leader recently.
  const int barriers = backend_.barriers();
  std::vector<ShardStatus> statuses = backend_.Status();
  for (ShardStatus& s : statuses) {
    s.role = "follower";
    s.leader = 2;
    s.last_leader_contact = absl::Now() - absl::Milliseconds(200);
  }
  backend_.SetStatuses(statuses);
  header.set_consistency(v1::READ_CONSISTENCY_STALE);
  header.set_max_staleness_ms(1000);
  absl::StatusOr<v1::GetResponse> stale = Get("k", header);
  ASSERT_THAT(stale, IsOk());
  EXPECT_EQ(stale->kv().value(), "v");
  EXPECT_EQ(stale->header().leader_node(), 2u);
  EXPECT_EQ(backend_.barriers(), barriers);

  header.set_max_staleness_ms(50);
  absl::StatusOr<v1::GetResponse> too_stale = Get("k", header);
  ASSERT_THAT(too_stale, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("50 ms")));
  std::optional<v1::ErrorDetail> detail = GetErrorDetail(too_stale.status());
  ASSERT_TRUE(detail.has_value());
  EXPECT_EQ(detail->not_leader().leader_address(), "127.0.0.1:7002");
}

// A watch from now starts where a read barrier found the replica: after
// every write acknowledged before the create, even where the replica lagged
// when the create arrived (it would replay them). Requests behind a create
// waiting for its barrier keep their order; a barrier that fails refuses
// the watch as UNAVAILABLE; a watch from a given revision needs none.
TEST_F(KvServiceTest, AWatchFromNowStartsAfterAReadBarrier) {
  auto create = [&](uint64_t id, uint64_t start_revision) {
    v1::WatchRequest request;
    v1::WatchCreate* c = request.mutable_create();
    c->set_watch_id(id);
    *c->mutable_header() = HeaderFor("w");
    c->set_key("w");
    c->set_start_revision(start_revision);
    return request;
  };
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  std::unique_ptr<grpc::ClientReaderWriter<v1::WatchRequest, v1::WatchResponse>> stream =
      kv_stub_->Watch(&context);
  backend_.HoldBarriers();
  ASSERT_TRUE(stream->Write(create(1, 0)));
  v1::WatchRequest cancel;
  cancel.mutable_cancel()->set_watch_id(1);
  ASSERT_TRUE(stream->Write(cancel));
  ASSERT_TRUE(backend_.WaitBarriersHeld(1, absl::Seconds(10)));
  backend_.SetAppliedIndex(20);  // what the barrier waited for
  backend_.ReleaseBarriers(absl::OkStatus());
  v1::WatchResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_TRUE(response.created());
  EXPECT_EQ(response.watch_id(), 1u);
  EXPECT_EQ(response.revision(), 20u);
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_TRUE(response.canceled());
  EXPECT_EQ(response.watch_id(), 1u);
  EXPECT_EQ(response.error().code(), 0);

  backend_.HoldBarriers();
  ASSERT_TRUE(stream->Write(create(2, 0)));
  ASSERT_TRUE(backend_.WaitBarriersHeld(1, absl::Seconds(10)));
  backend_.ReleaseBarriers(absl::DeadlineExceededError("no leader"));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.watch_id(), 2u);
  EXPECT_TRUE(response.canceled());
  EXPECT_EQ(response.error().code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(response.error().message(), HasSubstr("no leader"));

  const int barriers = backend_.barriers();
  ASSERT_TRUE(stream->Write(create(3, 15)));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_TRUE(response.created());
  EXPECT_EQ(response.revision(), 14u);
  EXPECT_EQ(backend_.barriers(), barriers);
  stream->WritesDone();
  context.TryCancel();
}

TEST_F(KvServiceTest, ScanReadsOneShard) {
  std::string prefix = "scan/";
  ASSERT_THAT(Put("{s}scan/1", "a"), IsOk());
  ASSERT_THAT(Put("{s}scan/2", "b"), IsOk());
  v1::ScanRequest scan;
  *scan.mutable_header() = HeaderFor("{s}");
  scan.set_prefix("{s}scan/");
  absl::StatusOr<v1::ScanResponse> got = Call(&v1::KV::Stub::Scan, scan);
  ASSERT_THAT(got, IsOk());
  ASSERT_EQ(got->kvs_size(), 2);
  EXPECT_EQ(got->kvs(0).value(), "a");
  EXPECT_EQ(got->header().shard(), ShardForKey("{s}", 16));
}

TEST_F(KvServiceTest, ClusterServiceReportsMapAndStatus) {
  grpc::ClientContext c1;
  v1::GetClusterMapResponse map;
  ASSERT_TRUE(cluster_stub_->GetClusterMap(&c1, {}, &map).ok());
  EXPECT_EQ(map.map().epoch(), map_.epoch());
  EXPECT_EQ(map.map().members_size(), 3);
  EXPECT_EQ(map.map().shards(5).leader(), 1u);

  grpc::ClientContext c2;
  v1::NodeStatusResponse status;
  ASSERT_TRUE(cluster_stub_->NodeStatus(&c2, {}, &status).ok());
  EXPECT_EQ(status.node_id(), 1u);
  EXPECT_EQ(status.epoch(), map_.epoch());
  ASSERT_EQ(status.shards_size(), 16);
  EXPECT_EQ(status.shards(0).role(), "leader");
  EXPECT_EQ(status.shards(0).applied_index(), 10u);
}

// Issue 12: a node whose raft loop stopped (or is wedged) was reported up
// and still leader; its NodeStatus now fails, so tools show it down.
TEST_F(KvServiceTest, NodeStatusIsUnavailableWhileTheNodeIsDown) {
  backend_.SetHealth(absl::DataLossError("shard 3: install snapshot at index 9: snapshot data"));
  grpc::ClientContext context;
  v1::NodeStatusResponse status;
  absl::Status s = FromGrpcStatus(cluster_stub_->NodeStatus(&context, {}, &status));
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable,
                          HasSubstr("node 1 is down: DATA_LOSS: shard 3: install snapshot")));
  EXPECT_EQ(NotLeaderOf(s).reason(), v1::ErrorDetail::NotLeader::REASON_NODE_FAILED);
  backend_.SetHealth(absl::OkStatus());
  grpc::ClientContext again;
  EXPECT_TRUE(cluster_stub_->NodeStatus(&again, {}, &status).ok());
}

TEST_F(KvServiceTest, DrainRefusesNewCallsAndWaitsForInFlightOnes) {
  EXPECT_TRUE(kv_->WaitIdle(absl::Now()));
  kv_->BeginDrain();
  absl::StatusOr<v1::PutResponse> put = Put("k", "v");
  EXPECT_THAT(put, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("shutting down")));
  // This node leads: the client is told to go elsewhere, not back here.
  EXPECT_EQ(NotLeaderOf(put.status()).reason(), v1::ErrorDetail::NotLeader::REASON_DRAINING);
  EXPECT_EQ(NotLeaderOf(put.status()).leader_node(), 0u);
  EXPECT_THAT(Get("k"), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(kv_->WaitIdle(absl::Now() + absl::Seconds(5)));
}

// A draining node that knows another leader of the shard the call was
// routed to names it.
TEST_F(KvServiceTest, DrainingNodeNamesTheLeaderOfTheShard) {
  std::vector<ShardStatus> statuses = backend_.Status();
  for (ShardStatus& s : statuses) {
    s.role = "follower";
    s.leader = 3;
  }
  backend_.SetStatuses(statuses);
  kv_->BeginDrain();
  absl::StatusOr<v1::GetResponse> get = Get("k");
  ASSERT_THAT(get, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("shutting down")));
  v1::ErrorDetail::NotLeader hint = NotLeaderOf(get.status());
  EXPECT_EQ(hint.reason(), v1::ErrorDetail::NotLeader::REASON_DRAINING);
  EXPECT_EQ(hint.leader_node(), 3u);
  EXPECT_EQ(hint.leader_address(), "127.0.0.1:7003");
  // A shard id that does not exist gets no hint (but still the reason).
  v1::RequestHeader bogus = HeaderFor("k");
  bogus.set_shard(99);
  get = Get("k", bogus);
  ASSERT_THAT(get, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(NotLeaderOf(get.status()).leader_node(), 0u);
  EXPECT_EQ(NotLeaderOf(get.status()).reason(), v1::ErrorDetail::NotLeader::REASON_DRAINING);
}

// ---- KV.Batch ----

v1::BatchOp PutOp(uint64_t id, const std::string& key, const std::string& value,
                  const v1::RequestHeader& header) {
  v1::BatchOp op;
  op.set_id(id);
  *op.mutable_put()->mutable_header() = header;
  op.mutable_put()->set_key(key);
  op.mutable_put()->set_value(value);
  return op;
}

// A Batch stream of the test's client.
class BatchClient {
 public:
  explicit BatchClient(v1::KV::Stub* stub) : stream_(stub->Batch(&context_)) {}
  bool Send(const std::vector<v1::BatchOp>& ops) {
    v1::BatchRequest request;
    for (const v1::BatchOp& op : ops) *request.add_ops() = op;
    return stream_->Write(request);
  }
  // Reads results until `n` arrived (or the stream ends), in arrival order,
  // with how many BatchResponses carried them.
  std::vector<v1::BatchResult> Read(size_t n, int* messages = nullptr) {
    std::vector<v1::BatchResult> results;
    v1::BatchResponse response;
    while (results.size() < n && stream_->Read(&response)) {
      if (messages != nullptr) ++*messages;
      for (const v1::BatchResult& r : response.results()) results.push_back(r);
    }
    return results;
  }
  absl::Status Close() {
    stream_->WritesDone();
    return FromGrpcStatus(stream_->Finish());
  }
  grpc::ClientContext& context() { return context_; }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>> stream_;
};

absl::Status ErrorOf(const v1::BatchResult& r) {
  EXPECT_TRUE(r.has_error()) << r.DebugString();
  return FromRpcStatus(r.error());
}

TEST_F(KvServiceTest, BatchRunsManyOperationsOfOneMessage) {
  BatchClient batch(kv_stub_.get());
  v1::BatchOp get;
  get.set_id(9);
  *get.mutable_get()->mutable_header() = HeaderFor("x");
  get.mutable_get()->set_key("x");
  v1::BatchOp del;
  del.set_id(10);
  *del.mutable_delete_()->mutable_header() = HeaderFor("y");
  del.mutable_delete_()->set_key("y");
  ASSERT_TRUE(batch.Send(
      {PutOp(7, "a", "1", HeaderFor("a")), PutOp(8, "b", "2", HeaderFor("b")), get, del}));
  std::vector<v1::BatchResult> results = batch.Read(4);
  ASSERT_EQ(results.size(), 4u);
  std::map<uint64_t, v1::BatchResult> by_id;
  for (const v1::BatchResult& r : results) by_id[r.id()] = r;
  ASSERT_TRUE(by_id[7].has_put()) << by_id[7].DebugString();
  EXPECT_EQ(by_id[7].put().version(), 1u);
  EXPECT_EQ(by_id[7].put().header().shard(), ShardForKey("a", 16));
  EXPECT_EQ(by_id[7].put().header().applied_index(), 10u);
  ASSERT_TRUE(by_id[8].has_put());
  ASSERT_TRUE(by_id[9].has_get());
  EXPECT_FALSE(by_id[9].get().found());
  ASSERT_TRUE(by_id[10].has_delete_());
  EXPECT_FALSE(by_id[10].delete_().deleted());
  EXPECT_THAT(Get("a"), IsOk());
  EXPECT_EQ(Get("b")->kv().value(), "2");
  EXPECT_THAT(batch.Close(), IsOk());
  const BatchStats stats = kv_->batch_stats();
  EXPECT_EQ(stats.messages_total, 1u);
  EXPECT_EQ(stats.ops_total, 4u);
  EXPECT_EQ(stats.ops_per_message_le[2], 1u);  // <= 4 ops
  EXPECT_EQ(stats.ops_per_message_le[1], 0u);  // not <= 2
  // Counted per operation as the unary calls are.
  EXPECT_THAT(observed(),
              ::testing::UnorderedElementsAre("/tessera.v1.KV/Put OK", "/tessera.v1.KV/Put OK",
                                              "/tessera.v1.KV/Get OK", "/tessera.v1.KV/Delete OK"));
}

TEST_F(KvServiceTest, BatchResultsComeOutOfOrderAndOneCompletionRunIsOneMessage) {
  BatchClient batch(kv_stub_.get());
  backend_.Hold();
  ASSERT_TRUE(batch.Send({PutOp(1, "a", "1", HeaderFor("a")), PutOp(2, "b", "2", HeaderFor("b")),
                          PutOp(3, "c", "3", HeaderFor("c"))}));
  ASSERT_TRUE(backend_.WaitHeld(3, absl::Seconds(10)));
  // A read sent later completes first.
  v1::BatchOp get;
  get.set_id(4);
  *get.mutable_get()->mutable_header() = HeaderFor("a");
  get.mutable_get()->set_key("a");
  ASSERT_TRUE(batch.Send({get}));
  std::vector<v1::BatchResult> first = batch.Read(1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].id(), 4u);
  // The three writes complete in one run, newest first: one message.
  backend_.CompleteHeld();
  int messages = 0;
  std::vector<v1::BatchResult> rest = batch.Read(3, &messages);
  ASSERT_EQ(rest.size(), 3u);
  EXPECT_EQ(messages, 1);
  EXPECT_EQ(rest[0].id(), 3u);
  EXPECT_EQ(rest[2].id(), 1u);
  for (const v1::BatchResult& r : rest) EXPECT_TRUE(r.has_put()) << r.DebugString();
  EXPECT_THAT(batch.Close(), IsOk());
}

TEST_F(KvServiceTest, BatchOperationErrorsAreThoseOfTheUnaryCalls) {
  BatchClient batch(kv_stub_.get());
  v1::RequestHeader wrong = HeaderFor("a");
  wrong.set_shard((wrong.shard() + 1) % 16);
  v1::BatchOp empty;
  empty.set_id(4);
  ASSERT_TRUE(batch.Send({PutOp(1, "", "v", HeaderFor("")), PutOp(2, "a", "v", wrong),
                          PutOp(3, "k", std::string((1 << 20) + 1, 'v'), HeaderFor("k")), empty}));
  std::vector<v1::BatchResult> results = batch.Read(4);
  ASSERT_EQ(results.size(), 4u);
  std::map<uint64_t, absl::Status> errors;
  for (const v1::BatchResult& r : results) errors[r.id()] = ErrorOf(r);
  EXPECT_THAT(errors[1], StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty key")));
  EXPECT_THAT(BadFields(errors[1]), ElementsAre("key"));
  EXPECT_THAT(errors[2], StatusIs(absl::StatusCode::kFailedPrecondition));
  std::optional<v1::ErrorDetail> stale = GetErrorDetail(errors[2]);
  ASSERT_TRUE(stale.has_value() && stale->has_stale_route());
  EXPECT_EQ(stale->stale_route().current().epoch(), map_.epoch());
  EXPECT_THAT(BadFields(errors[3]), ElementsAre("value"));
  EXPECT_THAT(errors[4], StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no op set")));
  EXPECT_EQ(kv_->batch_stats().invalid_ops_total, 1u);

  // Not the leader: the hint names the leader's address, as for Put.
  backend_.SetStatuses({{.shard = ShardForKey("a", 16), .role = "follower", .leader = 2}});
  backend_.SetProposeError(absl::UnavailableError("not leader"));
  ASSERT_TRUE(batch.Send({PutOp(5, "a", "v", HeaderFor("a"))}));
  results = batch.Read(1);
  ASSERT_EQ(results.size(), 1u);
  absl::Status not_leader = ErrorOf(results[0]);
  EXPECT_THAT(not_leader, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(NotLeaderOf(not_leader).leader_address(), "127.0.0.1:7002");
  EXPECT_THAT(batch.Close(), IsOk());
}

TEST_F(KvServiceTest, BatchMessageOverTheOpLimitFailsEachOperation) {
  BatchClient batch(kv_stub_.get());
  std::vector<v1::BatchOp> ops;
  for (uint64_t i = 0; i < 257; ++i) ops.push_back(PutOp(i, "k", "v", HeaderFor("k")));
  ASSERT_TRUE(batch.Send(ops));
  std::vector<v1::BatchResult> results = batch.Read(257);
  ASSERT_EQ(results.size(), 257u);
  for (const v1::BatchResult& r : results) {
    EXPECT_THAT(ErrorOf(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("limit")));
  }
  EXPECT_EQ(kv_->batch_stats().invalid_ops_total, 257u);
  EXPECT_EQ(backend_.last_command().ByteSizeLong(), 0u);  // nothing was proposed
  // The stream goes on.
  ASSERT_TRUE(batch.Send({PutOp(1, "k", "v", HeaderFor("k"))}));
  results = batch.Read(1);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_TRUE(results[0].has_put());
  EXPECT_THAT(batch.Close(), IsOk());
}

TEST_F(KvServiceTest, BatchUndecodableMessageEndsTheStreamWithInvalidArgument) {
  grpc::GenericStub generic(channel_);
  grpc::ClientContext context;
  grpc::CompletionQueue cq;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      generic.PrepareCall(&context, "/tessera.v1.KV/Batch", &cq);
  void* tag;
  bool ok;
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  grpc::Slice junk(std::string("\\xff\\xff\\xff\\xff garbage"));
  grpc::ByteBuffer buffer(&junk, 1);
  call->Write(buffer, reinterpret_cast<void*>(2));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(3));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("not a valid tessera.v1.BatchRequest"));
  EXPECT_EQ(kv_->batch_stats().invalid_messages_total, 1u);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

// At most 4 operations in flight per stream, 2 per message.
class KvServiceBatchCapTest : public KvServiceTest {
 protected:
  KvServiceBatchCapTest() : KvServiceTest(3, 64 << 20, /*max_batch_ops=*/2, /*inflight=*/4) {}
};

TEST_F(KvServiceBatchCapTest, StopsReadingTheStreamAtTheInFlightCap) {
  BatchClient batch(kv_stub_.get());
  backend_.Hold();
  for (uint64_t m = 0; m < 3; ++m) {
    ASSERT_TRUE(
        batch.Send({PutOp(2 * m, absl::StrCat("k", m), "v", HeaderFor(absl::StrCat("k", m))),
                    PutOp(2 * m + 1, absl::StrCat("j", m), "v", HeaderFor(absl::StrCat("j", m)))}));
  }
  ASSERT_TRUE(backend_.WaitHeld(4, absl::Seconds(10)));
  // The third message stays unread while 4 operations are in flight.
  EXPECT_FALSE(backend_.WaitHeld(5, absl::Milliseconds(300)));
  EXPECT_EQ(kv_->batch_stats().messages_total, 2u);
  backend_.CompleteHeld();
  std::vector<v1::BatchResult> results = batch.Read(4);
  ASSERT_EQ(results.size(), 4u);
  // Written: the third message is read now.
  results = batch.Read(2);
  ASSERT_EQ(results.size(), 2u);
  for (const v1::BatchResult& r : results) EXPECT_TRUE(r.has_put()) << r.DebugString();
  EXPECT_EQ(kv_->batch_stats().messages_total, 3u);
  EXPECT_THAT(batch.Close(), IsOk());
}

TEST_F(KvServiceTest, BatchCancelledMidFlightCompletesInsideAndDropsTheResults) {
  {
    BatchClient batch(kv_stub_.get());
    backend_.Hold();
    ASSERT_TRUE(
        batch.Send({PutOp(1, "a", "1", HeaderFor("a")), PutOp(2, "b", "2", HeaderFor("b"))}));
    ASSERT_TRUE(backend_.WaitHeld(2, absl::Seconds(10)));
    batch.context().TryCancel();
    EXPECT_THAT(batch.Close(), StatusIs(absl::StatusCode::kCancelled));
  }
  // The server side learns of the cancel asynchronously.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (kv_->batch_stats().streams_open != 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  backend_.CompleteHeld();  // the writes still apply
  EXPECT_EQ(kv_->batch_stats().results_dropped_total, 2u);
  EXPECT_EQ(Get("a")->kv().value(), "1");
  EXPECT_TRUE(kv_->WaitIdle(absl::Now() + absl::Seconds(5)));  // bytes and counts given back
  EXPECT_EQ(kv_->admission_stats().in_flight_bytes, 0u);
}

// A node with a 2.5 MiB budget of request bytes in flight.
class KvServiceBudgetTest : public KvServiceTest {
 protected:
  static constexpr uint64_t kBudget = (5 << 20) / 2;
  KvServiceBudgetTest() : KvServiceTest(/*replication=*/3, kBudget) {}

  // A put of a 1 MiB value, started without waiting for it.
  struct AsyncPut {
    grpc::ClientContext context;
    v1::PutRequest request;
    v1::PutResponse response;
    absl::Notification done;
    grpc::Status status;
  };
  std::unique_ptr<AsyncPut> StartPut(const std::string& key, absl::Duration timeout) {
    auto call = std::make_unique<AsyncPut>();
    call->context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    *call->request.mutable_header() = HeaderFor(key);
    call->request.set_key(key);
    call->request.set_value(std::string(1 << 20, 'v'));
    AsyncPut* c = call.get();
    kv_stub_->async()->Put(&c->context, &c->request, &c->response, [c](grpc::Status status) {
      c->status = std::move(status);
      c->done.Notify();
    });
    return call;
  }
};

// Regression (issue 12, defect 10): requests were admitted by count, never by
// bytes, so large writes queued until their deadlines expired.
TEST_F(KvServiceBudgetTest, OverBudgetIsResourceExhaustedWithRetryAfterUntilBytesAreReleased) {
  backend_.Hold();
  std::unique_ptr<AsyncPut> a = StartPut("a", absl::Seconds(20));
  std::unique_ptr<AsyncPut> b = StartPut("b", absl::Seconds(20));
  ASSERT_TRUE(backend_.WaitHeld(2, absl::Seconds(10)));
  EXPECT_GT(kv_->admission_stats().in_flight_bytes, 2u << 20);

  // A third 1 MiB write does not fit: refused at once, never proposed.
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::PutResponse> refused = Put("c", std::string(1 << 20, 'v'));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));  // not held until a deadline
  ASSERT_THAT(refused,
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("bytes in flight")));
  std::optional<v1::ErrorDetail> detail = GetErrorDetail(refused.status());
  ASSERT_TRUE(detail.has_value() && detail->has_retry_after()) << refused.status();
  EXPECT_GE(detail->retry_after().retry_after_ms(), 10u);
  EXPECT_LE(detail->retry_after().retry_after_ms(), 2000u);
  // The same hint in the standard form.
  std::optional<google::rpc::RetryInfo> info = GetRetryInfo(refused.status());
  ASSERT_TRUE(info.has_value()) << refused.status();
  EXPECT_EQ(info->retry_delay().seconds() * 1000 + info->retry_delay().nanos() / 1000000,
            detail->retry_after().retry_after_ms());
  EXPECT_EQ(kv_->admission_stats().rejected_total, 1u);
  // A small request still fits.
  EXPECT_THAT(Get("small"), IsOk());

  backend_.CompleteHeld(serverpb::CommandResult());
  a->done.WaitForNotification();
  b->done.WaitForNotification();
  EXPECT_TRUE(a->status.ok()) << a->status.error_message();
  EXPECT_TRUE(b->status.ok()) << b->status.error_message();
  ASSERT_TRUE(kv_->WaitIdle(absl::Now() + absl::Seconds(10)));
  EXPECT_EQ(kv_->admission_stats().in_flight_bytes, 0u);
  EXPECT_THAT(Put("c", std::string(1 << 20, 'v')), IsOk());
  EXPECT_EQ(kv_->admission_stats().in_flight_bytes, 0u);
}

// The bytes of a call stay taken while the Node still holds its proposal,
// even after its client gave up, and are given back when the Node answers
// (here: with DEADLINE_EXCEEDED, as it does at the deadline).
TEST_F(KvServiceBudgetTest, BytesOfCancelledAndTimedOutCallsAreReleased) {
  backend_.Hold();
  std::unique_ptr<AsyncPut> timed_out = StartPut("a", absl::Milliseconds(300));
  std::unique_ptr<AsyncPut> cancelled = StartPut("b", absl::Seconds(20));
  ASSERT_TRUE(backend_.WaitHeld(2, absl::Seconds(10)));
  cancelled->context.TryCancel();
  cancelled->done.WaitForNotification();
  timed_out->done.WaitForNotification();
  EXPECT_EQ(cancelled->status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(timed_out->status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_GT(kv_->admission_stats().in_flight_bytes, 2u << 20);

  backend_.CompleteHeld(absl::DeadlineExceededError("not applied by the deadline"));
  ASSERT_TRUE(kv_->WaitIdle(absl::Now() + absl::Seconds(10)));
  EXPECT_EQ(kv_->admission_stats().in_flight_bytes, 0u);
  std::unique_ptr<AsyncPut> c = StartPut("c", absl::Seconds(20));
  std::unique_ptr<AsyncPut> d = StartPut("d", absl::Seconds(20));
  c->done.WaitForNotification();
  d->done.WaitForNotification();
  EXPECT_TRUE(c->status.ok()) << c->status.error_message();
  EXPECT_TRUE(d->status.ok()) << d->status.error_message();
  EXPECT_EQ(kv_->admission_stats().rejected_total, 0u);
}

// Writes answered at their deadline whose entries the Node still has to
// apply are work the node has queued: they count against the budget. (When
// they did not, every expired 1 MiB write made room for a new one while its
// own work was still queued, and at 256 clients a quarter of the writes
// timed out instead of being refused.)
TEST_F(KvServiceBudgetTest, AbandonedProposalsCountAsInFlight) {
  backend_.SetAbandonedProposalBytes(2 << 20);
  absl::StatusOr<v1::PutResponse> refused = Put("a", std::string(1 << 20, 'v'));
  ASSERT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted,
                                HasSubstr("of writes whose callers gave up")));
  std::optional<v1::ErrorDetail> detail = GetErrorDetail(refused.status());
  ASSERT_TRUE(detail.has_value() && detail->has_retry_after()) << refused.status();
  EXPECT_THAT(Get("small"), IsOk());  // what fits is still served

  backend_.SetAbandonedProposalBytes(0);  // applied
  EXPECT_THAT(Put("a", std::string(1 << 20, 'v')), IsOk());
  EXPECT_EQ(kv_->admission_stats().rejected_total, 1u);
}

class KvServiceNotHostedTest : public KvServiceTest {
 protected:
  KvServiceNotHostedTest() : KvServiceTest(/*replication=*/1) {}
};

TEST_F(KvServiceNotHostedTest, ShardWithoutAReplicaHereIsAStaleRoute) {
  std::string key;
  for (int i = 0; key.empty() || map_.Hosts(1, ShardForKey(key, 16)); ++i) {
    key = absl::StrCat("key", i);
  }
  absl::StatusOr<v1::PutResponse> put = Put(key, "v");
  ASSERT_THAT(put, StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("no replica")));
  v1::ClusterMap current = StaleRouteMap(put.status());
  EXPECT_EQ(current.replication(), 1u);
}

// Before the metadata group's map is loaded the services answer
// UNAVAILABLE; NodeStatus reports the metadata replica apart.
TEST(KvServiceMetaTest, UnavailableUntilTheMapIsLoadedAndMetaReplicaReportedApart) {
  const ClusterMap map = *ClusterMap::Parse(kCluster, 16, 3);
  FakeBackend backend;
  std::vector<ShardStatus> statuses;
  for (ShardId s : map.ShardsOf(1)) {
    statuses.push_back(
        {.shard = s, .role = "leader", .term = 3, .leader = 1, .last_leader_contact = absl::Now()});
  }
  statuses.push_back({.shard = kMetaShard,
                      .role = "follower",
                      .term = 2,
                      .leader = 2,
                      .applied_index = 5,
                      .snapshots_installed = 1});
  backend.SetStatuses(statuses);
  ClusterMapCache cache;
  KvServiceOptions options;
  options.self = 1;
  KvService kv(options, &cache, &backend);
  ClusterService cluster(1, &cache, &backend,
                         [&map]() -> std::optional<v1::ClusterMap> { return map.ToProto(); });
  GrpcServerOptions server_options;
  server_options.address = "127.0.0.1:0";
  server_options.services = {&kv, &cluster};
  server_options.max_receive_bytes = 1 << 20;
  absl::StatusOr<std::unique_ptr<GrpcServer>> started = StartGrpcServer(std::move(server_options));
  ASSERT_THAT(started, IsOk());
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*started)->port()),
                                     grpc::InsecureChannelCredentials());
  auto kv_stub = v1::KV::NewStub(channel);
  auto cluster_stub = v1::Cluster::NewStub(channel);
  auto put = [&] {
    grpc::ClientContext context;
    v1::PutRequest request;
    request.mutable_header()->set_shard(ShardForKey("k", 16));
    request.set_key("k");
    request.set_value("v");
    v1::PutResponse response;
    return FromGrpcStatus(kv_stub->Put(&context, request, &response));
  };
  auto get_map = [&] {
    grpc::ClientContext context;
    v1::GetClusterMapResponse response;
    return FromGrpcStatus(cluster_stub->GetClusterMap(&context, {}, &response));
  };
  auto node_status = [&] {
    grpc::ClientContext context;
    v1::NodeStatusResponse response;
    EXPECT_TRUE(cluster_stub->NodeStatus(&context, {}, &response).ok());
    return response;
  };

  EXPECT_THAT(put(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("not loaded")));
  EXPECT_EQ(NotLeaderOf(put()).reason(), v1::ErrorDetail::NotLeader::REASON_NO_CLUSTER_MAP);
  EXPECT_THAT(get_map(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("not loaded")));
  EXPECT_EQ(NotLeaderOf(get_map()).reason(), v1::ErrorDetail::NotLeader::REASON_NO_CLUSTER_MAP);
  v1::NodeStatusResponse status = node_status();
  EXPECT_EQ(status.epoch(), 0u);
  EXPECT_EQ(status.shards_size(), static_cast<int>(map.ShardsOf(1).size()));
  ASSERT_TRUE(status.has_meta_shard());
  EXPECT_EQ(status.meta_shard().applied_index(), 5u);
  EXPECT_EQ(status.meta_shard().snapshots_installed(), 1u);
  EXPECT_EQ(status.stored_map().epoch(), map.epoch());

  cache.Set(std::make_shared<const ClusterMap>(map));
  EXPECT_THAT(put(), IsOk());
  EXPECT_THAT(get_map(), IsOk());
  EXPECT_EQ(node_status().epoch(), map.epoch());
  // Shard ids beyond the map (the metadata group's included) are refused.
  grpc::ClientContext context;
  v1::GetRequest request;
  request.mutable_header()->set_shard(16);
  request.set_key("k");
  v1::GetResponse response;
  EXPECT_THAT(FromGrpcStatus(kv_stub->Get(&context, request, &response)),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  (*started)->Shutdown(absl::Now() + absl::Seconds(5));
}

}  // namespace
}  // namespace tessera::server
