// Internal: the shared state behind a Client (routes, sessions, nodes, read
// cache, timer) and the registry of calls in flight. Not part of the public
// API; tests reach it through Client::core_for_testing().
//
// Thread-safe. Owned by the Client; outlives every call and every gRPC
// context of a call (the Client's destructor cancels calls and waits for
// both before destroying it).
#ifndef TESSERA_CLIENT_CORE_H_
#define TESSERA_CLIENT_CORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/backoff.h"
#include "client/batch_stream.h"
#include "client/client.h"
#include "client/read_cache.h"
#include "client/routing.h"
#include "client/sessions.h"
#include "client/timer.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "tessera/kv.grpc.pb.h"

namespace tessera::client {

// One call in flight (Put, Get, a page of a Scan, a map fetch, ...).
class CallBase {
 public:
  virtual ~CallBase() = default;
  // Flags the call as cancelled (its next step completes it with
  // kCancelled) and returns the context of its RPC in flight, if any, for
  // the caller to TryCancel() with no lock held.
  virtual std::shared_ptr<grpc::ClientContext> Cancel() = 0;
};

// The stubs of one service over a node's ClientOptions::channels_per_node
// channels. Filled once when the node is created, then thread-safe.
template <typename Stub>
class StubSet {
 public:
  void Add(std::unique_ptr<Stub> stub) { stubs_.push_back(std::move(stub)); }
  // The next stub, round-robin.
  Stub* Next() {
    if (stubs_.size() == 1) return stubs_[0].get();
    return stubs_[next_.fetch_add(1, std::memory_order_relaxed) % stubs_.size()].get();
  }

 private:
  std::vector<std::unique_ptr<Stub>> stubs_;
  std::atomic<uint64_t> next_{0};
};

// A call's deadline: CallOptions::deadline (capped by its timeout), else
// now + its timeout, else now + ClientOptions::default_timeout.
absl::Time EffectiveDeadline(const ClientOptions& client, const CallOptions& call);

class Client::Core {
 public:
  // One cluster member as seen by this client: its channels (one TCP
  // connection each) reused by every call, stubs, health, and the requests
  // outstanding on it.
  struct Node {
    std::string address;
    StubSet<v1::KV::Stub> kv;
    StubSet<v1::Cluster::Stub> cluster;
    StubSet<v1::Lease::Stub> lease;
    StubSet<v1::Auth::Stub> auth;
    // The node's KV.Batch stream (over its first channel), when
    // ClientOptions::use_batch_stream.
    std::unique_ptr<BatchChannel> batch;
    CircuitBreaker breaker;
    std::atomic<int64_t> outstanding{0};
    std::atomic<uint64_t> attempts{0};  // every attempt sent (tests, status)
    explicit Node(CircuitBreakerOptions options) : breaker(options) {}

    // Server pushback: the node refused a call for overload and said when
    // it expects room (ErrorDetail.retry_after). Until then no request of
    // this client is sent there: they wait here instead of crossing the
    // network only to be refused (with 1 MiB values the refusals themselves
    // crowded out the work). Thread-safe.
    void PushBack(absl::Time until);
    // When the node said it expects room (InfinitePast if it did not).
    absl::Time BusyUntil() const;

   private:
    std::atomic<int64_t> busy_until_ns_{INT64_MIN};
  };

  Core(ClientOptions options, std::shared_ptr<grpc::ChannelCredentials> credentials);
  // Cancels calls in flight, waits for them, stops the timer.
  ~Core();

  const ClientOptions& options() const { return options_; }
  RouteTable& routes() { return routes_; }
  SessionTable& sessions() { return sessions_; }
  // routes().Update(map), and the shards a split made continue their
  // parents' sessions (SessionTable::Split).
  absl::Status UpdateMap(const v1::ClusterMap& map);
  ReadCache& cache() { return cache_; }
  const ReadCache& cache() const { return cache_; }
  TimerQueue& timer() { return timer_; }

  // The node at `address`, created (with its channel) on first use; the
  // pointer stays valid for the Core's lifetime.
  Node* GetNode(const std::string& address) ABSL_LOCKS_EXCLUDED(nodes_mu_);
  // nullptr if never used.
  Node* FindNode(const std::string& address) const ABSL_LOCKS_EXCLUDED(nodes_mu_);

  // A full-jitter backoff delay for retry number `retry`.
  absl::Duration Backoff(int retry) ABSL_LOCKS_EXCLUDED(rng_mu_);
  // JitteredRetryAfter(hint).
  absl::Duration RetryAfter(absl::Duration hint) ABSL_LOCKS_EXCLUDED(rng_mu_);
  // A uniform integer in [0, n).
  size_t RandomIndex(size_t n) ABSL_LOCKS_EXCLUDED(rng_mu_);

  // Read-your-writes for kStale reads: the highest applied index a write of
  // this client to `shard` was acknowledged at.
  void NoteWriteIndex(uint32_t shard, uint64_t index) ABSL_LOCKS_EXCLUDED(index_mu_);
  uint64_t MinReadIndex(uint32_t shard) const ABSL_LOCKS_EXCLUDED(index_mu_);

  // The context of one RPC attempt, with `deadline`. Every context a call
  // uses comes from here: ~Core waits until all are destroyed. A context
  // holds a reference to its channel (grpc::ClientContext::channel_), and
  // the last reference to a channel must be dropped by ~Core, never on a
  // gRPC callback thread: gRPC 1.51 tears down its shared callback
  // completion queue when the last channel using it goes, and done from one
  // of that queue's own threads the thread then polls the freed queue
  // (SIGSEGV, "ref_counted.h: prior > 0").
  // With ClientOptions::user, it carries the current token (AddToken).
  std::shared_ptr<grpc::ClientContext> NewContext(absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(contexts_mu_, token_mu_);

  // Tokens (ClientOptions::user and password; client/README.md
  // "Authentication"). The token from Auth.Authenticate goes on every call;
  // a refresh starts in the background once two thirds of its life are
  // gone, or when a call was refused UNAUTHENTICATED (RefreshToken). A
  // cluster without auth (Authenticate: FAILED_PRECONDITION) gets no token.
  bool has_credentials() const { return !options_.user.empty(); }
  std::string token() const ABSL_LOCKS_EXCLUDED(token_mu_);
  // token(), and a refresh started in the background when it is due.
  std::string TokenForCall() ABSL_LOCKS_EXCLUDED(token_mu_);
  // Whether the token should be renewed now (none held and none refused or
  // found unneeded lately, or two thirds of its life gone).
  bool token_due() const ABSL_LOCKS_EXCLUDED(token_mu_);
  // Calls `done` (on any thread, maybe this one) once a token other than
  // `stale` is held, or with the error of the attempt to get one (e.g.
  // UNAUTHENTICATED: a wrong password).
  void RefreshToken(const std::string& stale, std::function<void(absl::Status)> done)
      ABSL_LOCKS_EXCLUDED(token_mu_);
  absl::Status RefreshTokenSync(const std::string& stale) ABSL_LOCKS_EXCLUDED(token_mu_);

  // The client address of the metadata group's leader, as the last lease
  // call found it ("" if none).
  std::string lease_leader() const ABSL_LOCKS_EXCLUDED(lease_mu_);
  void set_lease_leader(std::string address) ABSL_LOCKS_EXCLUDED(lease_mu_);

  // Registers a call; false once shutting down (complete it with kCancelled).
  bool Register(CallBase* call) ABSL_LOCKS_EXCLUDED(calls_mu_);
  // After the call's callback returned; the call must not touch the Core
  // afterwards.
  void Unregister(CallBase* call) ABSL_LOCKS_EXCLUDED(calls_mu_);

 private:
  const ClientOptions options_;
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;  // of every channel
  RouteTable routes_;
  SessionTable sessions_;
  ReadCache cache_;

  mutable absl::Mutex nodes_mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Node>> nodes_ ABSL_GUARDED_BY(nodes_mu_);

  absl::Mutex rng_mu_;
  absl::BitGen rng_ ABSL_GUARDED_BY(rng_mu_);

  mutable absl::Mutex index_mu_;
  absl::flat_hash_map<uint32_t, uint64_t> write_index_ ABSL_GUARDED_BY(index_mu_);

  mutable absl::Mutex lease_mu_;
  std::string lease_leader_ ABSL_GUARDED_BY(lease_mu_);

  // Runs Auth.Authenticate on `candidates[i]`, then the next on UNAVAILABLE.
  void Authenticate(std::vector<std::string> candidates, size_t i, absl::Status last)
      ABSL_LOCKS_EXCLUDED(token_mu_);
  void TokenDone(absl::Status status, std::string token, absl::Duration refresh_in)
      ABSL_LOCKS_EXCLUDED(token_mu_);
  mutable absl::Mutex token_mu_;
  std::string token_ ABSL_GUARDED_BY(token_mu_);
  absl::Time refresh_at_ ABSL_GUARDED_BY(token_mu_) = absl::InfinitePast();
  bool refreshing_ ABSL_GUARDED_BY(token_mu_) = false;
  std::vector<std::function<void(absl::Status)>> token_waiters_ ABSL_GUARDED_BY(token_mu_);

  absl::Mutex calls_mu_;
  bool shutting_down_ ABSL_GUARDED_BY(calls_mu_) = false;
  absl::flat_hash_set<CallBase*> calls_ ABSL_GUARDED_BY(calls_mu_);

  // A leaf lock: a context may be dropped under a call's lock, and ~Core
  // takes the calls' locks under calls_mu_.
  absl::Mutex contexts_mu_;
  int64_t contexts_ ABSL_GUARDED_BY(contexts_mu_) = 0;  // made by NewContext, not yet destroyed

  TimerQueue timer_;  // last: its thread stops first
};

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_CORE_H_
