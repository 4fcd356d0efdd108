#include "client/client.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/core.h"
#include "grpcpp/client_context.h"
#include "proto/grpc_status.h"

namespace tessera::client {
namespace {

using Core = Client::Core;

// A scan's page call finds the shards changed (a split) since the scan
// began: the scan goes on over the new layout (ScanCall, ScanPages).
constexpr char kShardLayoutChanged[] = "the cluster's shards changed during the scan";
absl::Status ShardLayoutChanged() { return absl::AbortedError(kShardLayoutChanged); }
bool IsShardLayoutChanged(const absl::Status& s) {
  return s.code() == absl::StatusCode::kAborted && s.message() == kShardLayoutChanged;
}
// Restarts of one scan over a new layout (each needs another split).
constexpr int kMaxScanRestarts = 8;
// The callback API of the KV service's stubs.
using AsyncKv = v1::KV::StubInterface::async_interface;

// Not-leader hints followed at once (no backoff) in a row; then back off, so
// two nodes that name each other during an election cannot spin.
constexpr int kMaxHintHops = 3;
// Stale routes retried at once in a row.
constexpr int kMaxRouteRefreshes = 3;
// Tokens fetched for one call after UNAUTHENTICATED answers.
constexpr int kMaxTokenRefreshes = 3;
// Fresh sessions tried for a write whose session the server evicted.
constexpr int kMaxSessionRenewals = 2;

v1::ReadConsistency ToProto(Consistency c) {
  switch (c) {
    case Consistency::kLease:
      return v1::READ_CONSISTENCY_LEASE;
    case Consistency::kStale:
      return v1::READ_CONSISTENCY_STALE;
    case Consistency::kLinearizable:
      break;
  }
  return v1::READ_CONSISTENCY_LINEARIZABLE;
}

// A failure of the node or the network rather than an answer: the attempt
// timed out, or an UNAVAILABLE without an error detail (gRPC's own: the node
// is down or unreachable; every UNAVAILABLE a Tessera server sends carries
// ErrorDetail.not_leader) or from a node that cannot serve at all (draining,
// no cluster map yet, raft loop failed).
bool IsNodeFailure(const absl::Status& s) {
  if (s.code() == absl::StatusCode::kDeadlineExceeded) return true;
  if (s.code() != absl::StatusCode::kUnavailable) return false;
  std::optional<v1::ErrorDetail> detail = GetErrorDetail(s);
  return !detail.has_value() || !detail->has_not_leader() ||
         detail->not_leader().reason() != v1::ErrorDetail::NotLeader::REASON_NOT_LEADER;
}

// Feeds the outcome of an attempt on `node` to its circuit breaker.
void RecordOutcome(Core::Node* node, const absl::Status& status, absl::Time now) {
  if (IsNodeFailure(status)) {
    node->breaker.RecordFailure(now);
  } else {
    node->breaker.RecordSuccess();
  }
}

// The smallest key greater than every key with `prefix`; empty = none.
std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    if (static_cast<unsigned char>(end.back()) != 0xff) {
      end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return end;
}

// A request as a KV.Batch operation, and the response out of its result
// (false: the result carries another op's response).
void SetBatchOp(v1::BatchOp* op, const v1::PutRequest& r) { *op->mutable_put() = r; }
void SetBatchOp(v1::BatchOp* op, const v1::GetRequest& r) { *op->mutable_get() = r; }
void SetBatchOp(v1::BatchOp* op, const v1::DeleteRequest& r) { *op->mutable_delete_() = r; }
void SetBatchOp(v1::BatchOp* op, const v1::TxnRequest& r) { *op->mutable_txn() = r; }
void SetBatchOp(v1::BatchOp* op, const v1::ScanRequest& r) { *op->mutable_scan() = r; }
bool TakeBatchResult(v1::BatchResult& r, v1::PutResponse* out) {
  if (!r.has_put()) return false;
  *out = std::move(*r.mutable_put());
  return true;
}
bool TakeBatchResult(v1::BatchResult& r, v1::GetResponse* out) {
  if (!r.has_get()) return false;
  *out = std::move(*r.mutable_get());
  return true;
}
bool TakeBatchResult(v1::BatchResult& r, v1::DeleteResponse* out) {
  if (!r.has_delete_()) return false;
  *out = std::move(*r.mutable_delete_());
  return true;
}
bool TakeBatchResult(v1::BatchResult& r, v1::TxnResponse* out) {
  if (!r.has_txn()) return false;
  *out = std::move(*r.mutable_txn());
  return true;
}
bool TakeBatchResult(v1::BatchResult& r, v1::ScanResponse* out) {
  if (!r.has_scan()) return false;
  *out = std::move(*r.mutable_scan());
  return true;
}

// What a KvCall needs to know about the request it carries.
struct CallSpec {
  bool write = false;
  Consistency consistency = Consistency::kLinearizable;
  absl::Duration max_staleness = absl::Seconds(5);  // sent for kStale
  absl::Time deadline;
  // The keys that route the call (all must map to one shard); empty for a
  // call pinned to `fixed_shard` (a page of a scan).
  std::vector<std::string> keys;
  uint32_t fixed_shard = 0;
  uint32_t fixed_num_shards = 0;  // the shard count `fixed_shard` belongs to
};

// What MapCall and KvCall share: a call registered with the Core (so that
// ~Client cancels it) that makes attempts one after another, each started by
// Attempt() at once or on the client's timer, until it completes and deletes
// itself.
class RetryingCall : public CallBase {
 public:
  std::shared_ptr<grpc::ClientContext> Cancel() final ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    return context_;
  }

 protected:
  explicit RetryingCall(Core* core) : core_(core) {}

  static absl::Status ShuttingDown() { return absl::CancelledError("client shutting down"); }

  // Starts the next attempt.
  virtual void Attempt() = 0;
  // Completes the call with `status` (an error); ends with Release().
  virtual void Fail(absl::Status status) = 0;

  // Registers the call and makes its first attempt (or fails it: the client
  // is shutting down).
  void Launch() {
    if (!core_->Register(this)) return Fail(ShuttingDown());
    Attempt();
  }

  bool IsCancelled() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }

  // Makes the next attempt at `when` (or fails the call if the client shuts
  // down first).
  void AttemptAt(absl::Time when) {
    core_->timer().Schedule(when, [this](bool ok) {
      if (!ok) return Fail(ShuttingDown());
      Attempt();
    });
  }

  // The call's last step, after it reported its result.
  void Release() {
    core_->Unregister(this);
    delete this;
  }

  Core* const core_;
  // Attempts run one after another (each starts after the previous one's
  // completion or timer); mu_ orders them and guards what Cancel() reads.
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<grpc::ClientContext> context_ ABSL_GUARDED_BY(mu_);  // of the attempt
};

// Fetches the cluster map from any endpoint or member, with backoff until
// the deadline, and installs it in the RouteTable.
class MapCall final : public RetryingCall {
 public:
  using Done = std::function<void(absl::StatusOr<v1::ClusterMap>)>;

  static void Start(Core* core, absl::Time deadline, Done done) {
    (new MapCall(core, deadline, std::move(done)))->Launch();
  }

 private:
  MapCall(Core* core, absl::Time deadline, Done done)
      : RetryingCall(core), deadline_(deadline), done_(std::move(done)) {}

  void Attempt() override {
    const absl::Time now = absl::Now();
    std::vector<std::string> candidates = core_->options().endpoints;
    for (const std::string& a : core_->routes().MemberAddresses()) {
      if (std::find(candidates.begin(), candidates.end(), a) == candidates.end()) {
        candidates.push_back(a);
      }
    }
    std::shared_ptr<grpc::ClientContext> context =
        core_->NewContext(std::min(deadline_, now + AttemptTimeout()));
    if (IsCancelled()) return Finish(ShuttingDown());
    Core::Node* node = nullptr;
    {
      absl::MutexLock lock(&mu_);
      // Rotate through the candidates, skipping nodes whose breaker is open
      // (unless all are).
      for (size_t i = 0; i < candidates.size() && node == nullptr; ++i) {
        Core::Node* n = core_->GetNode(candidates[(next_ + i) % candidates.size()]);
        if (n->breaker.WouldAllow(now)) {
          node = n;
          next_ = (next_ + i + 1) % candidates.size();
        }
      }
      if (node == nullptr) node = core_->GetNode(candidates[next_++ % candidates.size()]);
      context_ = context;
      response_.Clear();
      if (cancelled_) context->TryCancel();  // before the call starts: no callback runs here
    }
    node->breaker.Allow(now);  // claims the half-open probe if any
    node->cluster.Next()->async()->GetClusterMap(
        context.get(), &request_, &response_,
        [this, node](grpc::Status s) { OnDone(node, FromGrpcStatus(s)); });
  }

  absl::Duration AttemptTimeout() const { return core_->options().attempt_timeout; }

  void OnDone(Core::Node* node, absl::Status status) {
    const absl::Time now = absl::Now();
    RecordOutcome(node, status, now);
    v1::ClusterMap map;
    {
      absl::MutexLock lock(&mu_);
      if (status.ok()) map = response_.map();
    }
    if (status.ok()) {
      status = core_->UpdateMap(map);
      if (status.ok()) return Finish(std::move(map));
    }
    last_error_ = status;
    if (status.code() == absl::StatusCode::kCancelled) return Finish(status);
    const absl::Duration delay = core_->Backoff(retries_++);
    if (now + delay >= deadline_) {
      return Finish(
          absl::Status(last_error_.code() == absl::StatusCode::kDeadlineExceeded
                           ? last_error_.code()
                           : absl::StatusCode::kUnavailable,
                       absl::StrCat("no member answered GetClusterMap before the deadline: ",
                                    last_error_.message())));
    }
    AttemptAt(now + delay);
  }

  void Fail(absl::Status status) override { Finish(std::move(status)); }

  void Finish(absl::StatusOr<v1::ClusterMap> result) {
    done_(std::move(result));
    Release();
  }

  const absl::Time deadline_;
  Done done_;
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
  v1::GetClusterMapRequest request_;
  v1::GetClusterMapResponse response_;
  int retries_ = 0;
  absl::Status last_error_;
};

// One KV RPC with routing, retries and (for writes) its session.
template <typename Req, typename Resp>
class KvCall final : public RetryingCall {
 public:
  // The stub's callback method for the RPC, e.g. &AsyncKv::Put.
  using Method = void (AsyncKv::*)(grpc::ClientContext*, const Req*, Resp*,
                                   std::function<void(grpc::Status)>);
  using Done = std::function<void(absl::StatusOr<Resp>)>;

  static void Start(Core* core, CallSpec spec, Req request, Method method, Done done) {
    (new KvCall(core, std::move(spec), std::move(request), method, std::move(done)))->Launch();
  }

 private:
  KvCall(Core* core, CallSpec spec, Req request, Method method, Done done)
      : RetryingCall(core),
        spec_(std::move(spec)),
        request_(std::move(request)),
        method_(method),
        done_(std::move(done)) {}

  bool LeaderOnly() const { return spec_.write || spec_.consistency != Consistency::kStale; }

  // The shard of the call under the current map, or an error to finish with.
  absl::StatusOr<uint32_t> ResolveShard() {
    RouteTable& routes = core_->routes();
    if (spec_.keys.empty()) {
      if (routes.num_shards() != spec_.fixed_num_shards) return ShardLayoutChanged();
      return spec_.fixed_shard;
    }
    std::optional<uint32_t> shard;
    for (const std::string& key : spec_.keys) {
      std::optional<uint32_t> s = routes.ShardForKey(key);
      if (!s.has_value()) return absl::UnavailableError("no cluster map");
      if (shard.has_value() && *shard != *s) {
        return absl::InvalidArgumentError(
            "the keys of a transaction must map to one shard (use a hash tag, e.g. "
            "\"acct:{42}:balance\")");
      }
      shard = s;
    }
    return *shard;
  }

  // Chooses the node for this attempt (see client/README.md, "Routing").
  Core::Node* PickTarget(const ShardRoute& route, absl::Time now) {
    std::vector<std::string> candidates = route.replicas;
    if (LeaderOnly()) {
      if (route.leader.has_value()) {
        Core::Node* leader = core_->GetNode(*route.leader);
        if (leader->breaker.WouldAllow(now)) return leader;
      }
      for (size_t i = 0; i < candidates.size(); ++i) {
        const std::string& a = candidates[(rotation_ + i) % candidates.size()];
        Core::Node* n = core_->GetNode(a);
        if (a != avoid_ && n->breaker.WouldAllow(now)) {
          rotation_ = (rotation_ + i + 1) % candidates.size();
          return n;
        }
      }
    } else {
      // Least outstanding requests among healthy replicas; ties at random.
      std::vector<Core::Node*> best;
      int64_t least = INT64_MAX;
      for (const std::string& a : candidates) {
        Core::Node* n = core_->GetNode(a);
        if ((a == avoid_ && candidates.size() > 1) || !n->breaker.WouldAllow(now)) continue;
        const int64_t load = n->outstanding.load();
        if (load < least) {
          least = load;
          best.clear();
        }
        if (load == least) best.push_back(n);
      }
      if (!best.empty()) return best[core_->RandomIndex(best.size())];
    }
    // Every replica is open (or avoided): try one anyway (it is the probe).
    if (route.leader.has_value() && LeaderOnly()) return core_->GetNode(*route.leader);
    return core_->GetNode(candidates[rotation_++ % candidates.size()]);
  }

  void Attempt() override {
    const absl::Time now = absl::Now();
    if (IsCancelled()) return Finish(ShuttingDown());
    if (now >= spec_.deadline) return Finish(DeadlineStatus());
    if (core_->has_credentials() && !signed_in_ && core_->token().empty() && core_->token_due()) {
      // Sign in before the first attempt, so that it goes as the user (and
      // not as whoever a client certificate names).
      signed_in_ = true;
      return core_->RefreshToken("", [this](absl::Status signed_in) {
        if (!signed_in.ok()) return Finish(signed_in);
        Attempt();
      });
    }
    if (!core_->routes().has_map() || need_map_) {
      need_map_ = false;
      return MapCall::Start(core_, spec_.deadline, [this](absl::StatusOr<v1::ClusterMap> map) {
        if (!map.ok()) {
          if (map.status().code() == absl::StatusCode::kCancelled) {
            return Finish(map.status());
          }
          last_error_ = map.status();
          return Finish(DeadlineStatus());
        }
        Attempt();
      });
    }
    absl::StatusOr<uint32_t> shard = ResolveShard();
    if (!shard.ok()) return Finish(shard.status());
    std::optional<ShardRoute> route = core_->routes().Route(*shard);
    if (!route.has_value() || route->replicas.empty()) {
      last_error_ = absl::UnavailableError(absl::StrCat("no replica known for shard ", *shard));
      need_map_ = true;
      return RetryLater();
    }
    shard_ = *shard;
    v1::RequestHeader* header = request_.mutable_header();
    header->set_shard(shard_);
    header->set_epoch(route->epoch);
    header->set_range_version(route->range_version);
    if (spec_.write) {
      SessionTable& sessions = core_->sessions();
      if (!ticket_.has_value()) {
        ticket_ = sessions.Begin(shard_);
      } else if (ticket_->shard != shard_) {
        ticket_ = sessions.Move(*ticket_, shard_);  // never reached the old shard's log
      }
      *header->mutable_session() = sessions.Header(*ticket_);
    } else {
      header->set_consistency(ToProto(spec_.consistency));
      if (spec_.consistency == Consistency::kStale) {
        header->set_max_staleness_ms(static_cast<uint32_t>(
            std::max<int64_t>(1, absl::ToInt64Milliseconds(spec_.max_staleness))));
      }
    }
    Core::Node* node = PickTarget(*route, now);
    if (const absl::Time busy = node->BusyUntil(); busy > now) {
      // The node asked for a pause (server pushback): wait here, not there.
      if (last_error_.code() != absl::StatusCode::kResourceExhausted) {
        last_error_ = absl::ResourceExhaustedError(absl::StrCat(
            "node ", node->address, " is overloaded and asked clients to wait ",
            absl::ToInt64Milliseconds(busy - now), " ms more; the request was not sent"));
      }
      return RetryAfterServerHint(busy - now);
    }
    node->breaker.Allow(now);  // claims the half-open probe if any
    if (node->batch != nullptr) {
      // The batched stream: no context of its own (~Core shuts the streams
      // down, which fails the attempts on them).
      bool cancel_now;
      {
        absl::MutexLock lock(&mu_);
        target_ = node->address;
        response_.Clear();
        cancel_now = cancelled_;
      }
      if (cancel_now) return Finish(ShuttingDown());
      node->outstanding.fetch_add(1);
      node->attempts.fetch_add(1);
      if (SubmitBatch(node, now)) return;
      node->outstanding.fetch_sub(1);  // no KV.Batch there: the unary RPC
      node->attempts.fetch_sub(1);
    }
    std::shared_ptr<grpc::ClientContext> context =
        core_->NewContext(std::min(spec_.deadline, now + core_->options().attempt_timeout));
    bool cancel_now;
    {
      absl::MutexLock lock(&mu_);
      context_ = context;
      target_ = node->address;
      response_.Clear();
      cancel_now = cancelled_;  // Cancel() came after the check above
    }
    if (cancel_now) context->TryCancel();  // the call starts cancelled
    node->outstanding.fetch_add(1);
    node->attempts.fetch_add(1);
    (node->kv.Next()->async()->*method_)(
        context.get(), &request_, &response_,
        [this, node](grpc::Status s) { OnDone(node, FromGrpcStatus(s)); });
  }

  // Sends this attempt on the node's KV.Batch stream; false if the node has
  // none (use the unary RPC). The stream carries the attempt's deadline as
  // timeout_ms and fails the attempt itself if no answer comes by then.
  bool SubmitBatch(Core::Node* node, absl::Time now) {
    const absl::Time deadline = std::min(spec_.deadline, now + core_->options().attempt_timeout);
    v1::BatchOp op;
    op.set_timeout_ms(static_cast<uint32_t>(
        std::clamp<int64_t>(absl::ToInt64Milliseconds(deadline - now), 1, INT32_MAX)));
    SetBatchOp(&op, request_);
    return node->batch->Submit(
        std::move(op), deadline, [this, node](absl::Status stream, v1::BatchResult* result) {
          if (stream.code() == absl::StatusCode::kUnimplemented && result == nullptr) {
            // The node has no KV.Batch (an older server): nothing was
            // applied; the channel now refuses, so this goes unary.
            node->outstanding.fetch_sub(1);
            return Attempt();
          }
          if (stream.ok()) {
            if (result->has_error()) {
              stream = FromRpcStatus(result->error());
            } else {
              absl::MutexLock lock(&mu_);
              if (!TakeBatchResult(*result, &response_)) {
                stream = absl::InternalError("a KV.Batch result of the wrong type");
              }
            }
          }
          OnDone(node, std::move(stream));
        });
  }

  void OnDone(Core::Node* node, absl::Status status) {
    node->outstanding.fetch_sub(1);
    const absl::Time now = absl::Now();
    std::string target;
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);
      target = target_;
      cancelled = cancelled_;
      context_.reset();
    }
    if (cancelled) return Finish(ShuttingDown());
    RecordOutcome(node, status, now);
    RouteTable& routes = core_->routes();
    if (status.ok()) {
      Resp response;
      {
        absl::MutexLock lock(&mu_);
        response = std::move(response_);
      }
      if (!spec_.write && spec_.consistency == Consistency::kStale &&
          response.header().applied_index() < core_->MinReadIndex(shard_)) {
        // The replica has not applied this client's own latest write yet:
        // read from the leader instead.
        spec_.consistency = Consistency::kLinearizable;
        return Attempt();
      }
      if (LeaderOnly()) routes.SetLeader(shard_, target);
      if (spec_.write) {
        core_->sessions().Answered(*ticket_);
        core_->NoteWriteIndex(shard_, response.header().applied_index());
      }
      return Finish(std::move(response));
    }
    if (status.code() == absl::StatusCode::kNotFound && GetErrorDetail(status).has_value() &&
        GetErrorDetail(status)->has_lease_not_found()) {
      return Finish(std::move(status));  // the write names a lease that ended: final
    }
    if (status.code() == absl::StatusCode::kNotFound) {
      // Never a missing key (an answer says that with found=false): the
      // node does not host the replica (servers before a75c871 answered
      // so). Another replica, as for UNAVAILABLE; never reported as
      // kNotFound, which a Get's caller takes for "no such key".
      status = absl::UnavailableError(
          absl::StrCat(target, " does not serve shard ", shard_, ": ", status.message()));
    }
    last_error_ = status;
    std::optional<v1::ErrorDetail> detail = GetErrorDetail(status);
    switch (status.code()) {
      case absl::StatusCode::kUnavailable: {
        maybe_applied_ = maybe_applied_ || spec_.write;
        if (LeaderOnly() && detail.has_value() && detail->has_not_leader()) {
          const std::string& hint = detail->not_leader().leader_address();
          if (!hint.empty() && hint != target) {
            routes.SetLeader(shard_, hint);
            if (hint_hops_++ < kMaxHintHops) return Attempt();
            return RetryLater();
          }
        }
        if (LeaderOnly()) routes.ForgetLeader(shard_, target);
        avoid_ = target;
        return RetryLater();
      }
      case absl::StatusCode::kResourceExhausted:
        if (detail.has_value() && detail->has_quota_exceeded()) {
          return Finish(std::move(status));  // the node is over its storage quota: final
        }
        if (detail.has_value() && detail->has_retry_after()) {
          const absl::Duration hint = absl::Milliseconds(detail->retry_after().retry_after_ms());
          node->PushBack(now + hint / 2);  // the client's other requests wait too
          return RetryAfterServerHint(hint);
        }
        return RetryLater();
      case absl::StatusCode::kCancelled:
        // Not this client's cancellation (that finished above): the server
        // or the connection dropped the call, as a node shutting down does
        // with calls it had received but not started. Another replica, then;
        // a write may have been applied (its session makes the retry safe).
        maybe_applied_ = maybe_applied_ || spec_.write;
        if (LeaderOnly()) routes.ForgetLeader(shard_, target);
        avoid_ = target;
        return RetryLater();
      case absl::StatusCode::kDeadlineExceeded:
        maybe_applied_ = maybe_applied_ || spec_.write;
        if (now >= spec_.deadline) return Finish(DeadlineStatus());
        if (LeaderOnly()) routes.ForgetLeader(shard_, target);
        avoid_ = target;
        return RetryLater();
      case absl::StatusCode::kUnauthenticated:
        // The token expired or was replaced (a password change), or none
        // was held yet: get one and try again, a few times.
        if (core_->has_credentials() && token_refreshes_++ < kMaxTokenRefreshes) {
          core_->RefreshToken(core_->token(), [this](absl::Status refreshed) {
            if (!refreshed.ok()) return Finish(refreshed);
            // After a backoff: a node may have just heard that auth is on
            // while the one that signed us in has not yet.
            RetryLater();
          });
          return;
        }
        return Finish(status);
      case absl::StatusCode::kFailedPrecondition:
        if (detail.has_value() && detail->has_stale_route()) {
          if (detail->stale_route().has_current() &&
              core_->UpdateMap(detail->stale_route().current()).ok()) {
            // Routed by the new map from here on.
          } else {
            need_map_ = true;
          }
          if (route_refreshes_++ < kMaxRouteRefreshes) return Attempt();
          return RetryLater();
        }
        if (spec_.write && ticket_.has_value()) {
          if (!maybe_applied_ && renewals_++ < kMaxSessionRenewals) {
            // No attempt of this write can have been applied: a fresh
            // session is safe.
            ticket_ = core_->sessions().Renew(*ticket_);
            return Attempt();
          }
          return Finish(absl::FailedPreconditionError(
              absl::StrCat("the server expired this client's session while the write was being "
                           "retried; its outcome is unknown (",
                           status.message(), ")")));
        }
        return Finish(status);
      default:
        return Finish(status);
    }
  }

  // Waits a full-jitter backoff (bounded by the deadline), then tries again.
  void RetryLater() {
    const absl::Time now = absl::Now();
    if (now >= spec_.deadline) return Finish(DeadlineStatus());
    hint_hops_ = 0;
    AttemptAt(std::min(now + core_->Backoff(retries_++), spec_.deadline));
  }

  // The server refused the call for overload and said when it expects room:
  // wait about that long (with jitter), then try again. If that is past the
  // deadline, give up now rather than wait for a certain failure.
  void RetryAfterServerHint(absl::Duration hint) {
    const absl::Time when = absl::Now() + core_->RetryAfter(hint);
    if (when >= spec_.deadline) {
      return Finish(spec_.write && maybe_applied_ ? DeadlineStatus() : last_error_);
    }
    hint_hops_ = 0;
    ++retries_;  // the next backoff grows too
    AttemptAt(when);
  }

  // What to report when the deadline passes.
  absl::Status DeadlineStatus() const {
    if (spec_.write && maybe_applied_) {
      return absl::DeadlineExceededError(absl::StrCat(
          "deadline exceeded; the write's outcome is unknown (last error: ", last_error_.ToString(),
          ")"));
    }
    if (!last_error_.ok() && last_error_.code() != absl::StatusCode::kDeadlineExceeded) {
      return absl::Status(last_error_.code(),
                          absl::StrCat("deadline exceeded after retries: ", last_error_.message()));
    }
    return absl::DeadlineExceededError(last_error_.ok() ? "deadline exceeded"
                                                        : std::string(last_error_.message()));
  }

  void Fail(absl::Status status) override { Finish(std::move(status)); }

  void Finish(absl::StatusOr<Resp> result) {
    if (ticket_.has_value()) core_->sessions().End(*ticket_);
    done_(std::move(result));
    Release();
  }

  CallSpec spec_;
  Req request_;
  const Method method_;
  Done done_;
  std::string target_ ABSL_GUARDED_BY(mu_);
  Resp response_;

  uint32_t shard_ = 0;
  std::optional<SessionTable::Ticket> ticket_;
  std::string avoid_;  // the node that failed last
  size_t rotation_ = 0;
  int retries_ = 0;
  int hint_hops_ = 0;
  int route_refreshes_ = 0;
  int token_refreshes_ = 0;
  bool signed_in_ = false;  // the first attempt waited for a token
  int renewals_ = 0;
  bool need_map_ = false;
  bool maybe_applied_ = false;  // an attempt of this write may have been applied
  absl::Status last_error_;
};

KeyValue FromProto(const v1::KeyValue& kv) {
  return {kv.key(), kv.value(), kv.version(), kv.create_revision(), kv.mod_revision(), kv.lease()};
}

CallSpec ReadSpec(const Core& core, const CallOptions& options, absl::Time deadline) {
  CallSpec spec;
  spec.consistency = options.consistency;
  spec.max_staleness = options.max_staleness;
  // With the read cache on, a kStale read's budget is split: half for the
  // replica's lag, half for the age of a cached copy.
  if (core.cache().enabled()) spec.max_staleness = options.max_staleness / 2;
  spec.deadline = deadline;
  return spec;
}

// Turns a prefix into the range [prefix, PrefixEnd(prefix)); kInvalidArgument
// for a prefix with start/end, or start after end.
absl::Status ToRange(ScanOptions* scan) {
  if (!scan->prefix.empty()) {
    if (!scan->start.empty() || !scan->end.empty()) {
      return absl::InvalidArgumentError("scan: prefix excludes start and end");
    }
    scan->start = scan->prefix;
    scan->end = PrefixEnd(scan->prefix);
  }
  if (!scan->end.empty() && scan->start > scan->end) {
    return absl::InvalidArgumentError("scan: start is after end");
  }
  return absl::OkStatus();
}

// A cluster-wide scan: one chain of pages per shard, in parallel, merged in
// key order when every shard is done.
class ScanCall {
 public:
  static void Start(Core* core, ScanOptions scan, const CallOptions& options,
                    Callback<ScanResult> done) {
    if (absl::Status s = ToRange(&scan); !s.ok()) return done(s);
    const absl::Time deadline = EffectiveDeadline(core->options(), options);
    auto* call =
        new ScanCall(core, std::move(scan), ReadSpec(*core, options, deadline), std::move(done));
    if (core->routes().has_map()) return call->Launch(core->routes().num_shards());
    MapCall::Start(core, deadline, [call](absl::StatusOr<v1::ClusterMap> map) {
      if (!map.ok()) {
        call->done_(map.status());
        delete call;
        return;
      }
      call->Launch(map->num_shards());
    });
  }

 private:
  ScanCall(Core* core, ScanOptions scan, CallSpec spec, Callback<ScanResult> done)
      : core_(core), scan_(std::move(scan)), spec_(std::move(spec)), done_(std::move(done)) {}

  void Launch(uint32_t num_shards) {
    {
      absl::MutexLock lock(&mu_);
      pending_ = num_shards;
      per_shard_.resize(num_shards);
      spec_.fixed_num_shards = num_shards;
    }
    for (uint32_t shard = 0; shard < num_shards; ++shard) NextPage(shard, "", 0);
  }

  void NextPage(uint32_t shard, std::string continuation, size_t have) {
    CallSpec spec = spec_;
    spec.fixed_shard = shard;
    v1::ScanRequest request;
    request.set_start(scan_.start);
    request.set_end(scan_.end);
    uint32_t page = std::max<uint32_t>(1, core_->options().scan_page_size);
    if (scan_.limit > 0) page = std::min<uint32_t>(page, scan_.limit - static_cast<uint32_t>(have));
    request.set_limit(page);
    request.set_continuation(std::move(continuation));
    KvCall<v1::ScanRequest, v1::ScanResponse>::Start(
        core_, std::move(spec), std::move(request), &AsyncKv::Scan,
        [this, shard](absl::StatusOr<v1::ScanResponse> page) { OnPage(shard, std::move(page)); });
  }

  void OnPage(uint32_t shard, absl::StatusOr<v1::ScanResponse> page) {
    std::string next;
    size_t have = 0;
    {
      absl::MutexLock lock(&mu_);
      if (!page.ok()) {
        if (error_.ok()) error_ = page.status();
      } else if (error_.ok()) {
        Shard& s = per_shard_[shard];
        for (const v1::KeyValue& kv : page->kvs()) s.kvs.push_back(FromProto(kv));
        s.exhausted = page->continuation().empty();
        have = s.kvs.size();
        if (!s.exhausted && (scan_.limit == 0 || have < scan_.limit)) next = page->continuation();
      }
      if (next.empty() && --pending_ > 0) return;
    }
    if (!next.empty()) return NextPage(shard, std::move(next), have);
    Complete();  // the last shard finished: no other thread touches this call
  }

  void Complete() {
    absl::StatusOr<ScanResult> result;
    bool restart = false;
    {
      absl::MutexLock lock(&mu_);
      if (IsShardLayoutChanged(error_) && restarts_ < kMaxScanRestarts) {
        // A split: nothing was returned yet, so scan again over the new
        // shards.
        ++restarts_;
        error_ = absl::OkStatus();
        per_shard_.clear();
        restart = true;
      }
    }
    if (restart) return Launch(core_->routes().num_shards());
    {
      absl::MutexLock lock(&mu_);
      if (!error_.ok()) {
        result = error_;
      } else {
        ScanResult merged;
        bool unexhausted = false;
        for (Shard& s : per_shard_) {
          unexhausted = unexhausted || !s.exhausted;
          for (KeyValue& kv : s.kvs) merged.kvs.push_back(std::move(kv));
        }
        std::sort(merged.kvs.begin(), merged.kvs.end(),
                  [](const KeyValue& a, const KeyValue& b) { return a.key < b.key; });
        if (scan_.limit > 0 && merged.kvs.size() > scan_.limit) {
          merged.kvs.resize(scan_.limit);
          merged.more = true;
        }
        // A shard cut at the limit may hold keys after the last one returned.
        if (unexhausted && !merged.kvs.empty()) merged.more = true;
        if (merged.more) merged.next_start = merged.kvs.back().key + std::string(1, '\0');
        result = std::move(merged);
      }
    }
    done_(std::move(result));
    delete this;
  }

  struct Shard {
    std::vector<KeyValue> kvs;
    bool exhausted = false;
  };

  Core* const core_;
  const ScanOptions scan_;
  CallSpec spec_;
  Callback<ScanResult> done_;
  absl::Mutex mu_;
  uint32_t pending_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Shard> per_shard_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  int restarts_ ABSL_GUARDED_BY(mu_) = 0;
};

// The per-shard buffers of Client::ScanPages, shared by the merging thread
// and the page fetches' callbacks (gRPC threads), which may outlive the
// merge (a scan that stops early leaves its fetches to finish on their own).
// Thread-safe.
class ScanBuffers {
 public:
  // A page of `limit` keys to request from `shard`, after `continuation`.
  struct Fetch {
    uint32_t shard = 0;
    std::string continuation;
    uint32_t limit = 0;
  };

  explicit ScanBuffers(uint32_t num_shards) : shards_(num_shards) {}

  // The fetches to start now: each shard not exhausted, with no fetch in
  // flight, that buffers fewer than `want` keys (the fetch is marked in
  // flight; it asks for `want` keys).
  std::vector<Fetch> Plan(uint32_t want) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    std::vector<Fetch> fetches;
    for (uint32_t i = 0; i < shards_.size(); ++i) {
      Shard& s = shards_[i];
      if (s.exhausted || s.in_flight || s.kvs.size() >= want) continue;
      s.in_flight = true;
      fetches.push_back({i, s.continuation, want});
    }
    return fetches;
  }

  // A fetch of `shard` finished.
  void OnPage(uint32_t shard, absl::StatusOr<v1::ScanResponse> page) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    Shard& s = shards_[shard];
    s.in_flight = false;
    if (!page.ok()) {
      if (error_.ok()) error_ = page.status();
      return;
    }
    for (v1::KeyValue& kv : *page->mutable_kvs()) {
      s.kvs.push_back({std::move(*kv.mutable_key()), std::move(*kv.mutable_value()), kv.version()});
    }
    s.continuation = std::move(*page->mutable_continuation());
    s.exhausted = s.continuation.empty();
  }

  // Waits until every shard buffers a key or is exhausted (its fetches,
  // planned by the caller, are in flight), or a fetch failed (its status).
  // Then moves up to `max` keys into `batch` in key order, while the next
  // key of every shard is known. Returns whether the scan is drained (every
  // shard exhausted, nothing buffered).
  absl::StatusOr<bool> Merge(size_t max, std::vector<KeyValue>* batch) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &ScanBuffers::ReadyLocked));
    if (!error_.ok()) return error_;
    while (batch->size() < max) {
      Shard* next = nullptr;
      for (Shard& s : shards_) {
        if (s.kvs.empty()) {
          if (!s.exhausted) return false;  // its next key is not known yet
          continue;
        }
        if (next == nullptr || s.kvs.front().key < next->kvs.front().key) next = &s;
      }
      if (next == nullptr) return true;
      batch->push_back(std::move(next->kvs.front()));
      next->kvs.pop_front();
    }
    return std::all_of(shards_.begin(), shards_.end(),
                       [](const Shard& s) { return s.exhausted && s.kvs.empty(); });
  }

 private:
  struct Shard {
    std::deque<KeyValue> kvs;  // fetched, not yet merged; in key order
    std::string continuation;  // where the next page starts
    bool exhausted = false;    // no page after the buffered keys
    bool in_flight = false;
  };

  bool ReadyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !error_.ok() || std::all_of(shards_.begin(), shards_.end(), [](const Shard& s) {
      return s.exhausted || !s.kvs.empty();
    });
  }

  absl::Mutex mu_;
  std::vector<Shard> shards_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

void ToProto(const TxnOp& op, v1::TxnOp* out) {
  switch (op.type) {
    case TxnOp::Type::kPut:
      out->mutable_put()->set_key(op.key);
      out->mutable_put()->set_value(op.value);
      out->mutable_put()->set_lease(op.lease);
      break;
    case TxnOp::Type::kDelete:
      out->mutable_delete_()->set_key(op.key);
      break;
    case TxnOp::Type::kGet:
      out->mutable_get()->set_key(op.key);
      break;
  }
}

v1::Compare ToProto(const Compare& c) {
  v1::Compare out;
  out.set_key(c.key);
  switch (c.target) {
    case Compare::Target::kValue:
      out.set_target(v1::Compare::TARGET_VALUE);
      break;
    case Compare::Target::kVersion:
      out.set_target(v1::Compare::TARGET_VERSION);
      break;
    case Compare::Target::kExists:
      out.set_target(v1::Compare::TARGET_EXISTS);
      break;
    case Compare::Target::kCreateRevision:
      out.set_target(v1::Compare::TARGET_CREATE_REVISION);
      break;
    case Compare::Target::kModRevision:
      out.set_target(v1::Compare::TARGET_MOD_REVISION);
      break;
  }
  switch (c.op) {
    case Compare::Op::kEqual:
      out.set_op(v1::Compare::OP_EQUAL);
      break;
    case Compare::Op::kNotEqual:
      out.set_op(v1::Compare::OP_NOT_EQUAL);
      break;
    case Compare::Op::kLess:
      out.set_op(v1::Compare::OP_LESS);
      break;
    case Compare::Op::kGreater:
      out.set_op(v1::Compare::OP_GREATER);
      break;
  }
  out.set_value(c.value);
  out.set_version(c.version);
  out.set_revision(c.revision);
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options) {
  if (options.endpoints.empty()) return absl::InvalidArgumentError("no endpoints");
  for (const std::string& e : options.endpoints) {
    if (e.empty()) return absl::InvalidArgumentError("empty endpoint");
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      ChannelCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  auto core = std::make_unique<Core>(std::move(options), *std::move(credentials));
  // Signs in in the background, so that the first calls mostly carry a token.
  if (core->has_credentials()) core->RefreshToken("", [](absl::Status) {});
  return std::unique_ptr<Client>(new Client(std::move(core)));
}

Client::Client(std::unique_ptr<Core> core) : core_(std::move(core)) {}

Client::~Client() = default;

void Client::PutAsync(const std::string& key, const std::string& value, const CallOptions& options,
                      Callback<PutResult> done) {
  PutAsync(key, value, /*return_previous=*/false, options, std::move(done));
}

void Client::PutAsync(const std::string& key, const std::string& value, bool return_previous,
                      const CallOptions& options, Callback<PutResult> done) {
  CallSpec spec;
  spec.write = true;
  spec.deadline = EffectiveDeadline(core_->options(), options);
  spec.keys = {key};
  v1::PutRequest request;
  request.set_key(key);
  request.set_value(value);
  request.set_return_previous(return_previous);
  request.set_lease(options.lease);
  Core* core = core_.get();
  core->cache().BeginWrite(key);
  KvCall<v1::PutRequest, v1::PutResponse>::Start(
      core, std::move(spec), std::move(request), &AsyncKv::Put,
      [core, key, value, done = std::move(done)](absl::StatusOr<v1::PutResponse> r) {
        if (!r.ok()) {
          core->cache().EndWrite(key, std::nullopt);
          return done(r.status());
        }
        core->cache().EndWrite(key, CachedValue{true, value, r->version(), absl::Now()});
        PutResult result;
        result.version = r->version();
        result.revision = r->header().revision();
        if (r->had_previous() && r->has_previous()) result.previous = FromProto(r->previous());
        done(std::move(result));
      });
}

absl::StatusOr<PutResult> Client::Put(const std::string& key, const std::string& value,
                                      const CallOptions& options) {
  return ToFuture<PutResult>(
             [&](Callback<PutResult> cb) { PutAsync(key, value, options, std::move(cb)); })
      .get();
}

void Client::GetAsync(const std::string& key, const CallOptions& options, Callback<KeyValue> done) {
  Core* core = core_.get();
  const absl::Time start = absl::Now();
  CallSpec spec = ReadSpec(*core, options, EffectiveDeadline(core->options(), options));
  spec.keys = {key};
  if (options.consistency == Consistency::kStale && core->cache().enabled()) {
    std::optional<CachedValue> hit = core->cache().Lookup(key, start, spec.max_staleness);
    if (hit.has_value()) {
      if (!hit->found) return done(absl::NotFoundError("key not found"));
      return done(KeyValue{key, std::move(hit->value), hit->version});
    }
  }
  const uint64_t token = core->cache().ReadToken();
  v1::GetRequest request;
  request.set_key(key);
  KvCall<v1::GetRequest, v1::GetResponse>::Start(
      core, std::move(spec), std::move(request), &AsyncKv::Get,
      [core, key, start, token, done = std::move(done)](absl::StatusOr<v1::GetResponse> r) {
        if (!r.ok()) return done(r.status());
        core->cache().Fill(key, CachedValue{r->found(), r->kv().value(), r->kv().version(), start},
                           token);
        if (!r->found()) return done(absl::NotFoundError("key not found"));
        done(FromProto(r->kv()));
      });
}

absl::StatusOr<KeyValue> Client::Get(const std::string& key, const CallOptions& options) {
  return ToFuture<KeyValue>([&](Callback<KeyValue> cb) { GetAsync(key, options, std::move(cb)); })
      .get();
}

void Client::DeleteAsync(const std::string& key, const CallOptions& options, Callback<bool> done) {
  CallSpec spec;
  spec.write = true;
  spec.deadline = EffectiveDeadline(core_->options(), options);
  spec.keys = {key};
  v1::DeleteRequest request;
  request.set_key(key);
  Core* core = core_.get();
  core->cache().BeginWrite(key);
  KvCall<v1::DeleteRequest, v1::DeleteResponse>::Start(
      core, std::move(spec), std::move(request), &AsyncKv::Delete,
      [core, key, done = std::move(done)](absl::StatusOr<v1::DeleteResponse> r) {
        if (!r.ok()) {
          core->cache().EndWrite(key, std::nullopt);
          return done(r.status());
        }
        core->cache().EndWrite(key, CachedValue{false, "", 0, absl::Now()});
        done(r->deleted());
      });
}

absl::StatusOr<bool> Client::Delete(const std::string& key, const CallOptions& options) {
  return ToFuture<bool>([&](Callback<bool> cb) { DeleteAsync(key, options, std::move(cb)); }).get();
}

void Client::ScanAsync(const ScanOptions& scan, const CallOptions& options,
                       Callback<ScanResult> done) {
  ScanCall::Start(core_.get(), scan, options, std::move(done));
}

absl::StatusOr<ScanResult> Client::Scan(const ScanOptions& scan, const CallOptions& options) {
  return ToFuture<ScanResult>(
             [&](Callback<ScanResult> cb) { ScanAsync(scan, options, std::move(cb)); })
      .get();
}

// A k-way merge of the shards' page chains (ScanBuffers): the calling thread
// merges and hands batches to `on_batch`; each shard's next page is fetched
// while its buffer holds less than a page. With a limit, a shard is asked
// for at most one key more than the limit still allows: that key, if any,
// tells `more`.
absl::StatusOr<ScanResult> Client::ScanPages(
    const ScanOptions& scan_options, const CallOptions& options,
    const std::function<bool(std::vector<KeyValue>&)>& on_batch) {
  ScanOptions scan = scan_options;
  if (absl::Status s = ToRange(&scan); !s.ok()) return s;
  Core* core = core_.get();
  if (!core->routes().has_map()) {
    absl::StatusOr<v1::ClusterMap> map = GetClusterMap(options);
    if (!map.ok()) return map.status();
  }
  uint32_t num_shards = core->routes().num_shards();
  const uint32_t page = std::max<uint32_t>(1, core->options().scan_page_size);
  auto buffers = std::make_shared<ScanBuffers>(num_shards);
  ScanResult result;
  uint64_t handed = 0;  // keys handed to on_batch
  std::string last_key;
  std::vector<KeyValue> batch;
  int restarts = 0;
  // Each turn either hands keys over or waits for a page: it ends when the
  // shards are drained, the limit is reached, a page fails or on_batch stops.
  while (true) {
    const uint64_t left = scan.limit == 0 ? UINT64_MAX : scan.limit - handed;
    const uint32_t want =
        scan.limit == 0 ? page : static_cast<uint32_t>(std::min<uint64_t>(page, left + 1));
    for (ScanBuffers::Fetch& f : buffers->Plan(want)) {
      CallSpec spec = ReadSpec(*core, options, EffectiveDeadline(core->options(), options));
      spec.fixed_shard = f.shard;
      spec.fixed_num_shards = num_shards;
      v1::ScanRequest request;
      request.set_start(scan.start);
      request.set_end(scan.end);
      request.set_limit(f.limit);
      request.set_continuation(std::move(f.continuation));
      KvCall<v1::ScanRequest, v1::ScanResponse>::Start(
          core, std::move(spec), std::move(request), &AsyncKv::Scan,
          [buffers, shard = f.shard](absl::StatusOr<v1::ScanResponse> r) {
            buffers->OnPage(shard, std::move(r));
          });
    }
    absl::StatusOr<bool> drained = buffers->Merge(std::min<uint64_t>(page, left), &batch);
    if (IsShardLayoutChanged(drained.status()) && restarts++ < kMaxScanRestarts) {
      // A split: the keys handed so far are every key up to last_key, so
      // the rest is the same scan from just after it, over the new shards.
      // (Pages in flight land in the old buffers, then dropped.)
      if (handed > 0) scan.start = last_key + std::string(1, '\0');
      if (!scan.end.empty() && scan.start >= scan.end) return result;
      num_shards = core->routes().num_shards();
      buffers = std::make_shared<ScanBuffers>(num_shards);
      continue;
    }
    if (!drained.ok()) return drained.status();
    if (left == 0) {  // the limit is reached: is there a key after the last one?
      result.more = !*drained;
      if (result.more) result.next_start = last_key + std::string(1, '\0');
      return result;
    }
    if (!batch.empty()) {
      handed += batch.size();
      last_key = batch.back().key;
      if (!on_batch(batch)) return absl::CancelledError("scan stopped by its consumer");
      batch.clear();
    }
    if (*drained) return result;
  }
}

void Client::TxnAsync(const TxnRequest& txn, const CallOptions& options, Callback<TxnResult> done) {
  CallSpec spec;
  spec.write = true;
  spec.deadline = EffectiveDeadline(core_->options(), options);
  v1::TxnRequest request;
  std::vector<std::string> written;
  for (const Compare& c : txn.compares) {
    *request.add_compares() = ToProto(c);
    spec.keys.push_back(c.key);
  }
  for (const TxnOp& op : txn.success) {
    ToProto(op, request.add_success());
    spec.keys.push_back(op.key);
    if (op.type != TxnOp::Type::kGet) written.push_back(op.key);
  }
  for (const TxnOp& op : txn.failure) {
    ToProto(op, request.add_failure());
    spec.keys.push_back(op.key);
    if (op.type != TxnOp::Type::kGet) written.push_back(op.key);
  }
  if (spec.keys.empty()) return done(absl::InvalidArgumentError("empty transaction"));
  std::sort(written.begin(), written.end());
  written.erase(std::unique(written.begin(), written.end()), written.end());
  Core* core = core_.get();
  for (const std::string& key : written) core->cache().BeginWrite(key);
  KvCall<v1::TxnRequest, v1::TxnResponse>::Start(
      core, std::move(spec), std::move(request), &AsyncKv::Txn,
      [core, written, txn, done = std::move(done)](absl::StatusOr<v1::TxnResponse> r) {
        // The new state of the written keys is not all in the response:
        // leave them uncached.
        for (const std::string& key : written) core->cache().EndWrite(key, std::nullopt);
        if (!r.ok()) return done(r.status());
        const std::vector<TxnOp>& ops = r->succeeded() ? txn.success : txn.failure;
        TxnResult result;
        result.succeeded = r->succeeded();
        for (int i = 0; i < r->results_size(); ++i) {
          const v1::TxnOpResult& in = r->results(i);
          TxnOpResult out;
          if (i < static_cast<int>(ops.size())) out.key = ops[i].key;
          if (in.has_put()) {
            out.type = TxnOp::Type::kPut;
            out.version = in.put().version();
            out.found = in.put().had_previous();
          } else if (in.has_delete_()) {
            out.type = TxnOp::Type::kDelete;
            out.found = in.delete_().deleted();
          } else {
            out.type = TxnOp::Type::kGet;
            out.found = in.get().found();
            out.value = in.get().kv().value();
            out.version = in.get().kv().version();
            out.create_revision = in.get().kv().create_revision();
            out.mod_revision = in.get().kv().mod_revision();
            out.lease = in.get().kv().lease();
          }
          result.results.push_back(std::move(out));
        }
        result.revision = r->header().revision();
        done(std::move(result));
      });
}

absl::StatusOr<TxnResult> Client::Txn(const TxnRequest& txn, const CallOptions& options) {
  return ToFuture<TxnResult>([&](Callback<TxnResult> cb) { TxnAsync(txn, options, std::move(cb)); })
      .get();
}

void Client::CompareAndSetAsync(const std::string& key, const Compare& compare,
                                const std::string& new_value, const CallOptions& options,
                                Callback<uint64_t> done) {
  TxnRequest txn;
  Compare c = compare;
  c.key = key;
  txn.compares.push_back(std::move(c));
  txn.success.push_back(TxnOp{TxnOp::Type::kPut, key, new_value});
  TxnAsync(txn, options, [done = std::move(done)](absl::StatusOr<TxnResult> r) {
    if (!r.ok()) return done(r.status());
    if (!r->succeeded || r->results.empty()) {
      return done(absl::AbortedError("compare failed"));
    }
    done(r->results[0].version);
  });
}

absl::StatusOr<uint64_t> Client::CompareAndSet(const std::string& key, const std::string& expected,
                                               const std::string& new_value,
                                               const CallOptions& options) {
  Compare c;
  c.target = Compare::Target::kValue;
  c.op = Compare::Op::kEqual;
  c.value = expected;
  return ToFuture<uint64_t>([&](Callback<uint64_t> cb) {
           CompareAndSetAsync(key, c, new_value, options, std::move(cb));
         })
      .get();
}

absl::StatusOr<uint64_t> Client::CompareAndSetVersion(const std::string& key,
                                                      uint64_t expected_version,
                                                      const std::string& new_value,
                                                      const CallOptions& options) {
  Compare c;
  c.target = Compare::Target::kVersion;
  c.op = Compare::Op::kEqual;
  c.version = expected_version;
  return ToFuture<uint64_t>([&](Callback<uint64_t> cb) {
           CompareAndSetAsync(key, c, new_value, options, std::move(cb));
         })
      .get();
}

absl::StatusOr<v1::ClusterMap> Client::GetClusterMap(const CallOptions& options) {
  const absl::Time deadline = EffectiveDeadline(core_->options(), options);
  return ToFuture<v1::ClusterMap>([&](Callback<v1::ClusterMap> cb) {
           MapCall::Start(core_.get(), deadline, std::move(cb));
         })
      .get();
}

absl::StatusOr<v1::NodeStatusResponse> Client::NodeStatus(const std::string& address,
                                                          const CallOptions& options) {
  Core::Node* node = core_->GetNode(address);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(EffectiveDeadline(core_->options(), options)));
  v1::NodeStatusResponse response;
  absl::Status s = FromGrpcStatus(node->cluster.Next()->NodeStatus(&context, {}, &response));
  if (!s.ok()) return s;
  return response;
}

absl::Status Client::Drain(const std::string& address, uint64_t node_id,
                           const CallOptions& options) {
  Core::Node* node = core_->GetNode(address);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(EffectiveDeadline(core_->options(), options)));
  v1::DrainRequest request;
  request.set_node_id(node_id);
  v1::DrainResponse response;
  return FromGrpcStatus(node->cluster.Next()->Drain(&context, request, &response));
}

namespace {

// One attempt of a Cluster RPC that changes the map at `node`: the map
// version that records the change.
template <typename Request, typename Response>
absl::StatusOr<uint64_t> ChangeMap(
    Client::Core* core, const std::string& address, const CallOptions& options,
    grpc::Status (v1::Cluster::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
    const Request& request) {
  Core::Node* node = core->GetNode(address);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(EffectiveDeadline(core->options(), options)));
  Response response;
  absl::Status s = FromGrpcStatus((node->cluster.Next()->*method)(&context, request, &response));
  if (!s.ok()) return s;
  return response.map_version();
}

}  // namespace

absl::StatusOr<uint64_t> Client::MoveReplica(const std::string& address, uint32_t shard,
                                             uint64_t from_node, uint64_t to_node,
                                             const CallOptions& options) {
  v1::MoveReplicaRequest request;
  request.set_shard(shard);
  request.set_from_node(from_node);
  request.set_to_node(to_node);
  return ChangeMap(core_.get(), address, options, &v1::Cluster::Stub::MoveReplica, request);
}

absl::StatusOr<uint64_t> Client::AddMember(const std::string& address, const v1::Member& member,
                                           const CallOptions& options) {
  v1::AddMemberRequest request;
  *request.mutable_member() = member;
  return ChangeMap(core_.get(), address, options, &v1::Cluster::Stub::AddMember, request);
}

absl::StatusOr<uint64_t> Client::RemoveMember(const std::string& address, uint64_t node_id,
                                              const CallOptions& options) {
  v1::RemoveMemberRequest request;
  request.set_node_id(node_id);
  return ChangeMap(core_.get(), address, options, &v1::Cluster::Stub::RemoveMember, request);
}

absl::StatusOr<uint64_t> Client::SplitShard(const std::string& address, uint32_t shard,
                                            const CallOptions& options) {
  v1::SplitShardRequest request;
  request.set_shard(shard);
  return ChangeMap(core_.get(), address, options, &v1::Cluster::Stub::SplitShard, request);
}

ReadCacheStats Client::read_cache_stats() const { return core_->cache().stats(); }

absl::StatusOr<std::unique_ptr<Watcher>> StartWatch(Client::Core* core,
                                                    std::function<absl::Status()> refresh_map,
                                                    const WatchOptions& options);

absl::StatusOr<std::unique_ptr<Watcher>> Client::Watch(const WatchOptions& options) {
  // A watch stream's caller is identified when it opens: sign in first.
  if (core_->has_credentials() && core_->token().empty() && core_->token_due()) {
    absl::Status signed_in = core_->RefreshTokenSync("");
    if (!signed_in.ok()) return signed_in;
  }
  return StartWatch(
      core_.get(), [this] { return GetClusterMap().status(); }, options);
}

}  // namespace tessera::client
