#include "server/api/kv_service.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "proto/grpc_status.h"
#include "proto/key_hash.h"
#include "proto/status_macros.h"

namespace tessera::server {
namespace {

// The error a CommandResult carries, if any.
absl::Status ResultStatus(const serverpb::CommandResult& result) {
  if (result.code() == 0) return absl::OkStatus();
  int code = result.code();
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::InternalError(
        absl::StrCat("command failed with unknown code ", code, ": ", result.message()));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), result.message());
}

// One call of a raw KV method: a reactor owning the parsed request and the
// response until gRPC is done with the call.
class KvCall : public grpc::ServerUnaryReactor {
 public:
  explicit KvCall(grpc::ByteBuffer* out) : out_(out) {}
  void OnDone() override { delete this; }
  // Writes the response into gRPC's buffer; before Finish(OK).
  virtual grpc::Status SerializeResponse() = 0;

 protected:
  grpc::ByteBuffer* const out_;
};

template <typename Req, typename Resp>
class TypedKvCall final : public KvCall {
 public:
  using KvCall::KvCall;
  grpc::Status SerializeResponse() override {
    bool own_buffer = false;
    return grpc::SerializationTraits<Resp>::Serialize(response, out_, &own_buffer);
  }
  Req request;
  Resp response;
};

}  // namespace

absl::Status NodeUnavailableError(const std::string& message,
                                  v1::ErrorDetail::NotLeader::Reason reason) {
  absl::Status status = absl::UnavailableError(message);
  v1::ErrorDetail detail;
  detail.mutable_not_leader()->set_reason(reason);
  SetErrorDetail(status, detail);
  return status;
}

v1::ClusterMap MapWithLeaderHints(const ClusterMap& map, const std::vector<ShardStatus>& statuses) {
  v1::ClusterMap proto = map.ToProto();
  for (const ShardStatus& s : statuses) {
    if (s.shard >= static_cast<ShardId>(proto.shards_size())) continue;
    v1::ShardInfo* info = proto.mutable_shards(static_cast<int>(s.shard));
    info->set_leader(s.leader);
    info->set_term(s.leader != 0 ? s.term : 0);
  }
  return proto;
}

absl::Status StaleRouteError(const std::string& message, v1::ClusterMap current) {
  absl::Status status = absl::FailedPreconditionError(message);
  v1::ErrorDetail detail;
  *detail.mutable_stale_route()->mutable_current() = std::move(current);
  SetErrorDetail(status, detail);
  return status;
}

// ---- WorkerPool ----

// A fixed set of threads running submitted closures in FIFO order. After
// the destructor starts, Submit() runs the closure inline (late completions
// from a stopping Node must still finish their calls). Thread-safe.
class KvService::WorkerPool {
 public:
  explicit WorkerPool(int threads) {
    for (int i = 0; i < std::max(threads, 1); ++i) {
      threads_.emplace_back([this] { Run(); });
    }
  }

  // Runs what is queued, then joins.
  ~WorkerPool() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }

  void Submit(std::function<void()> fn) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_) {
        queue_.push_back(std::move(fn));
        return;
      }
    }
    fn();
  }

 private:
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !queue_.empty(); }

  void Run() ABSL_LOCKS_EXCLUDED(mu_) {
    while (true) {
      std::function<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(this, &WorkerPool::HasWork));
        if (queue_.empty()) return;  // stopping and drained
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

// ---- KvService ----

KvService::KvService(const KvServiceOptions& options, const ClusterMapCache* maps,
                     KvBackend* backend)
    : options_(options),
      maps_(maps),
      backend_(backend),
      pool_(std::make_unique<WorkerPool>(options.worker_threads)),
      budget_(ByteBudget::Options{.limit_bytes = options.max_inflight_bytes}) {
  StartWatchHub();
}

KvService::KvService(const KvServiceOptions& options, const ClusterMap* map, KvBackend* backend)
    : options_(options),
      owned_maps_(std::make_unique<ClusterMapCache>(*map)),
      maps_(owned_maps_.get()),
      backend_(backend),
      pool_(std::make_unique<WorkerPool>(options.worker_threads)),
      budget_(ByteBudget::Options{.limit_bytes = options.max_inflight_bytes}) {
  StartWatchHub();
}

std::shared_ptr<const ClusterMap> KvService::Map() const { return maps_->Current(); }

// The hub's threads call back into the service (CheckWatch): stopped
// before any member goes. The hub itself outlives the pool's last flushes.
KvService::~KvService() { watch_hub_->Stop(); }

namespace {

// "empty key" for the request's own key, "success[2].put.key: empty key" for
// a Txn's.
std::string FieldProblem(absl::string_view field, absl::string_view problem) {
  if (field == "key" || field == "value") return std::string(problem);
  return absl::StrCat(field, ": ", problem);
}

}  // namespace

absl::Status KvService::ValidateKey(absl::string_view key, absl::string_view field) const {
  if (key.empty()) return InvalidFieldError(field, FieldProblem(field, "empty key"));
  if (key.size() > options_.max_key_bytes) {
    return InvalidFieldError(
        field, FieldProblem(field, absl::StrCat("key of ", key.size(), " bytes exceeds ",
                                                options_.max_key_bytes)));
  }
  return absl::OkStatus();
}

absl::Status KvService::ValidateValue(absl::string_view value, absl::string_view field) const {
  if (value.size() <= options_.max_value_bytes) return absl::OkStatus();
  return InvalidFieldError(
      field, FieldProblem(field, absl::StrCat("value of ", value.size(), " bytes exceeds ",
                                              options_.max_value_bytes)));
}

absl::StatusOr<ShardId> KvService::CheckRoute(const v1::RequestHeader& header,
                                              const std::vector<absl::string_view>& keys) const {
  std::shared_ptr<const ClusterMap> map = maps_->Current();
  if (map == nullptr) {
    return NodeUnavailableError(
        absl::StrCat("node ", options_.self,
                     " has not loaded the cluster map from the metadata group yet; retry later"),
        v1::ErrorDetail::NotLeader::REASON_NO_CLUSTER_MAP);
  }
  const uint32_t n = map->num_shards();
  auto stale = [&](std::string message) {
    return StaleRouteError(message, MapWithLeaderHints(*map, backend_->Status()));
  };
  // A client that sends the shard's range_version is checked by the
  // layout of that shard alone (a newer map that changed other shards does
  // not invalidate its route); without one, by the whole map's epoch.
  if (header.range_version() == 0 && header.epoch() != 0 && header.epoch() != map->epoch()) {
    return stale(absl::StrCat("request routed by map epoch ", header.epoch(),
                              "; the current epoch is ", map->epoch()));
  }
  if (header.shard() >= n) {
    return stale(absl::StrCat("shard ", header.shard(), " does not exist (", n, " shards)"));
  }
  if (const uint64_t current = map->shards()[header.shard()].range_version;
      header.range_version() != 0 && header.range_version() != current) {
    return stale(absl::StrCat("request routed by range version ", header.range_version(),
                              " of shard ", header.shard(), "; the current one is ", current,
                              " (map version ", map->version(), ")"));
  }
  std::set<uint32_t> shards;
  for (absl::string_view key : keys) shards.insert(map->ShardForKey(key));
  if (shards.size() > 1) {
    // No route can fix this: not a stale-route error, or a client following
    // the contract would refresh and retry forever.
    return absl::InvalidArgumentError(
        absl::StrCat("the keys of the request span shards ", absl::StrJoin(shards, ", "),
                     "; a Txn's keys must all map to one shard (use a hash tag such as "
                     "\"acct:{42}:balance\")"));
  }
  for (uint32_t shard : shards) {
    if (shard != header.shard()) {
      return stale(absl::StrCat("a key of the request belongs to shard ", shard, ", not shard ",
                                header.shard()));
    }
  }
  if (!map->Hosts(options_.self, header.shard())) {
    return stale(absl::StrCat("shard ", header.shard(), " has no replica on node ", options_.self));
  }
  return static_cast<ShardId>(header.shard());
}

absl::Time KvService::BatchDeadline(absl::Time now, uint32_t timeout_ms) const {
  const absl::Time cap = now + options_.max_deadline;
  if (timeout_ms == 0) return std::min(now + options_.default_deadline, cap);
  return std::min(now + absl::Milliseconds(timeout_ms), cap);
}

absl::Time KvService::Deadline(const grpc::CallbackServerContext* context) const {
  const absl::Time now = absl::Now();
  const absl::Time cap = now + options_.max_deadline;
  std::chrono::system_clock::time_point deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return std::min(now + options_.default_deadline, cap);
  }
  return std::min(absl::FromChrono(deadline), cap);
}

void KvService::AddLeaderHint(absl::Status& status, ShardId shard) const {
  std::optional<v1::ErrorDetail> detail = GetErrorDetail(status);
  if (!detail.has_value()) {
    detail.emplace();
    // Without a detail from the node: the node failed (its raft loop
    // stopped or is wedged), or this replica cannot serve (not the leader).
    detail->mutable_not_leader()->set_reason(backend_->Health().ok()
                                                 ? v1::ErrorDetail::NotLeader::REASON_NOT_LEADER
                                                 : v1::ErrorDetail::NotLeader::REASON_NODE_FAILED);
  }
  if (!detail->has_not_leader()) return;
  v1::ErrorDetail::NotLeader* not_leader = detail->mutable_not_leader();
  const bool may_know = not_leader->reason() == v1::ErrorDetail::NotLeader::REASON_NOT_LEADER ||
                        not_leader->reason() == v1::ErrorDetail::NotLeader::REASON_DRAINING;
  std::shared_ptr<const ClusterMap> map = maps_->Current();
  if (not_leader->leader_node() == 0 && may_know && map != nullptr &&
      map->Hosts(options_.self, shard)) {
    // The leader this replica knows now: a replica that has just lost
    // leadership (or whose proposal was overwritten) may have learned the
    // new leader since the error was made.
    std::optional<ShardStatus> s = backend_->StatusOf(shard);
    if (s.has_value() && s->leader != options_.self) not_leader->set_leader_node(s->leader);
  }
  if (not_leader->leader_node() != 0 && not_leader->leader_address().empty() && map != nullptr) {
    if (const MemberInfo* m = map->FindMember(not_leader->leader_node())) {
      not_leader->set_leader_address(m->client_address);
    }
  }
  SetErrorDetail(status, *detail);
}

void KvService::Complete(ShardId shard, absl::Status status, const OpDone& done, bool from_node) {
  if (!from_node && status.code() == absl::StatusCode::kNotFound) {
    // A command's or a lease check's: a lease is not live (the only
    // NOT_FOUND they give), which the client must not retry.
    v1::ErrorDetail detail;
    detail.mutable_lease_not_found();
    SetErrorDetail(status, detail);
  } else if (status.code() == absl::StatusCode::kNotFound) {
    // The node does not host the shard the map lists here (a replica not
    // created yet, or one lost with its data directory and being
    // replaced). Never NOT_FOUND: on a Get the SDK takes that for a
    // missing key (the chaos suite saw reads of existing keys answered
    // "absent"). Another replica answers.
    status = NodeUnavailableError(std::string(status.message()),
                                  v1::ErrorDetail::NotLeader::REASON_NOT_LEADER);
  }
  if (status.code() == absl::StatusCode::kUnavailable) AddLeaderHint(status, shard);
  if (status.code() == absl::StatusCode::kOutOfRange) {
    // The shard's state machine no longer owns the key (a split applied
    // after the route was checked): a stale route, with the map this node
    // has (once the split is recorded there, it routes the key elsewhere).
    std::shared_ptr<const ClusterMap> map = maps_->Current();
    if (map != nullptr) {
      status = StaleRouteError(std::string(status.message()),
                               MapWithLeaderHints(*map, backend_->Status()));
    }
  }
  done(std::move(status));
}

void KvService::Run(Hop hop, std::function<void()> fn) {
  if (hop == Hop::kWorker) return pool_->Submit(std::move(fn));
  fn();
}

bool KvService::Enter(const v1::RequestHeader& header, uint64_t request_bytes, absl::Time deadline,
                      OpDone& done) {
  bool draining;
  {
    absl::MutexLock lock(&drain_mu_);
    draining = draining_;
    if (!draining) ++in_flight_;
  }
  if (draining) {
    // Named after the shard the client routed to (its leader, if this node
    // knows one, is where the client should go).
    absl::Status status = NodeUnavailableError(
        absl::StrCat("node ", options_.self,
                     " is shutting down; retry at the leader or on another replica"),
        v1::ErrorDetail::NotLeader::REASON_DRAINING);
    AddLeaderHint(status, static_cast<ShardId>(header.shard()));
    done(std::move(status));
    return false;
  }
  const uint64_t abandoned = backend_->AbandonedProposalBytes();
  if (budget_.TryAcquire(request_bytes, absl::Now(), deadline, abandoned)) {
    // From now on `done` gives the bytes back first (before a unary call's
    // Finish, after which gRPC may reuse its memory), and counts the
    // operation out after.
    done = [this, request_bytes, inner = std::move(done)](absl::Status status) {
      const bool served = status.code() != absl::StatusCode::kDeadlineExceeded &&
                          status.code() != absl::StatusCode::kCancelled;
      budget_.Release(request_bytes, absl::Now(), served);
      inner(std::move(status));
      absl::MutexLock lock(&drain_mu_);
      --in_flight_;
    };
    return true;
  }
  {
    absl::MutexLock lock(&drain_mu_);
    --in_flight_;
  }
  // Refused before any work: the request costs the node nothing more.
  const int64_t retry_after_ms =
      std::max<int64_t>(1, absl::ToInt64Milliseconds(budget_.RetryAfter(abandoned)));
  done(RetryLaterError(absl::StrCat("node ", options_.self,
                                    " has too many request bytes in flight to take this one (",
                                    budget_.Stats().in_flight_bytes, " in flight and ", abandoned,
                                    " of writes whose callers gave up still to apply, limit ",
                                    options_.max_inflight_bytes,
                                    ", or more than it can finish before the deadline); "
                                    "retry in about ",
                                    retry_after_ms, " ms"),
                       absl::Milliseconds(retry_after_ms)));
  return false;
}

template <typename Req, typename Resp>
grpc::ServerUnaryReactor* KvService::Serve(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* in, grpc::ByteBuffer* out,
    void (KvService::*handle)(const Caller&, const Req&, Resp*, absl::Time, Hop, OpDone)) {
  auto* call = new TypedKvCall<Req, Resp>(out);
  if (!in->Valid()) {
    // No request message arrived: the client cancelled while sending it (an
    // overloaded client's deadline), its stream broke, or it sent none.
    call->Finish(context->IsCancelled()
                     ? grpc::Status(grpc::StatusCode::CANCELLED,
                                    "the call was cancelled before its request arrived")
                     : ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
                           "the call carried no ", Req::descriptor()->full_name(), " message"))));
    return call;
  }
  grpc::ByteBuffer body(*in);  // shares the slices; Deserialize consumes it
  if (!grpc::SerializationTraits<Req>::Deserialize(&body, &call->request).ok()) {
    call->Finish(ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("the request body (", in->Length(), " bytes) is not a valid ",
                     Req::descriptor()->full_name(), " message"))));
    return call;
  }
  absl::StatusOr<Caller> caller = Caller::Identify(options_.auth, *context);
  if (!caller.ok()) {
    call->Finish(ToGrpcStatus(caller.status()));
    return call;
  }
  (this->*handle)(*caller, call->request, &call->response, Deadline(context), Hop::kWorker,
                  [call](absl::Status status) {
                    grpc::Status final_status = ToGrpcStatus(status);
                    if (status.ok()) {
                      grpc::Status serialized = call->SerializeResponse();
                      if (!serialized.ok()) {
                        final_status = grpc::Status(
                            grpc::StatusCode::INTERNAL,
                            "cannot serialize the response: " + serialized.error_message());
                      }
                    }
                    call->Finish(final_status);
                  });
  return call;
}

grpc::ServerUnaryReactor* KvService::Put(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) {
  return Serve(context, request, response, &KvService::HandlePut);
}
grpc::ServerUnaryReactor* KvService::Get(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) {
  return Serve(context, request, response, &KvService::HandleGet);
}
grpc::ServerUnaryReactor* KvService::Delete(grpc::CallbackServerContext* context,
                                            const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) {
  return Serve(context, request, response, &KvService::HandleDelete);
}
grpc::ServerUnaryReactor* KvService::Scan(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) {
  return Serve(context, request, response, &KvService::HandleScan);
}
grpc::ServerUnaryReactor* KvService::Txn(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) {
  return Serve(context, request, response, &KvService::HandleTxn);
}

void KvService::BeginDrain() {
  absl::MutexLock lock(&drain_mu_);
  draining_ = true;
}

bool KvService::WaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&drain_mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(drain_mu_) { return in_flight_ == 0; };
  return drain_mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

namespace {

void FillHeader(v1::ResponseHeader* header, ShardId shard, const ClusterMap* map,
                const std::optional<ShardStatus>& status) {
  header->set_shard(static_cast<uint32_t>(shard));
  if (map != nullptr) {
    header->set_epoch(map->epoch());
    header->set_map_version(map->version());
  }
  if (status.has_value()) {
    header->set_leader_node(status->leader);
    header->set_applied_index(status->applied_index);
  }
}

}  // namespace

namespace {

// The non-zero leases a write's puts name.
std::vector<uint64_t> LeasesOf(const serverpb::Command& command) {
  std::vector<uint64_t> leases;
  auto add = [&](const v1::PutRequest& put) {
    if (put.lease() != 0 && std::find(leases.begin(), leases.end(), put.lease()) == leases.end()) {
      leases.push_back(put.lease());
    }
  };
  if (command.has_put()) add(command.put());
  for (const auto* ops : {&command.txn().success(), &command.txn().failure()}) {
    for (const v1::TxnOp& op : *ops) {
      if (op.has_put()) add(op.put());
    }
  }
  return leases;
}

}  // namespace

void KvService::ProposeAndFinish(ShardId shard, serverpb::Command command, absl::Time deadline,
                                 Hop hop, std::function<void(serverpb::CommandResult&)> fill,
                                 OpDone done) {
  backend_->Propose(shard, std::move(command), deadline,
                    [this, hop, shard, fill = std::move(fill), done = std::move(done)](
                        absl::StatusOr<serverpb::CommandResult> result) mutable {
                      // Runs on the raft loop thread: a unary call moves the rest to a
                      // worker; a batched operation finishes here (CompletionScope).
                      Run(hop, [this, shard, fill = std::move(fill), done = std::move(done),
                                result = std::move(result)]() mutable {
                        if (!result.ok()) return Complete(shard, result.status(), done);
                        absl::Status status = ResultStatus(*result);
                        if (status.ok()) fill(*result);
                        Complete(shard, status, done, /*from_node=*/false);
                      });
                    });
}

template <typename Response>
void KvService::ProposeWrite(ShardId shard, const v1::RequestHeader& header,
                             serverpb::Command command, absl::Time deadline, Hop hop,
                             Response* response, Response* (serverpb::CommandResult::*take)(),
                             OpDone done) {
  if (header.session().client_id() != 0) *command.mutable_session() = header.session();
  auto propose = [this, shard, deadline, hop, response, take](serverpb::Command command,
                                                              OpDone done) {
    ProposeAndFinish(
        shard, std::move(command), deadline, hop,
        [this, response, shard, take](serverpb::CommandResult& result) {
          *response = std::move(*(result.*take)());
          FillHeader(response->mutable_header(), shard, Map().get(), backend_->StatusOf(shard));
          response->mutable_header()->set_revision(result.revision());
        },
        std::move(done));
  };
  std::vector<uint64_t> leases = LeasesOf(command);
  if (leases.empty() || options_.check_leases == nullptr) {
    return propose(std::move(command), std::move(done));
  }
  options_.check_leases(std::move(leases), deadline,
                        [this, shard, hop, propose, command = std::move(command),
                         done = std::move(done)](absl::Status live) mutable {
                          if (live.ok()) return propose(std::move(command), std::move(done));
                          Run(hop, [this, shard, live = std::move(live), done = std::move(done)] {
                            Complete(shard, live, done, /*from_node=*/false);
                          });
                        });
}

void KvService::ReadAndFinish(const v1::RequestHeader& header, ShardId shard, absl::Time deadline,
                              Hop hop, std::function<absl::Status()> read, OpDone done) {
  switch (header.consistency()) {
    case v1::READ_CONSISTENCY_LINEARIZABLE:
    case v1::READ_CONSISTENCY_LEASE: {
      const bool lease = header.consistency() == v1::READ_CONSISTENCY_LEASE;
      backend_->ReadBarrier(
          shard, lease, deadline,
          [this, hop, shard, read = std::move(read),
           done = std::move(done)](absl::Status barrier) mutable {
            Run(hop, [this, shard, read = std::move(read), done = std::move(done), barrier]() {
              Complete(shard, barrier.ok() ? read() : barrier, done);
            });
          });
      return;
    }
    case v1::READ_CONSISTENCY_STALE: {
      const uint32_t staleness_ms = header.max_staleness_ms() != 0
                                        ? header.max_staleness_ms()
                                        : options_.default_max_staleness_ms;
      auto stale_read = [this, hop, shard, staleness_ms, read = std::move(read),
                         done = std::move(done)](absl::Status applied) mutable {
        Run(hop,
            [this, shard, staleness_ms, applied, read = std::move(read), done = std::move(done)]() {
              if (!applied.ok()) return Complete(shard, applied, done);
              std::optional<ShardStatus> s = backend_->StatusOf(shard);
              const bool fresh =
                  s.has_value() &&
                  (s->role == "leader" || (s->leader != 0 && absl::Now() - s->last_leader_contact <=
                                                                 absl::Milliseconds(staleness_ms)));
              if (!fresh) {
                return Complete(shard,
                                absl::UnavailableError(absl::StrCat(
                                    "replica of shard ", shard, " on node ", options_.self,
                                    " has not heard from a leader within ", staleness_ms, " ms")),
                                done);
              }
              Complete(shard, read(), done);
            });
      };
      // Read-your-writes: this replica first applies up to min_revision.
      if (header.min_revision() == 0) {
        stale_read(absl::OkStatus());
      } else {
        backend_->WaitApplied(shard, header.min_revision(), deadline, std::move(stale_read));
      }
      return;
    }
    default:
      Complete(shard,
               InvalidFieldError("header.consistency",
                                 absl::StrCat("unknown read consistency ",
                                              static_cast<int>(header.consistency()))),
               done);
  }
}

absl::Status KvService::CheckLimits(const Caller& caller, uint64_t bytes, bool grows) {
  if (options_.auth == nullptr) return absl::OkStatus();
  std::shared_ptr<const security::AuthView> view = options_.auth->Current();
  if (view == nullptr) return absl::OkStatus();  // Identify refused the call already
  const v1::Limits& limits = view->state().limits();
  const absl::Duration wait = rate_limiter_.Admit(caller.who(), limits, 1, bytes, absl::Now());
  if (wait > absl::ZeroDuration()) {
    return RetryLaterError(
        absl::StrCat("user '", caller.who().user, "' is over its rate limit on node ",
                     options_.self, "; retry in ", absl::ToInt64Milliseconds(wait), " ms"),
        wait);
  }
  const uint64_t quota = limits.storage_quota_bytes();
  if (grows && quota != 0 && options_.storage_used) {
    const uint64_t used = options_.storage_used();
    if (used > quota) {
      absl::Status status = absl::ResourceExhaustedError(
          absl::StrCat("node ", options_.self, "'s store holds ", used,
                       " bytes, over its storage quota of ", quota,
                       ": writes that add data are refused until deletes bring it under (reads and "
                       "deletes still work)"));
      v1::ErrorDetail detail;
      detail.mutable_quota_exceeded()->set_used_bytes(used);
      detail.mutable_quota_exceeded()->set_quota_bytes(quota);
      SetErrorDetail(status, detail);
      return status;
    }
  }
  return absl::OkStatus();
}

void KvService::HandlePut(const Caller& caller, const v1::PutRequest& request,
                          v1::PutResponse* response, absl::Time deadline, Hop hop, OpDone done) {
  absl::Status allowed = caller.Check(security::Access::kWrite, request.key());
  if (allowed.ok()) allowed = CheckLimits(caller, request.ByteSizeLong(), /*grows=*/true);
  if (!allowed.ok()) return done(allowed);
  if (!Enter(request.header(), request.ByteSizeLong(), deadline, done)) return;
  absl::Status valid = ValidateKey(request.key(), "key");
  if (valid.ok()) valid = ValidateValue(request.value(), "value");
  absl::StatusOr<ShardId> shard =
      valid.ok() ? CheckRoute(request.header(), {request.key()}) : valid;
  if (!shard.ok()) return done(shard.status());
  serverpb::Command command;
  *command.mutable_put() = request;
  command.mutable_put()->clear_header();
  ProposeWrite(*shard, request.header(), std::move(command), deadline, hop, response,
               &serverpb::CommandResult::mutable_put, std::move(done));
}

void KvService::HandleDelete(const Caller& caller, const v1::DeleteRequest& request,
                             v1::DeleteResponse* response, absl::Time deadline, Hop hop,
                             OpDone done) {
  absl::Status allowed = caller.Check(security::Access::kWrite, request.key());
  if (allowed.ok()) allowed = CheckLimits(caller, request.ByteSizeLong(), /*grows=*/false);
  if (!allowed.ok()) return done(allowed);
  if (!Enter(request.header(), request.ByteSizeLong(), deadline, done)) return;
  absl::Status valid = ValidateKey(request.key(), "key");
  absl::StatusOr<ShardId> shard =
      valid.ok() ? CheckRoute(request.header(), {request.key()}) : valid;
  if (!shard.ok()) return done(shard.status());
  serverpb::Command command;
  *command.mutable_delete_() = request;
  command.mutable_delete_()->clear_header();
  ProposeWrite(*shard, request.header(), std::move(command), deadline, hop, response,
               &serverpb::CommandResult::mutable_delete_, std::move(done));
}

namespace {

// Read for the compared and read keys, write for the written ones.
absl::Status CheckTxn(const Caller& caller, const v1::TxnRequest& request) {
  for (const v1::Compare& c : request.compares()) {
    TESSERA_RETURN_IF_ERROR(caller.Check(security::Access::kRead, c.key()));
  }
  for (const auto* branch : {&request.success(), &request.failure()}) {
    for (const v1::TxnOp& op : *branch) {
      switch (op.op_case()) {
        case v1::TxnOp::kPut:
          TESSERA_RETURN_IF_ERROR(caller.Check(security::Access::kWrite, op.put().key()));
          break;
        case v1::TxnOp::kDelete:
          TESSERA_RETURN_IF_ERROR(caller.Check(security::Access::kWrite, op.delete_().key()));
          break;
        case v1::TxnOp::kGet:
          TESSERA_RETURN_IF_ERROR(caller.Check(security::Access::kRead, op.get().key()));
          break;
        default:
          break;  // refused by the validation that follows
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

void KvService::HandleTxn(const Caller& caller, const v1::TxnRequest& request,
                          v1::TxnResponse* response, absl::Time deadline, Hop hop, OpDone done) {
  absl::Status allowed = CheckTxn(caller, request);
  if (allowed.ok()) {
    bool puts = false;
    for (const auto* branch : {&request.success(), &request.failure()}) {
      for (const v1::TxnOp& op : *branch) puts = puts || op.has_put();
    }
    allowed = CheckLimits(caller, request.ByteSizeLong(), puts);
  }
  if (!allowed.ok()) return done(allowed);
  if (!Enter(request.header(), request.ByteSizeLong(), deadline, done)) return;
  auto validate = [&]() -> absl::StatusOr<std::vector<absl::string_view>> {
    const size_t ops = request.compares_size() + request.success_size() + request.failure_size();
    if (ops > options_.max_txn_ops) {
      return absl::InvalidArgumentError(absl::StrCat(
          "txn has ", ops, " compares and operations; the limit is ", options_.max_txn_ops));
    }
    std::vector<absl::string_view> keys;
    for (int i = 0; i < request.compares_size(); ++i) {
      const v1::Compare& c = request.compares(i);
      const std::string field = absl::StrCat("compares[", i, "]");
      TESSERA_RETURN_IF_ERROR(ValidateKey(c.key(), field + ".key"));
      if (!v1::Compare_Target_IsValid(c.target()) || !v1::Compare_Op_IsValid(c.op())) {
        return InvalidFieldError(field, "txn compare has an unknown target or op");
      }
      TESSERA_RETURN_IF_ERROR(ValidateValue(c.value(), field + ".value"));
      keys.push_back(c.key());
    }
    for (const auto* branch : {&request.success(), &request.failure()}) {
      const char* name = branch == &request.success() ? "success" : "failure";
      for (int i = 0; i < branch->size(); ++i) {
        const v1::TxnOp& op = (*branch)[i];
        const std::string field = absl::StrCat(name, "[", i, "]");
        switch (op.op_case()) {
          case v1::TxnOp::kPut:
            TESSERA_RETURN_IF_ERROR(ValidateKey(op.put().key(), field + ".put.key"));
            TESSERA_RETURN_IF_ERROR(ValidateValue(op.put().value(), field + ".put.value"));
            keys.push_back(op.put().key());
            break;
          case v1::TxnOp::kDelete:
            TESSERA_RETURN_IF_ERROR(ValidateKey(op.delete_().key(), field + ".delete.key"));
            keys.push_back(op.delete_().key());
            break;
          case v1::TxnOp::kGet:
            TESSERA_RETURN_IF_ERROR(ValidateKey(op.get().key(), field + ".get.key"));
            keys.push_back(op.get().key());
            break;
          default:
            return InvalidFieldError(field, "txn has an empty operation");
        }
      }
    }
    return keys;
  };
  absl::StatusOr<std::vector<absl::string_view>> keys = validate();
  absl::StatusOr<ShardId> shard = keys.ok() ? CheckRoute(request.header(), *keys) : keys.status();
  if (!shard.ok()) return done(shard.status());
  serverpb::Command command;
  *command.mutable_txn() = request;
  command.mutable_txn()->clear_header();
  ProposeWrite(*shard, request.header(), std::move(command), deadline, hop, response,
               &serverpb::CommandResult::mutable_txn, std::move(done));
}

void KvService::HandleGet(const Caller& caller, const v1::GetRequest& request,
                          v1::GetResponse* response, absl::Time deadline, Hop hop, OpDone done) {
  absl::Status allowed = caller.Check(security::Access::kRead, request.key());
  if (allowed.ok()) allowed = CheckLimits(caller, request.ByteSizeLong(), /*grows=*/false);
  if (!allowed.ok()) return done(allowed);
  if (!Enter(request.header(), request.ByteSizeLong(), deadline, done)) return;
  absl::Status valid = ValidateKey(request.key(), "key");
  absl::StatusOr<ShardId> shard =
      valid.ok() ? CheckRoute(request.header(), {request.key()}) : valid;
  if (!shard.ok()) return done(shard.status());
  ReadAndFinish(
      request.header(), *shard, deadline, hop,
      [this, &request, response, shard = *shard]() -> absl::Status {
        std::optional<ShardStatus> status = backend_->StatusOf(shard);
        absl::StatusOr<v1::GetResponse> got = backend_->Get(shard, request.key());
        if (!got.ok()) return got.status();
        *response = *std::move(got);
        FillHeader(response->mutable_header(), shard, Map().get(), status);
        return absl::OkStatus();
      },
      std::move(done));
}

void KvService::HandleScan(const Caller& caller, const v1::ScanRequest& request,
                           v1::ScanResponse* response, absl::Time deadline, Hop hop, OpDone done) {
  // The keys a scan may return: [start, end) (end "": all from start), or
  // the prefix's range.
  absl::Status allowed =
      !request.prefix().empty()
          ? caller.Check(security::Access::kRead, request.prefix(), PrefixEnd(request.prefix()))
          : caller.Check(security::Access::kRead, request.start(),
                         request.end().empty() ? std::string(1, '\0') : request.end());
  if (allowed.ok()) allowed = CheckLimits(caller, request.ByteSizeLong(), /*grows=*/false);
  if (!allowed.ok()) return done(allowed);
  if (!Enter(request.header(), request.ByteSizeLong(), deadline, done)) return;
  auto validate = [&]() -> absl::Status {
    if (!request.prefix().empty() && (!request.start().empty() || !request.end().empty())) {
      return InvalidFieldError("prefix", "scan prefix cannot be combined with start/end");
    }
    if (!request.start().empty() && !request.end().empty() && request.start() > request.end()) {
      return InvalidFieldError("start", "scan start is after its end");
    }
    const std::pair<const char*, const std::string*> bounds[] = {
        {"start", &request.start()}, {"end", &request.end()}, {"prefix", &request.prefix()}};
    for (const auto& [field, bound] : bounds) {
      if (bound->size() > options_.max_key_bytes) {
        return InvalidFieldError(field, absl::StrCat("scan bound of ", bound->size(),
                                                     " bytes exceeds ", options_.max_key_bytes));
      }
    }
    if (request.continuation().size() > 4 * options_.max_key_bytes + 64) {
      return InvalidFieldError("continuation", "scan continuation is too long");
    }
    if (request.limit() > options_.max_scan_limit) {
      return InvalidFieldError("limit", absl::StrCat("scan limit ", request.limit(), " exceeds ",
                                                     options_.max_scan_limit));
    }
    return absl::OkStatus();
  };
  absl::Status valid = validate();
  absl::StatusOr<ShardId> shard = valid.ok() ? CheckRoute(request.header(), {}) : valid;
  if (!shard.ok()) return done(shard.status());
  // A scan's read is unbounded work: never on the raft loop thread, even
  // batched.
  ReadAndFinish(
      request.header(), *shard, deadline, Hop::kWorker,
      [this, &request, response, shard = *shard]() -> absl::Status {
        std::optional<ShardStatus> status = backend_->StatusOf(shard);
        absl::StatusOr<v1::ScanResponse> got = backend_->Scan(shard, request);
        if (!got.ok()) return got.status();
        *response = *std::move(got);
        FillHeader(response->mutable_header(), shard, Map().get(), status);
        return absl::OkStatus();
      },
      std::move(done));
  (void)hop;
}

// ---- ClusterService ----

ClusterService::ClusterService(NodeId self, const ClusterMapCache* maps, KvBackend* backend,
                               StoredMapReader stored_map)
    : self_(self), maps_(maps), backend_(backend), stored_map_(std::move(stored_map)) {}

ClusterService::ClusterService(NodeId self, const ClusterMap* map, KvBackend* backend)
    : self_(self),
      owned_maps_(std::make_unique<ClusterMapCache>(*map)),
      maps_(owned_maps_.get()),
      backend_(backend) {}

grpc::ServerUnaryReactor* ClusterService::GetClusterMap(grpc::CallbackServerContext* context,
                                                        const v1::GetClusterMapRequest* /*request*/,
                                                        v1::GetClusterMapResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::shared_ptr<const ClusterMap> map = maps_->Current();
  if (map == nullptr) {
    reactor->Finish(ToGrpcStatus(NodeUnavailableError(
        absl::StrCat(
            "node ", self_,
            " has not loaded the cluster map from the metadata group yet; ask another node"),
        v1::ErrorDetail::NotLeader::REASON_NO_CLUSTER_MAP)));
    return reactor;
  }
  *response->mutable_map() = MapWithLeaderHints(*map, backend_->Status());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ClusterService::Drain(grpc::CallbackServerContext* context,
                                                const v1::DrainRequest* request,
                                                v1::DrainResponse* /*response*/) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = Caller::Identify(auth_, *context);
  absl::Status allowed = caller.ok() ? caller->CheckRoot("drain nodes") : caller.status();
  if (!allowed.ok()) {
    reactor->Finish(ToGrpcStatus(allowed));
  } else if (request->node_id() != self_) {
    reactor->Finish(ToGrpcStatus(absl::FailedPreconditionError(
        absl::StrCat("this is node ", self_, ", not node ", request->node_id(),
                     ": refresh the cluster map and ask that node"))));
  } else if (!drain_) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this server cannot drain on request"));
  } else {
    drain_();
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

namespace {

// Answers an operator's change of the cluster map: UNIMPLEMENTED without a
// handler, else the map version that records it or the handler's error
// (NOT_FOUND, a node the request names that does not exist, becomes
// INVALID_ARGUMENT: the caller's mistake). The handler blocks this callback
// thread for at most the metadata group's proposal deadline: an operator's
// call, not a hot path.
template <typename Response>
grpc::ServerUnaryReactor* AnswerMapChange(grpc::CallbackServerContext* context,
                                          const security::AuthCache* auth, bool handled,
                                          const char* what,
                                          const std::function<absl::StatusOr<uint64_t>()>& change,
                                          Response* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = Caller::Identify(auth, *context);
  absl::Status allowed = caller.ok() ? caller->CheckRoot(what) : caller.status();
  if (!allowed.ok()) {
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  if (!handled) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::UNIMPLEMENTED, absl::StrCat("this server cannot ", what)));
    return reactor;
  }
  absl::StatusOr<uint64_t> version = change();
  if (version.ok()) response->set_map_version(*version);
  if (version.status().code() == absl::StatusCode::kNotFound) {
    version = absl::InvalidArgumentError(version.status().message());
  }
  reactor->Finish(ToGrpcStatus(version.status()));
  return reactor;
}

}  // namespace

grpc::ServerUnaryReactor* ClusterService::MoveReplica(grpc::CallbackServerContext* context,
                                                      const v1::MoveReplicaRequest* request,
                                                      v1::MoveReplicaResponse* response) {
  return AnswerMapChange(
      context, auth_, move_ != nullptr, "move replicas",
      [&] { return move_(request->shard(), request->from_node(), request->to_node()); }, response);
}

grpc::ServerUnaryReactor* ClusterService::AddMember(grpc::CallbackServerContext* context,
                                                    const v1::AddMemberRequest* request,
                                                    v1::AddMemberResponse* response) {
  return AnswerMapChange(
      context, auth_, add_member_ != nullptr, "add members",
      [&] { return add_member_(request->member()); }, response);
}

grpc::ServerUnaryReactor* ClusterService::RemoveMember(grpc::CallbackServerContext* context,
                                                       const v1::RemoveMemberRequest* request,
                                                       v1::RemoveMemberResponse* response) {
  return AnswerMapChange(
      context, auth_, remove_member_ != nullptr, "remove members",
      [&] { return remove_member_(request->node_id()); }, response);
}

grpc::ServerUnaryReactor* ClusterService::SplitShard(grpc::CallbackServerContext* context,
                                                     const v1::SplitShardRequest* request,
                                                     v1::SplitShardResponse* response) {
  return AnswerMapChange(
      context, auth_, split_ != nullptr, "split shards", [&] { return split_(request->shard()); },
      response);
}

grpc::ServerUnaryReactor* ClusterService::NodeStatus(grpc::CallbackServerContext* context,
                                                     const v1::NodeStatusRequest* /*request*/,
                                                     v1::NodeStatusResponse* response) {
  // A node whose raft loop stopped or is wedged is down, whatever its last
  // published raft state says (it may still read "leader" when wedged).
  if (absl::Status health = backend_->Health(); !health.ok()) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpcStatus(
        NodeUnavailableError(absl::StrCat("node ", self_, " is down: ", health.ToString()),
                             v1::ErrorDetail::NotLeader::REASON_NODE_FAILED)));
    return reactor;
  }
  response->set_node_id(self_);
  std::shared_ptr<const ClusterMap> map = maps_->Current();
  response->set_epoch(map != nullptr ? map->epoch() : 0);
  response->set_map_version(map != nullptr ? map->version() : 0);
  for (ShardStatus& s : backend_->Status()) {
    backend_->AddStoredState(s);
    // The metadata replica is reported apart (its id does not fit uint32).
    v1::ShardStatus* out =
        s.shard == kMetaShard ? response->mutable_meta_shard() : response->add_shards();
    out->set_shard(s.shard == kMetaShard ? 0 : static_cast<uint32_t>(s.shard));
    out->set_role(s.role);
    out->set_term(s.term);
    out->set_leader(s.leader);
    out->set_commit_index(s.commit_index);
    out->set_applied_index(s.applied_index);
    out->set_last_index(s.last_index);
    out->set_snapshots_installed(s.snapshots_installed);
    for (NodeId id : s.voters) out->add_voters(id);
    for (NodeId id : s.voters_outgoing) out->add_voters_outgoing(id);
    for (NodeId id : s.learners) out->add_learners(id);
    out->set_range_version(s.range_version);
    out->set_hash_end(s.hash_end);
    out->set_approximate_bytes(s.approximate_bytes);
  }
  if (stored_map_ != nullptr) {
    if (std::optional<v1::ClusterMap> stored = stored_map_()) {
      *response->mutable_stored_map() = *std::move(stored);
    }
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace tessera::server
