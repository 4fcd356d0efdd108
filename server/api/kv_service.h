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
// Completions are handed to a small worker pool, never run on the raft loop
// thread, and reads of the StateMachine run there too.
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
#include "server/api/admission.h"
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
};

// tessera.v1.KV with every method registered raw (ByteBuffer in and out), so
// that the service, not gRPC, parses the request: gRPC 1.51 answers a body
// that fails to parse on a typed callback method with UNIMPLEMENTED and an
// empty message (CallbackUnaryHandler::RunHandler), which a client cannot
// tell from a missing method. Raw, an undecodable body gets INVALID_ARGUMENT
// naming the expected message. (Unknown methods still get gRPC's own
// UNIMPLEMENTED, the right code; gRPC gives no message with it.)
using RawKvService = v1::KV::WithRawCallbackMethod_Put<
    v1::KV::WithRawCallbackMethod_Get<v1::KV::WithRawCallbackMethod_Delete<
        v1::KV::WithRawCallbackMethod_Scan<v1::KV::WithRawCallbackMethod_Txn<v1::KV::Service>>>>>;

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
  using RawKvService::Delete;
  using RawKvService::Get;
  using RawKvService::Put;
  using RawKvService::Scan;
  using RawKvService::Txn;
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

  // Drain, for a graceful stop: from now on new calls fail at once with
  // UNAVAILABLE, ErrorDetail.not_leader{REASON_DRAINING, the leader of the
  // shard the call was routed to when known} (clients retry there or on
  // another replica); calls in flight go on.
  void BeginDrain() ABSL_LOCKS_EXCLUDED(drain_mu_);
  // Waits until no call is in flight, or `deadline`; returns whether idle.
  bool WaitIdle(absl::Time deadline) ABSL_LOCKS_EXCLUDED(drain_mu_);

  // The byte budget's counters, for /metrics.
  AdmissionStats admission_stats() const { return budget_.Stats(); }

 private:
  class WorkerPool;

  // Parses `in` as a Req into a new call (the reactor returned, which owns
  // request and response until gRPC is done with it) and runs `handle`.
  template <typename Req, typename Resp>
  grpc::ServerUnaryReactor* Serve(grpc::CallbackServerContext* context, const grpc::ByteBuffer* in,
                                  grpc::ByteBuffer* out,
                                  void (KvService::*handle)(grpc::ServerUnaryReactor*,
                                                            grpc::CallbackServerContext*,
                                                            const Req*, Resp*));
  // The typed methods. `reactor` is the call's; every path ends in Finish.
  void HandlePut(grpc::ServerUnaryReactor* reactor, grpc::CallbackServerContext* context,
                 const v1::PutRequest* request, v1::PutResponse* response);
  void HandleGet(grpc::ServerUnaryReactor* reactor, grpc::CallbackServerContext* context,
                 const v1::GetRequest* request, v1::GetResponse* response);
  void HandleDelete(grpc::ServerUnaryReactor* reactor, grpc::CallbackServerContext* context,
                    const v1::DeleteRequest* request, v1::DeleteResponse* response);
  void HandleScan(grpc::ServerUnaryReactor* reactor, grpc::CallbackServerContext* context,
                  const v1::ScanRequest* request, v1::ScanResponse* response);
  void HandleTxn(grpc::ServerUnaryReactor* reactor, grpc::CallbackServerContext* context,
                 const v1::TxnRequest* request, v1::TxnResponse* response);

  // Admits a call of `request_bytes` due by `deadline` (counted in flight,
  // its bytes taken from the budget) unless draining or refused by the
  // budget; else finishes it.
  // `header` is the request's (a draining node's answer names the leader of
  // its shard).
  bool Enter(grpc::ServerUnaryReactor* reactor, const v1::RequestHeader& header,
             uint64_t request_bytes, absl::Time deadline) ABSL_LOCKS_EXCLUDED(drain_mu_);
  // Finishes an admitted call (serializing its response first when `status`
  // is OK) and gives its bytes back.
  void FinishCall(grpc::ServerUnaryReactor* reactor, const grpc::Status& status)
      ABSL_LOCKS_EXCLUDED(drain_mu_);
  // INVALID_ARGUMENT naming `field` (google.rpc.BadRequest) if the key is
  // empty or too long / the value too long.
  absl::Status ValidateKey(absl::string_view key, absl::string_view field) const;
  absl::Status ValidateValue(absl::string_view value, absl::string_view field) const;
  // The shard of `keys` if the header routes them correctly (see above).
  // UNAVAILABLE while no map is loaded.
  absl::StatusOr<ShardId> CheckRoute(const v1::RequestHeader& header,
                                     const std::vector<absl::string_view>& keys) const;
  // The current map's epoch (0 while none is loaded).
  uint64_t Epoch() const;
  absl::Time Deadline(const grpc::CallbackServerContext* context) const;
  // Proposes `command`; on success calls `fill` with the result (on a
  // worker thread), then finishes the call.
  void ProposeAndFinish(grpc::ServerUnaryReactor* reactor, ShardId shard, serverpb::Command command,
                        absl::Time deadline, std::function<void(serverpb::CommandResult&)> fill);
  // A write: proposes `command` (its op already set, header stripped) with
  // the session of `header`; on success moves the op's response out of the
  // result with `take`, fills its ResponseHeader and finishes the call.
  template <typename Response>
  void ProposeWrite(grpc::ServerUnaryReactor* reactor, grpc::CallbackServerContext* context,
                    ShardId shard, const v1::RequestHeader& header, serverpb::Command command,
                    Response* response, Response* (serverpb::CommandResult::*take)());
  // Waits for the header's consistency, then runs `read` on a worker thread
  // and finishes the call with what it returns.
  void ReadAndFinish(grpc::ServerUnaryReactor* reactor, const v1::RequestHeader& header,
                     ShardId shard, absl::Time deadline, std::function<absl::Status()> read);
  // Finishes an admitted call; an UNAVAILABLE gets its leader hint first.
  void Finish(grpc::ServerUnaryReactor* reactor, ShardId shard, absl::Status status);
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
  std::unique_ptr<WorkerPool> pool_;

  ByteBudget budget_;

  absl::Mutex drain_mu_;
  bool draining_ ABSL_GUARDED_BY(drain_mu_) = false;
  int64_t in_flight_ ABSL_GUARDED_BY(drain_mu_) = 0;
  // The bytes each admitted call took from budget_.
  absl::flat_hash_map<const grpc::ServerUnaryReactor*, uint64_t> call_bytes_
      ABSL_GUARDED_BY(drain_mu_);
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

  // What Drain starts (tessera-server: the SIGTERM path). Unset: Drain is
  // UNIMPLEMENTED. Call before serving.
  void SetDrainHandler(std::function<void()> drain) { drain_ = std::move(drain); }

 private:
  const NodeId self_;
  std::function<void()> drain_;
  std::unique_ptr<ClusterMapCache> owned_maps_;
  const ClusterMapCache* const maps_;
  KvBackend* const backend_;
  const StoredMapReader stored_map_;
};

// The map as a client should see it: ToProto() plus, for every shard this
// node has a replica of, its leader and term as `statuses` know them.
v1::ClusterMap MapWithLeaderHints(const ClusterMap& map, const std::vector<ShardStatus>& statuses);

// The error for a request routed by a stale map: FAILED_PRECONDITION with
// ErrorDetail.stale_route{current}.
absl::Status StaleRouteError(const std::string& message, v1::ClusterMap current);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_API_KV_SERVICE_H_
