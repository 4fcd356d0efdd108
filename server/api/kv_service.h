// KvService and ClusterService: the client-facing gRPC services of
// tessera-server (tessera.v1.KV and tessera.v1.Cluster in kv.proto), on the
// callback API (no thread per request).
//
// Where they sit (STYLE.md §2): a handler validates the request, checks its
// routing against the ClusterMap, then
//  - for a write, builds a serverpb::Command (session from the header) and
//    Node::Propose()s it with the call's deadline (capped at max_deadline);
//    the CommandResult becomes the response or the error;
//  - for a read, waits for the consistency it asked for (LINEARIZABLE:
//    Node::ReadBarrier with a quorum round; LEASE: with the leader lease;
//    STALE: none, if this replica heard from its leader within
//    max_staleness_ms) and reads the StateMachine.
// Unary calls: completions are handed to a small worker pool, never run on
// the raft loop thread, and reads of the StateMachine run there too.
//
// KV.Batch (one BatchStream reactor per stream, batch_stream.cc): every
// operation of a BatchRequest goes through the same Handle* path as its
// unary method (admission, validation, routing, propose or read), but
// completes inline where it finished: a write or a linearizable Get on the
// raft loop thread during its completion run, a STALE Get on the gRPC thread
// that read the message; only Scans (unbounded work) use the worker pool.
// The results one completion run produced for one stream go out in ONE
// BatchResponse, written from that thread (CompletionScope); while a write
// is outstanding, results are buffered and sent together when it completes.
// A stream holds at most max_batch_inflight_ops operations between reading
// them and writing their results: it stops reading the stream beyond that.
//
// Errors (all through ToGrpcStatus, details as kv.proto's file comment
// lists them):
//  INVALID_ARGUMENT    empty key, key > max_key_bytes, value >
//                      max_value_bytes, prefix with start/end, start > end,
//                      limit > max_scan_limit, a malformed Txn (with
//                      google.rpc.BadRequest naming the field), a Txn whose
//                      keys span shards (the message names them);
//  RESOURCE_EXHAUSTED  max_inflight_bytes of requests are in flight on this
//                      node (admission.h): ErrorDetail.retry_after and
//                      google.rpc.RetryInfo say when to come back;
//  FAILED_PRECONDITION header.shard is not the key's shard, the shard has no
//                      replica here, or a non-zero
//                      header.epoch differs from ours: ErrorDetail.stale_route
//                      carries the current map with leader hints;
//  UNAVAILABLE         always with ErrorDetail.not_leader (the leader's id
//                      and client address when this node knows them, and
//                      the reason): not the leader, no leader, a STALE read
//                      on a replica that lost contact with its leader
//                      (REASON_NOT_LEADER); draining (REASON_DRAINING); no
//                      map loaded yet (REASON_NO_CLUSTER_MAP); the raft loop
//                      failed (REASON_NODE_FAILED);
//  and whatever Node::Propose/ReadBarrier or the command returned
//  (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, CANCELLED, FAILED_PRECONDITION for
//  expired sessions, ...).
//
// Thread-safety: thread-safe. Lifetime: the map and backend must outlive the
// services; destroy the services only after the gRPC server serving them has
// shut down (the destructor finishes queued completions, then joins).
#ifndef TESSERA_SERVER_API_KV_SERVICE_H_
#define TESSERA_SERVER_API_KV_SERVICE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/support/server_callback.h"
#include "server/api/admission.h"
#include "server/api/batch_stats.h"
#include "server/api/caller.h"
#include "server/api/watch_hub.h"
#include "server/cluster/cluster_map.h"
#include "server/kv/backend.h"
#include "server/kv/state_machine.h"
#include "tessera/command.pb.h"
#include "tessera/kv.grpc.pb.h"

namespace tessera::server {

struct KvServiceOptions {
  NodeId self = 0;
  size_t max_key_bytes = 4096;
  size_t max_value_bytes = 1 << 20;
  // Scan limits above this are INVALID_ARGUMENT (0 means the server default).
  uint32_t max_scan_limit = 10000;
  // Compares plus operations of one Txn.
  size_t max_txn_ops = 1024;
  // Deadline of a call that has none, and the cap on any call's deadline.
  absl::Duration default_deadline = absl::Seconds(10);
  absl::Duration max_deadline = absl::Seconds(30);
  // Staleness bound of a STALE read whose header says 0.
  uint32_t default_max_staleness_ms = 5000;
  // Threads completing requests and reading the state machine.
  int worker_threads = 2;
  // Node-wide budget of request bytes in flight (admission.h); 0 = none.
  uint64_t max_inflight_bytes = 64 << 20;
  // KV.Batch: operations per BatchRequest and bytes per BatchRequest (a
  // message over either gets INVALID_ARGUMENT for each of its operations);
  // operations of one stream between reading them and writing their
  // results (the stream is not read further while another message could
  // take it past this; max_batch_ops is clamped to it).
  size_t max_batch_ops = 256;
  size_t max_batch_bytes = 8 << 20;
  size_t max_batch_inflight_ops = 1024;
  // Called once per finished KV.Batch operation with the unary method it
  // stands for ("/tessera.v1.KV/Put", ...), its code and duration, so that
  // batched operations are counted as the unary calls are (the server wires
  // it to Metrics::ObserveRpc). Optional; called on the completing thread.
  std::function<void(absl::string_view full_method, absl::StatusCode code, absl::Duration duration)>
      on_batch_op;
  // KV.Watch: the watch hub's bounds (watch_hub.h).
  WatchHubOptions watch;
  // Checks that leases named by a write's puts are live before it is
  // proposed: done(OK), or the error the write fails with (NOT_FOUND for
  // a lease that is not live). Unset: not checked (the shard still refuses
  // a lease it saw end). Called on the request's thread; `done` may run on
  // any thread.
  std::function<void(std::vector<uint64_t> leases, absl::Time deadline,
                     std::function<void(absl::Status)> done)>
      check_leases;
  // Users and permissions (security/auth.h): every call is checked against
  // the current state (caller.h). nullptr: no checks (tests of the service).
  const security::AuthCache* auth = nullptr;
  // Bytes this node's store holds now (sampled; cmd/ wires the engine's),
  // checked against Limits::storage_quota_bytes before a write that grows
  // the store. Unset: no quota.
  std::function<uint64_t()> storage_used;
};

// tessera.v1.KV with every method registered raw (ByteBuffer in and out), so
// that the service, not gRPC, parses the request: gRPC 1.51 answers a body
// that fails to parse on a typed callback method with UNIMPLEMENTED and an
// empty message (CallbackUnaryHandler::RunHandler), which a client cannot
// tell from a missing method. Raw, an undecodable body gets INVALID_ARGUMENT
// naming the expected message. (Unknown methods still get gRPC's own
// UNIMPLEMENTED, the right code; gRPC gives no message with it.)
using RawKvService = v1::KV::WithRawCallbackMethod_Put<v1::KV::WithRawCallbackMethod_Get<
    v1::KV::WithRawCallbackMethod_Delete<v1::KV::WithRawCallbackMethod_Scan<
        v1::KV::WithRawCallbackMethod_Txn<v1::KV::WithRawCallbackMethod_Batch<
            v1::KV::WithRawCallbackMethod_Watch<v1::KV::Service>>>>>>>;

class KvService final : public RawKvService {
 public:
  // `maps` and `backend` are not owned and must outlive the service. While
  // `maps` holds no map (the metadata group's map is not loaded yet), every
  // call fails with UNAVAILABLE.
  KvService(const KvServiceOptions& options, const ClusterMapCache* maps, KvBackend* backend);
  // With a fixed map (copied); `backend` must outlive the service.
  KvService(const KvServiceOptions& options, const ClusterMap* map, KvBackend* backend);
  ~KvService() override;

  // The methods, raw: each parses its request (INVALID_ARGUMENT if it does
  // not decode) and runs the Handle* below.
  using RawKvService::Batch;
  using RawKvService::Delete;
  using RawKvService::Get;
  using RawKvService::Put;
  using RawKvService::Scan;
  using RawKvService::Txn;
  using RawKvService::Watch;
  grpc::ServerUnaryReactor* Put(grpc::CallbackServerContext* context,
                                const grpc::ByteBuffer* request,
                                grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* context,
                                const grpc::ByteBuffer* request,
                                grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Scan(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Txn(grpc::CallbackServerContext* context,
                                const grpc::ByteBuffer* request,
                                grpc::ByteBuffer* response) override;
  // KV.Batch: a BatchStream reactor (batch_stream.cc).
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Batch(
      grpc::CallbackServerContext* context) override;
  // KV.Watch: a WatchStream reactor (watch_stream.cc) over watch_hub().
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Watch(
      grpc::CallbackServerContext* context) override;

  // The node's watchers: set it as the StateMachine's ApplyObserver, and
  // stop the Node before destroying the service.
  WatchHub* watch_hub() { return watch_hub_.get(); }

  // Drain, for a graceful stop: from now on new calls fail at once with
  // UNAVAILABLE, ErrorDetail.not_leader{REASON_DRAINING, the leader of the
  // shard the call was routed to when known} (clients retry there or on
  // another replica); calls in flight go on.
  void BeginDrain() ABSL_LOCKS_EXCLUDED(drain_mu_);
  // Waits until no call is in flight, or `deadline`; returns whether idle.
  bool WaitIdle(absl::Time deadline) ABSL_LOCKS_EXCLUDED(drain_mu_);

  // The byte budget's counters, for /metrics.
  AdmissionStats admission_stats() const { return budget_.Stats(); }
  // KV.Batch counters, for /metrics.
  BatchStats batch_stats() const ABSL_LOCKS_EXCLUDED(stats_mu_);

 private:
  class WorkerPool;
  class BatchStream;
  class WatchStream;
  class WatchSourceImpl;
  class RefusedStream;

  // Creates watch_source_ and watch_hub_ (watch_stream.cc).
  void StartWatchHub();
  // Validates and routes a WatchCreate: its shard, and the range version
  // of the shard in the map it was checked against.
  absl::StatusOr<std::pair<ShardId, uint64_t>> RouteWatch(const v1::WatchCreate& create);

  // The outcome of one operation, unary or batched: called exactly once,
  // after the response was filled when `status` is OK; with no lock of the
  // service held.
  using OpDone = std::function<void(absl::Status status)>;
  // Where an operation's completion runs: handed to the worker pool (unary
  // calls) or inline on the thread that completed it (Batch).
  enum class Hop { kWorker, kInline };

  // Parses `in` as a Req into a new call (the reactor returned, which owns
  // request and response until gRPC is done with it) and runs `handle`.
  template <typename Req, typename Resp>
  grpc::ServerUnaryReactor* Serve(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
                                  grpc::ByteBuffer* out,
                                  void (KvService::*handle)(const Caller&, const Req&, Resp*,
                                                            absl::Time, Hop, OpDone));
  // The operations, shared by the unary methods and Batch. `request` and
  // `response` must stay valid until `done` ran; `deadline` is already
  // capped (Deadline / BatchDeadline). `caller` is checked for the keys
  // (PERMISSION_DENIED / UNAUTHENTICATED) before anything else is done.
  void HandlePut(const Caller& caller, const v1::PutRequest& request, v1::PutResponse* response,
                 absl::Time deadline, Hop hop, OpDone done);
  void HandleGet(const Caller& caller, const v1::GetRequest& request, v1::GetResponse* response,
                 absl::Time deadline, Hop hop, OpDone done);
  void HandleDelete(const Caller& caller, const v1::DeleteRequest& request,
                    v1::DeleteResponse* response, absl::Time deadline, Hop hop, OpDone done);
  void HandleScan(const Caller& caller, const v1::ScanRequest& request, v1::ScanResponse* response,
                  absl::Time deadline, Hop hop, OpDone done);
  void HandleTxn(const Caller& caller, const v1::TxnRequest& request, v1::TxnResponse* response,
                 absl::Time deadline, Hop hop, OpDone done);

  // Admits an operation of `request_bytes` due by `deadline` (counted in
  // flight, its bytes taken from the budget) unless draining or refused by
  // the budget: then runs `done` with the error and returns false. When
  // admitted, wraps `done` so that it gives the bytes back first.
  // `header` is the request's (a draining node's answer names the leader of
  // its shard).
  bool Enter(const v1::RequestHeader& header, uint64_t request_bytes, absl::Time deadline,
             OpDone& done) ABSL_LOCKS_EXCLUDED(drain_mu_);
  // The auth state's Limits (kv.proto) for one operation of `bytes` by
  // `caller`: RESOURCE_EXHAUSTED with a retry hint past the caller's rate,
  // or, for a write that `grows` the store, with ErrorDetail.quota_exceeded
  // while the node is over its storage quota.
  absl::Status CheckLimits(const Caller& caller, uint64_t bytes, bool grows);
  // INVALID_ARGUMENT naming `field` (google.rpc.BadRequest) if the key is
  // empty or too long / the value too long.
  absl::Status ValidateKey(absl::string_view key, absl::string_view field) const;
  absl::Status ValidateValue(absl::string_view value, absl::string_view field) const;
  // The shard of `keys` if the header routes them correctly (see above).
  // UNAVAILABLE while no map is loaded.
  absl::StatusOr<ShardId> CheckRoute(const v1::RequestHeader& header,
                                     const std::vector<absl::string_view>& keys) const;
  // The map served by (nullptr while none is loaded).
  std::shared_ptr<const ClusterMap> Map() const;
  // A unary call's deadline: the context's (default_deadline if none),
  // capped at max_deadline.
  absl::Time Deadline(const grpc::CallbackServerContext* context) const;
  // A batched operation's: BatchOp.timeout_ms from `now` (0: the default),
  // capped the same way.
  absl::Time BatchDeadline(absl::Time now, uint32_t timeout_ms) const;
  // Proposes `command`; on success calls `fill` with the result (where
  // `hop` says), then completes the operation.
  void ProposeAndFinish(ShardId shard, serverpb::Command command, absl::Time deadline, Hop hop,
                        std::function<void(serverpb::CommandResult&)> fill, OpDone done);
  // A write: proposes `command` (its op already set, header stripped) with
  // the session of `header`; on success moves the op's response out of the
  // result with `take`, fills its ResponseHeader and completes.
  template <typename Response>
  void ProposeWrite(ShardId shard, const v1::RequestHeader& header, serverpb::Command command,
                    absl::Time deadline, Hop hop, Response* response,
                    Response* (serverpb::CommandResult::*take)(), OpDone done);
  // Waits for the header's consistency, then runs `read` (where `hop` says)
  // and completes with what it returns.
  void ReadAndFinish(const v1::RequestHeader& header, ShardId shard, absl::Time deadline, Hop hop,
                     std::function<absl::Status()> read, OpDone done);
  // Completes an admitted operation; an UNAVAILABLE gets its leader hint
  // first. `from_node`: the status is the Node's or the backend's (a
  // NOT_FOUND there means the shard is not hosted here: UNAVAILABLE, go
  // elsewhere), not a command's result or a lease check's.
  void Complete(ShardId shard, absl::Status status, const OpDone& done, bool from_node = true);
  // Runs `fn` on the worker pool (kWorker) or here (kInline).
  void Run(Hop hop, std::function<void()> fn);
  // Completes the ErrorDetail.not_leader of an UNAVAILABLE `status` about
  // `shard`: adds one if missing (REASON_NODE_FAILED while the backend is
  // not healthy, else REASON_NOT_LEADER); if it names no leader (and the
  // node may know one: not leader or draining), names the leader this
  // replica of `shard` knows now (a replica that has just lost leadership
  // learns its successor soon after); adds the leader's client address.
  void AddLeaderHint(absl::Status& status, ShardId shard) const;

  const KvServiceOptions options_;
  std::unique_ptr<ClusterMapCache> owned_maps_;  // the fixed-map constructor's
  const ClusterMapCache* const maps_;
  KvBackend* const backend_;
  // Before pool_: they outlive the stream flushes its destructor runs.
  std::unique_ptr<WatchSource> watch_source_;
  std::unique_ptr<WatchHub> watch_hub_;
  std::unique_ptr<WorkerPool> pool_;

  ByteBudget budget_;
  security::RateLimiter rate_limiter_;

  absl::Mutex drain_mu_;
  bool draining_ ABSL_GUARDED_BY(drain_mu_) = false;
  int64_t in_flight_ ABSL_GUARDED_BY(drain_mu_) = 0;  // admitted operations

  mutable absl::Mutex stats_mu_;
  BatchStats batch_stats_ ABSL_GUARDED_BY(stats_mu_);
};

// A KV.Batch or KV.Watch stream refused when it opens (its caller could
// not be identified): it ends at once with `why`.
class KvService::RefusedStream final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit RefusedStream(grpc::Status why) { Finish(std::move(why)); }
  void OnDone() override { delete this; }
};

// Cluster.GetClusterMap (the map with this node's leader hints; UNAVAILABLE
// while no map is loaded) and Cluster.NodeStatus (client shards in `shards`,
// the metadata replica in `meta_shard`, and what `stored_map` returns in
// `stored_map`); NodeStatus is UNAVAILABLE "node N is down: ..." while the
// backend's Health() is not OK (raft loop stopped or wedged), so tools show
// the node down. Thread-safe; `maps` and `backend` outlive it.
class ClusterService final : public v1::Cluster::CallbackService {
 public:
  // Reads the map stored in this node's metadata replica (nullopt: absent or
  // no replica here). Called per NodeStatus call.
  using StoredMapReader = std::function<std::optional<v1::ClusterMap>()>;

  ClusterService(NodeId self, const ClusterMapCache* maps, KvBackend* backend,
                 StoredMapReader stored_map = nullptr);
  // With a fixed map (copied).
  ClusterService(NodeId self, const ClusterMap* map, KvBackend* backend);

  grpc::ServerUnaryReactor* GetClusterMap(grpc::CallbackServerContext* context,
                                          const v1::GetClusterMapRequest* request,
                                          v1::GetClusterMapResponse* response) override;
  grpc::ServerUnaryReactor* NodeStatus(grpc::CallbackServerContext* context,
                                       const v1::NodeStatusRequest* request,
                                       v1::NodeStatusResponse* response) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* context,
                                  const v1::DrainRequest* request,
                                  v1::DrainResponse* response) override;
  grpc::ServerUnaryReactor* MoveReplica(grpc::CallbackServerContext* context,
                                        const v1::MoveReplicaRequest* request,
                                        v1::MoveReplicaResponse* response) override;
  grpc::ServerUnaryReactor* AddMember(grpc::CallbackServerContext* context,
                                      const v1::AddMemberRequest* request,
                                      v1::AddMemberResponse* response) override;
  grpc::ServerUnaryReactor* RemoveMember(grpc::CallbackServerContext* context,
                                         const v1::RemoveMemberRequest* request,
                                         v1::RemoveMemberResponse* response) override;
  grpc::ServerUnaryReactor* SplitShard(grpc::CallbackServerContext* context,
                                       const v1::SplitShardRequest* request,
                                       v1::SplitShardResponse* response) override;

  // What Drain starts (tessera-server: the SIGTERM path). Unset: Drain is
  // UNIMPLEMENTED. Call before serving.
  void SetDrainHandler(std::function<void()> drain) { drain_ = std::move(drain); }
  // Records a replica move (shard, from, to) and returns the map version
  // that holds it, or the error to answer. Unset: MoveReplica is
  // UNIMPLEMENTED. Call before serving.
  using MoveHandler = std::function<absl::StatusOr<uint64_t>(ShardId, NodeId, NodeId)>;
  void SetMoveHandler(MoveHandler move) { move_ = std::move(move); }
  // Adds a member to the map and returns the map version that holds it, or
  // the error to answer. Unset: AddMember is UNIMPLEMENTED.
  using AddMemberHandler = std::function<absl::StatusOr<uint64_t>(const v1::Member&)>;
  void SetAddMemberHandler(AddMemberHandler add) { add_member_ = std::move(add); }
  // Marks a member leaving; the map version that marks it. Unset:
  // RemoveMember is UNIMPLEMENTED.
  using RemoveMemberHandler = std::function<absl::StatusOr<uint64_t>(NodeId)>;
  void SetRemoveMemberHandler(RemoveMemberHandler remove) { remove_member_ = std::move(remove); }
  // Records a split of a shard as in progress; the map version that holds
  // it. Unset: SplitShard is UNIMPLEMENTED.
  using SplitHandler = std::function<absl::StatusOr<uint64_t>(ShardId)>;
  void SetSplitHandler(SplitHandler split) { split_ = std::move(split); }
  // Users and roles: Drain, MoveReplica, AddMember, RemoveMember and
  // SplitShard need role root once auth is enabled (GetClusterMap and
  // NodeStatus stay open: clients route by them). Unset: not checked. Call
  // before serving.
  void SetAuthCache(const security::AuthCache* auth) { auth_ = auth; }

 private:
  const NodeId self_;
  const security::AuthCache* auth_ = nullptr;
  std::function<void()> drain_;
  MoveHandler move_;
  AddMemberHandler add_member_;
  RemoveMemberHandler remove_member_;
  SplitHandler split_;
  std::unique_ptr<ClusterMapCache> owned_maps_;
  const ClusterMapCache* const maps_;
  KvBackend* const backend_;
  const StoredMapReader stored_map_;
};

// The map as a client should see it: ToProto() plus, for every shard this
// node has a replica of, its leader and term as `statuses` know them.
v1::ClusterMap MapWithLeaderHints(const ClusterMap& map, const std::vector<ShardStatus>& statuses);

// UNAVAILABLE with ErrorDetail.not_leader{leader 0, `reason`}.
absl::Status NodeUnavailableError(const std::string& message,
                                  v1::ErrorDetail::NotLeader::Reason reason);

// The error for a request routed by a stale map: FAILED_PRECONDITION with
// ErrorDetail.stale_route{current}.
absl::Status StaleRouteError(const std::string& message, v1::ClusterMap current);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_API_KV_SERVICE_H_
