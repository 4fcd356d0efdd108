// Tessera's C++ client SDK.
//
//   ClientOptions options;
//   options.endpoints = {"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"};
//   absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
//   absl::StatusOr<PutResult> put = (*client)->Put("user:{42}:name", "ada");
//   absl::StatusOr<KeyValue> got = (*client)->Get("user:{42}:name");
//
// Where it sits (STYLE.md §2): a call hashes its key to a shard
// (proto/key_hash.h), sends the request to the shard's cached leader (or a
// replica, or for a kStale read the least loaded healthy replica) and
// retries what is safe to retry under the call's deadline: UNAVAILABLE
// (following not-leader hints), RESOURCE_EXHAUSTED, stale routes (the map in
// the error replaces the cached one) and an attempt's own timeout. Writes
// carry an exactly-once session (client/sessions.h), so a retried write
// applies at most once. See client/README.md for the semantics of every
// option.
//
// Errors (absl::Status, canonical codes of STYLE.md §3):
//   kNotFound          Get of a missing key.
//   kAborted           CompareAndSet whose compare failed (re-read, retry).
//   kInvalidArgument   bad request (empty or too large key/value, Txn keys on
//                      several shards, prefix with start/end): don't retry.
//   kUnavailable       no replica could serve the call before the deadline
//                      (reads, and writes that were never sent).
//   kDeadlineExceeded  the deadline passed; for a write its outcome is
//                      unknown (retrying it is safe only if idempotent).
//   kFailedPrecondition a retried write's session was evicted by the server:
//                      the outcome is unknown.
//   kCancelled         the Client was destroyed while the call ran.
//
// Thread-safe. Async callbacks run on a gRPC or timer thread (or inline in
// the caller, e.g. on a read-cache hit) and must not block; a callback may
// start other calls. Destroying the Client cancels calls in flight (their
// callbacks run with kCancelled) and waits for their callbacks.
#ifndef TESSERA_CLIENT_CLIENT_H_
#define TESSERA_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/backoff.h"
#include "client/lease.h"
#include "client/read_cache.h"
#include "client/tls.h"
#include "client/watch.h"
#include "tessera/kv.pb.h"

namespace tessera::client {

enum class Consistency {
  kLinearizable,  // sees every write acknowledged before the call (default)
  kLease,         // linearizable while clocks drift less than the server's bound
  kStale,         // any replica (and the read cache) at most max_staleness behind
};

// Per-call options.
struct CallOptions {
  // Overall deadline, every retry included. If InfiniteFuture, the call
  // gets now + `timeout`, or now + ClientOptions::default_timeout when
  // `timeout` is zero.
  absl::Time deadline = absl::InfiniteFuture();
  absl::Duration timeout = absl::ZeroDuration();
  // Reads only (Get, Scan).
  Consistency consistency = Consistency::kLinearizable;
  // kStale only: how far behind the leader the answer may be.
  absl::Duration max_staleness = absl::Seconds(5);
  // Put only: attach the key to this lease (GrantLease); it is deleted
  // when the lease ends. 0: none (a put without a lease detaches the key
  // from the one it had). kNotFound if the lease is not live.
  uint64_t lease = 0;
};

struct ClientOptions {
  // Any members of the cluster ("host:port" of their client API); the SDK
  // learns the others from the cluster map.
  std::vector<std::string> endpoints = {"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"};
  absl::Duration default_timeout = absl::Seconds(5);
  // Timeout of one attempt: a node that does not answer within it is
  // treated as failed and the call moves on (DEADLINE_EXCEEDED is retried
  // with the same session seq while the overall deadline allows).
  absl::Duration attempt_timeout = absl::Seconds(2);
  BackoffPolicy backoff;
  CircuitBreakerOptions breaker;
  // Bytes of the read cache; 0 (default) disables it.
  size_t read_cache_bytes = 0;
  // Items per page of one shard's scan.
  uint32_t scan_page_size = 1000;
  // gRPC channels (each its own TCP connection) per cluster member; calls
  // to a member take them round-robin. Values below 1 mean 1.
  int channels_per_node = 1;
  // Send Put/Get/Delete/Txn/Scan over one KV.Batch stream per member (many
  // operations per message; client/README.md "Batched stream") instead of
  // one unary RPC each. A member without KV.Batch (UNIMPLEMENTED) gets the
  // unary RPCs.
  bool use_batch_stream = true;
  // Operations and bytes per KV.Batch message, at most (a larger message is
  // sent as several); within the server's --max-batch-ops (256) and
  // --max-batch-bytes (8 MiB), which refuse every operation of a larger one.
  size_t batch_max_ops = 256;
  size_t batch_max_bytes = 4 << 20;
  // TLS to the client port (client/tls.h); default plaintext. Create() reads
  // the files once.
  TlsOptions tls;
  // Sign in as `user` with `password` (Auth.Authenticate): the SDK gets a
  // token, sends it with every call and renews it before it expires or when
  // a node refuses it (client/README.md "Authentication"). Empty: no
  // password sign-in (a TLS client certificate may still name the user).
  std::string user;
  std::string password;
};

struct KeyValue {
  std::string key;
  std::string value;
  uint64_t version = 0;  // 1 on creation, +1 per put
  // The shard revisions (kv.proto "Revisions") of the write that created
  // the key and of the last one that changed it; 0 when served from the
  // read cache.
  uint64_t create_revision = 0;
  uint64_t mod_revision = 0;
  uint64_t lease = 0;  // 0: none
};

struct PutResult {
  uint64_t version = 0;              // the key's new version
  uint64_t revision = 0;             // the shard revision the put was applied at
  std::optional<KeyValue> previous;  // with PutOptions::return_previous, if it existed
};

struct ScanOptions {
  std::string start;   // inclusive; empty = the first key
  std::string end;     // exclusive; empty = past the last key
  std::string prefix;  // only keys with this prefix (start and end must be empty)
  uint32_t limit = 0;  // most items returned; 0 = all
};

struct ScanResult {
  std::vector<KeyValue> kvs;  // in key order
  bool more = false;          // the limit cut the result: scan again from next_start
  std::string next_start;
};

// Txn (all keys on one shard: use a hash tag such as "acct:{42}:balance").
struct Compare {
  enum class Target { kValue, kVersion, kExists, kCreateRevision, kModRevision };
  enum class Op { kEqual, kNotEqual, kLess, kGreater };
  std::string key;
  Target target = Target::kValue;
  Op op = Op::kEqual;
  std::string value;      // kValue
  uint64_t version = 0;   // kVersion (0 = missing)
  uint64_t revision = 0;  // kCreateRevision, kModRevision (0 = missing)
};

struct TxnOp {
  enum class Type { kPut, kDelete, kGet };
  Type type = Type::kGet;
  std::string key;
  std::string value;   // kPut
  uint64_t lease = 0;  // kPut: as CallOptions::lease
};

struct TxnRequest {
  std::vector<Compare> compares;  // all must hold (none: success)
  std::vector<TxnOp> success;     // run if they do
  std::vector<TxnOp> failure;     // else
};

struct TxnOpResult {
  TxnOp::Type type = TxnOp::Type::kGet;
  std::string key;
  bool found = false;    // kGet: the key exists; kDelete: it existed
  std::string value;     // kGet
  uint64_t version = 0;  // kGet: its version; kPut: the new version
  // kGet: the key's revisions and lease
  uint64_t create_revision = 0;
  uint64_t mod_revision = 0;
  uint64_t lease = 0;
};

struct TxnResult {
  bool succeeded = false;  // the compares held
  std::vector<TxnOpResult> results;
  uint64_t revision = 0;  // the shard revision it was applied at
};

template <typename T>
using Callback = std::function<void(absl::StatusOr<T>)>;

// Sends at once the requests the calling thread made from inside a callback
// of this SDK, which otherwise go out when the callback returns
// (client/README.md, "Batched stream"). ToFuture calls it.
void FlushCorkedBatchWrites();

// Adapts any *Async call to a std::future (also inside a callback):
//   auto f = ToFuture<PutResult>([&](auto done) { client->PutAsync("k", "v", {}, done); });
template <typename T, typename Start>
std::future<absl::StatusOr<T>> ToFuture(Start start) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<T>>>();
  std::future<absl::StatusOr<T>> future = promise->get_future();
  start([promise](absl::StatusOr<T> result) { promise->set_value(std::move(result)); });
  FlushCorkedBatchWrites();
  return future;
}

class Client {
 public:
  // kInvalidArgument without endpoints. Connects lazily: creating a client
  // for a cluster that is down succeeds; its calls fail with kUnavailable.
  static absl::StatusOr<std::unique_ptr<Client>> Create(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  absl::StatusOr<PutResult> Put(const std::string& key, const std::string& value,
                                const CallOptions& options = {});
  void PutAsync(const std::string& key, const std::string& value, const CallOptions& options,
                Callback<PutResult> done);
  // Put that also returns the previous KeyValue.
  void PutAsync(const std::string& key, const std::string& value, bool return_previous,
                const CallOptions& options, Callback<PutResult> done);

  // kNotFound when the key does not exist.
  absl::StatusOr<KeyValue> Get(const std::string& key, const CallOptions& options = {});
  void GetAsync(const std::string& key, const CallOptions& options, Callback<KeyValue> done);

  // Whether the key existed.
  absl::StatusOr<bool> Delete(const std::string& key, const CallOptions& options = {});
  void DeleteAsync(const std::string& key, const CallOptions& options, Callback<bool> done);

  // Every shard in parallel, merged in key order (see ScanOptions).
  absl::StatusOr<ScanResult> Scan(const ScanOptions& scan, const CallOptions& options = {});
  void ScanAsync(const ScanOptions& scan, const CallOptions& options, Callback<ScanResult> done);
  // Scan that hands the keys over in batches as the pages arrive instead of
  // collecting them: the same keys in the same (key) order as Scan, with
  // memory bounded by under two pages per shard (a shard's next page is
  // fetched while its buffer holds less than a page). Blocking: `on_batch`
  // runs on the calling thread with the next keys in order (never empty; at
  // most scan_page_size of them; it may move them out); returning false
  // stops the scan with kCancelled. Each page gets its own deadline
  // (options.timeout, else default_timeout, from when it is requested), so a
  // long scan or a slow `on_batch` does not time out; an explicit
  // options.deadline bounds the whole scan. Returns `more`/`next_start` as
  // Scan does, with `kvs` empty. On an error (Scan's codes) the batches
  // already handed over are a prefix of the scan.
  absl::StatusOr<ScanResult> ScanPages(const ScanOptions& scan, const CallOptions& options,
                                       const std::function<bool(std::vector<KeyValue>&)>& on_batch);

  absl::StatusOr<TxnResult> Txn(const TxnRequest& txn, const CallOptions& options = {});
  void TxnAsync(const TxnRequest& txn, const CallOptions& options, Callback<TxnResult> done);

  // Sets `key` to `new_value` if its value is `expected` (OK, the new
  // version), else kAborted (it differs or the key is missing).
  absl::StatusOr<uint64_t> CompareAndSet(const std::string& key, const std::string& expected,
                                         const std::string& new_value,
                                         const CallOptions& options = {});
  // Same, comparing the version (0 = the key must not exist).
  absl::StatusOr<uint64_t> CompareAndSetVersion(const std::string& key, uint64_t expected_version,
                                                const std::string& new_value,
                                                const CallOptions& options = {});
  void CompareAndSetAsync(const std::string& key, const Compare& compare,
                          const std::string& new_value, const CallOptions& options,
                          Callback<uint64_t> done);

  // Watches a key, a prefix or a range (client/watch.h): returns once the
  // watch is registered on every shard the keys may live on. Errors:
  // kInvalidArgument (bad options or resume token), kDeadlineExceeded
  // (not registered within options.timeout), kOutOfRange (the token's
  // history is gone), kUnavailable (no cluster map).
  absl::StatusOr<std::unique_ptr<Watcher>> Watch(const WatchOptions& options);

  // Users, roles and permissions (client/README.md "Authentication"): a
  // change goes to the metadata group's leader and needs role root once
  // auth is enabled; Status says who this client is to the cluster.
  absl::Status ChangeAuth(const v1::AuthChangeRequest& change, const CallOptions& options = {});
  absl::StatusOr<v1::AuthListResponse> ListAuth(const CallOptions& options = {});
  absl::StatusOr<v1::AuthStatusResponse> AuthStatus(const CallOptions& options = {});
  // The sign-in token held now ("" : none yet, or auth is off), for tools
  // that call the gRPC API themselves ("authorization: Bearer <token>").
  std::string AuthToken() const;

  // Leases (client/lease.h; client/README.md "Leases"). The calls go to
  // the metadata group's leader, found through the cluster map and
  // not-leader hints, retried under the deadline while it is unavailable.
  // A new lease of `ttl` (whole seconds, at least the server's minimum).
  absl::StatusOr<LeaseGrant> GrantLease(absl::Duration ttl, const CallOptions& options = {});
  // Ends the lease: OK once its keys are deleted on every shard.
  // kNotFound if it is not live.
  absl::Status RevokeLease(uint64_t id, const CallOptions& options = {});
  // kNotFound if it is not live.
  absl::StatusOr<LeaseTimeToLive> LeaseTtl(uint64_t id, const CallOptions& options = {});
  // The live leases, ascending.
  absl::StatusOr<std::vector<uint64_t>> Leases(const CallOptions& options = {});
  // Renews the lease in the background until the KeepAlive is destroyed
  // (client/lease.h). kNotFound if it is not live now.
  absl::StatusOr<std::unique_ptr<KeepAlive>> KeepLeaseAlive(uint64_t id);
  // One renewal: the lease's TTL (kNotFound if it is not live).
  absl::StatusOr<absl::Duration> RenewLease(uint64_t id, const CallOptions& options = {});

  // Fetches the cluster map from any reachable member and caches it.
  absl::StatusOr<v1::ClusterMap> GetClusterMap(const CallOptions& options = {});
  // Cluster.Drain of member `node_id` at `address` (one attempt): it hands
  // its leaderships away, drains and exits.
  absl::Status Drain(const std::string& address, uint64_t node_id, const CallOptions& options = {});
  // Cluster.MoveReplica at `address` (one attempt): records a move of
  // `shard`'s replica from `from_node` to `to_node`; the map version that
  // holds it. Only the metadata group's leader records (elsewhere
  // UNAVAILABLE).
  absl::StatusOr<uint64_t> MoveReplica(const std::string& address, uint32_t shard,
                                       uint64_t from_node, uint64_t to_node,
                                       const CallOptions& options = {});
  // Cluster.AddMember at `address` (one attempt): adds `member` to the
  // cluster map; the map version that holds it. Only the metadata group's
  // leader records (elsewhere UNAVAILABLE).
  absl::StatusOr<uint64_t> AddMember(const std::string& address, const v1::Member& member,
                                     const CallOptions& options = {});
  // Cluster.RemoveMember at `address` (one attempt): marks member `node_id`
  // leaving (its replicas move off, then it is removed and exits); the map
  // version that marks it. Only the metadata group's leader records.
  absl::StatusOr<uint64_t> RemoveMember(const std::string& address, uint64_t node_id,
                                        const CallOptions& options = {});
  // Cluster.SplitShard at `address` (one attempt): records a split of
  // `shard` in progress; the map version that holds it. Only the metadata
  // group's leader records.
  absl::StatusOr<uint64_t> SplitShard(const std::string& address, uint32_t shard,
                                      const CallOptions& options = {});
  // Cluster.NodeStatus of the member at `address` (one attempt).
  absl::StatusOr<v1::NodeStatusResponse> NodeStatus(const std::string& address,
                                                    const CallOptions& options = {});

  ReadCacheStats read_cache_stats() const;

  class Core;  // internal
  Core& core_for_testing() { return *core_; }

 private:
  explicit Client(std::unique_ptr<Core> core);
  std::unique_ptr<Core> core_;
};

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_CLIENT_H_
