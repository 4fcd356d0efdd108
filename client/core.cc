#include "client/core.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/random/distributions.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "proto/grpc_status.h"
#include "proto/status_macros.h"

namespace tessera::client {

Client::Core::Core(ClientOptions options, std::shared_ptr<grpc::ChannelCredentials> credentials)
    : options_(std::move(options)),
      credentials_(std::move(credentials)),
      cache_(options_.read_cache_bytes) {}

Client::Core::~Core() {
  std::vector<std::shared_ptr<grpc::ClientContext>> contexts;
  {
    absl::MutexLock lock(&calls_mu_);
    shutting_down_ = true;
    // Under the lock: a call unregisters (and is deleted) only after taking
    // calls_mu_, so every pointer here is alive. Cancel() only flags.
    for (CallBase* call : calls_) {
      if (std::shared_ptr<grpc::ClientContext> context = call->Cancel()) {
        contexts.push_back(std::move(context));
      }
    }
  }
  // gRPC may run completions inline in TryCancel: no lock held here.
  for (const auto& context : contexts) context->TryCancel();
  // The Batch streams: their attempts fail (the calls see they were
  // cancelled) and their contexts go, awaited below.
  std::vector<BatchChannel*> batches;
  {
    absl::MutexLock lock(&nodes_mu_);
    for (const auto& [address, node] : nodes_) {
      if (node->batch != nullptr) batches.push_back(node->batch.get());
    }
  }
  for (BatchChannel* batch : batches) batch->Shutdown();
  contexts.clear();   // counted in contexts_, awaited below
  timer_.Shutdown();  // pending retries complete with kCancelled
  {
    absl::MutexLock lock(&calls_mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(calls_mu_) { return calls_.empty(); };
    calls_mu_.Await(absl::Condition(&idle));
  }
  // A call unregisters before it is deleted (with its context), and the
  // thread that started an attempt may still hold that attempt's context
  // after the call finished on another thread: wait for the contexts too,
  // so the channels (nodes_) are destroyed with their last reference here,
  // on this thread. No call is left to make a new one.
  absl::MutexLock lock(&contexts_mu_);
  auto released = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(contexts_mu_) { return contexts_ == 0; };
  contexts_mu_.Await(absl::Condition(&released));
}

std::string Client::Core::TokenForCall() {
  if (!has_credentials()) return "";
  std::string token;
  bool refresh = false;
  {
    absl::MutexLock lock(&token_mu_);
    token = token_;
    refresh = !refreshing_ && absl::Now() >= refresh_at_;
  }
  // In the background: this call goes with what is held now.
  if (refresh) RefreshToken(token, [](absl::Status) {});
  return token;
}

std::shared_ptr<grpc::ClientContext> Client::Core::NewContext(absl::Time deadline) {
  const std::string token = TokenForCall();
  {
    absl::MutexLock lock(&contexts_mu_);
    ++contexts_;
  }
  std::shared_ptr<grpc::ClientContext> context(
      new grpc::ClientContext, [this](grpc::ClientContext* c) {
        delete c;  // drops a channel reference; the Core's stubs still hold one
        absl::MutexLock lock(&contexts_mu_);
        --contexts_;  // the last touch of the Core
      });
  context->set_deadline(absl::ToChronoTime(deadline));
  if (!token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
  return context;
}

std::string Client::Core::token() const {
  absl::MutexLock lock(&token_mu_);
  return token_;
}

bool Client::Core::token_due() const {
  absl::MutexLock lock(&token_mu_);
  return absl::Now() >= refresh_at_;
}

void Client::Core::RefreshToken(const std::string& stale, std::function<void(absl::Status)> done) {
  bool start = false;
  {
    absl::MutexLock lock(&token_mu_);
    if (!refreshing_ && token_ != stale) {
      // Another refresh has already replaced it.
    } else {
      token_waiters_.push_back(std::move(done));
      start = !refreshing_;
      refreshing_ = true;
      done = nullptr;
    }
  }
  if (done) return done(absl::OkStatus());
  if (!start) return;
  std::vector<std::string> candidates = options_.endpoints;
  for (const std::string& a : routes_.MemberAddresses()) {
    if (std::find(candidates.begin(), candidates.end(), a) == candidates.end()) {
      candidates.push_back(a);
    }
  }
  Authenticate(std::move(candidates), 0, absl::UnavailableError("no member to authenticate with"));
}

absl::Status Client::Core::RefreshTokenSync(const std::string& stale) {
  absl::Notification done;
  absl::Status result;
  RefreshToken(stale, [&](absl::Status status) {
    result = std::move(status);
    done.Notify();
  });
  done.WaitForNotification();  // bounded: each candidate gets attempt_timeout
  return result;
}

void Client::Core::Authenticate(std::vector<std::string> candidates, size_t i, absl::Status last) {
  if (i >= candidates.size()) {
    // `last` OK: a node said auth is off (and none signed us in).
    return TokenDone(last, "", last.ok() ? absl::Seconds(10) : absl::Seconds(1));
  }
  struct Call {
    std::shared_ptr<grpc::ClientContext> context;
    v1::AuthenticateRequest request;
    v1::AuthenticateResponse response;
  };
  auto call = std::make_shared<Call>();
  {
    absl::MutexLock lock(&contexts_mu_);
    ++contexts_;
  }
  call->context =
      std::shared_ptr<grpc::ClientContext>(new grpc::ClientContext, [this](grpc::ClientContext* c) {
        delete c;
        absl::MutexLock lock(&contexts_mu_);
        --contexts_;
      });
  call->context->set_deadline(absl::ToChronoTime(absl::Now() + options_.attempt_timeout));
  call->request.set_name(options_.user);
  call->request.set_password(options_.password);
  Node* node = GetNode(candidates[i]);
  node->auth.Next()->async()->Authenticate(
      call->context.get(), &call->request, &call->response,
      [this, call, candidates = std::move(candidates), i](grpc::Status s) mutable {
        absl::Status status = FromGrpcStatus(s);
        if (status.ok()) {
          const absl::Duration ttl = absl::Milliseconds(call->response.ttl_ms());
          return TokenDone(absl::OkStatus(), call->response.token(), ttl * 2 / 3);
        }
        if (status.code() == absl::StatusCode::kFailedPrecondition) {
          // Auth is not enabled on that node. Another may have heard of it
          // being enabled already (each follows the metadata group on its
          // own): ask the rest; if none signs us in, no token, and look
          // again now and then.
          if (i + 1 < candidates.size()) {
            return Authenticate(std::move(candidates), i + 1, absl::OkStatus());
          }
          return TokenDone(absl::OkStatus(), "", absl::Seconds(10));
        }
        if (status.code() == absl::StatusCode::kUnavailable ||
            status.code() == absl::StatusCode::kDeadlineExceeded ||
            status.code() == absl::StatusCode::kCancelled) {
          return Authenticate(std::move(candidates), i + 1, std::move(status));
        }
        TokenDone(std::move(status), "", absl::Seconds(1));
      });
}

void Client::Core::TokenDone(absl::Status status, std::string token, absl::Duration refresh_in) {
  std::vector<std::function<void(absl::Status)>> waiters;
  {
    absl::MutexLock lock(&token_mu_);
    if (status.ok()) token_ = std::move(token);
    refresh_at_ = absl::Now() + refresh_in;
    refreshing_ = false;
    waiters.swap(token_waiters_);
  }
  for (auto& done : waiters) done(status);
}

Client::Core::Node* Client::Core::GetNode(const std::string& address) {
  absl::MutexLock lock(&nodes_mu_);
  std::unique_ptr<Node>& node = nodes_[address];
  if (node == nullptr) {
    node = std::make_unique<Node>(options_.breaker);
    node->address = address;
    grpc::ChannelArguments args;
    // Reconnect to a restarted node quickly (gRPC's default grows to minutes).
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    const int channels = std::max(1, options_.channels_per_node);
    // Channels with identical arguments share one connection (gRPC's global
    // subchannel pool): a pool of their own makes each its own connection.
    if (channels > 1) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    // Numeric IPv4 addresses skip the DNS resolver and its re-resolution backoff.
    const bool numeric = !address.empty() && absl::ascii_isdigit(address[0]);
    for (int i = 0; i < channels; ++i) {
      // The stubs own the channel.
      std::shared_ptr<grpc::Channel> channel =
          grpc::CreateCustomChannel(numeric ? "ipv4:" + address : address, credentials_, args);
      node->kv.Add(v1::KV::NewStub(channel));
      node->cluster.Add(v1::Cluster::NewStub(channel));
      node->lease.Add(v1::Lease::NewStub(channel));
      node->auth.Add(v1::Auth::NewStub(channel));
    }
    if (options_.use_batch_stream) {
      node->batch = std::make_unique<BatchChannel>(
          address, node->kv.Next(), &timer_, [this] { return NewContext(absl::InfiniteFuture()); },
          options_.batch_max_ops, options_.batch_max_bytes,
          has_credentials() ? std::function<std::string()>([this] { return TokenForCall(); })
                            : nullptr);
    }
  }
  return node.get();
}

Client::Core::Node* Client::Core::FindNode(const std::string& address) const {
  absl::MutexLock lock(&nodes_mu_);
  auto it = nodes_.find(address);
  return it == nodes_.end() ? nullptr : it->second.get();
}

absl::Status Client::Core::UpdateMap(const v1::ClusterMap& map) {
  std::vector<std::pair<uint32_t, uint32_t>> splits;
  TESSERA_RETURN_IF_ERROR(routes_.Update(map, nullptr, &splits));
  for (const auto& [child, parent] : splits) sessions_.Split(parent, child);
  return absl::OkStatus();
}

absl::Duration Client::Core::Backoff(int retry) {
  absl::MutexLock lock(&rng_mu_);
  return FullJitterBackoff(options_.backoff, retry, rng_);
}

void Client::Core::Node::PushBack(absl::Time until) {
  const int64_t ns = absl::ToUnixNanos(until);
  int64_t seen = busy_until_ns_.load(std::memory_order_relaxed);
  while (seen < ns && !busy_until_ns_.compare_exchange_weak(seen, ns, std::memory_order_relaxed)) {
  }
}

absl::Time Client::Core::Node::BusyUntil() const {
  const int64_t ns = busy_until_ns_.load(std::memory_order_relaxed);
  return ns == INT64_MIN ? absl::InfinitePast() : absl::FromUnixNanos(ns);
}

absl::Duration Client::Core::RetryAfter(absl::Duration hint) {
  absl::MutexLock lock(&rng_mu_);
  return JitteredRetryAfter(hint, rng_);
}

size_t Client::Core::RandomIndex(size_t n) {
  if (n <= 1) return 0;
  absl::MutexLock lock(&rng_mu_);
  return absl::Uniform<size_t>(rng_, 0, n);
}

void Client::Core::NoteWriteIndex(uint32_t shard, uint64_t index) {
  absl::MutexLock lock(&index_mu_);
  uint64_t& current = write_index_[shard];
  current = std::max(current, index);
}

uint64_t Client::Core::MinReadIndex(uint32_t shard) const {
  absl::MutexLock lock(&index_mu_);
  auto it = write_index_.find(shard);
  return it == write_index_.end() ? 0 : it->second;
}

bool Client::Core::Register(CallBase* call) {
  absl::MutexLock lock(&calls_mu_);
  if (shutting_down_) return false;
  calls_.insert(call);
  return true;
}

void Client::Core::Unregister(CallBase* call) {
  absl::MutexLock lock(&calls_mu_);
  calls_.erase(call);
}

std::string Client::Core::lease_leader() const {
  absl::MutexLock lock(&lease_mu_);
  return lease_leader_;
}

void Client::Core::set_lease_leader(std::string address) {
  absl::MutexLock lock(&lease_mu_);
  lease_leader_ = std::move(address);
}

absl::Time EffectiveDeadline(const ClientOptions& client, const CallOptions& call) {
  const absl::Time now = absl::Now();
  if (call.deadline != absl::InfiniteFuture()) {
    return call.timeout > absl::ZeroDuration() ? std::min(call.deadline, now + call.timeout)
                                               : call.deadline;
  }
  return now + (call.timeout > absl::ZeroDuration() ? call.timeout : client.default_timeout);
}

}  // namespace tessera::client
