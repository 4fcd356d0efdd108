// LeaseService: tessera.v1.Lease (kv.proto) over the node's LeaseKeeper
// (server/cluster/lease_keeper.h), on the callback API.
//
// Errors: the keeper's, through ToGrpcStatus; an UNAVAILABLE (this node
// does not lead the metadata group) carries ErrorDetail.not_leader with
// the group's leader when this node knows it. KeepAlive answers one request
// at a time (it reads the next one after writing the answer), so a stream
// holds one renewal in flight; a lease that does not exist is answered
// with ttl_seconds 0 and the stream goes on.
//
// Thread-safety: thread-safe. `keeper`, `maps` and `backend` are not owned
// and must outlive the service (destroy it after the gRPC server stopped).
#ifndef TESSERA_SERVER_API_LEASE_SERVICE_H_
#define TESSERA_SERVER_API_LEASE_SERVICE_H_

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/api/caller.h"
#include "server/cluster/cluster_map.h"
#include "server/cluster/lease_keeper.h"
#include "server/kv/backend.h"
#include "tessera/kv.grpc.pb.h"

namespace tessera::server {

// An UNAVAILABLE `status` without details gets ErrorDetail.not_leader
// naming the metadata group's leader as this node knows it (and its client
// address); anything else is returned as it is. For the services served by
// that leader alone (Lease, Auth.Change).
absl::Status WithMetaLeaderHint(absl::Status status, NodeId self, const KvBackend& backend,
                                const ClusterMapCache& maps);

class LeaseService final : public v1::Lease::CallbackService {
 public:
  LeaseService(NodeId self, LeaseKeeper* keeper, const ClusterMapCache* maps, KvBackend* backend,
               absl::Duration deadline = absl::Seconds(10));

  grpc::ServerUnaryReactor* Grant(grpc::CallbackServerContext* context,
                                  const v1::LeaseGrantRequest* request,
                                  v1::LeaseGrantResponse* response) override;
  grpc::ServerUnaryReactor* Revoke(grpc::CallbackServerContext* context,
                                   const v1::LeaseRevokeRequest* request,
                                   v1::LeaseRevokeResponse* response) override;
  grpc::ServerBidiReactor<v1::LeaseKeepAliveRequest, v1::LeaseKeepAliveResponse>* KeepAlive(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* TimeToLive(grpc::CallbackServerContext* context,
                                       const v1::LeaseTimeToLiveRequest* request,
                                       v1::LeaseTimeToLiveResponse* response) override;
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* context,
                                 const v1::LeaseListRequest* request,
                                 v1::LeaseListResponse* response) override;

  // `status` as the client gets it (with the leader hint).
  grpc::Status ToWire(absl::Status status) const;
  // The deadline of a call: its own, capped.
  absl::Time Deadline(const grpc::CallbackServerContext* context) const;
  LeaseKeeper* keeper() const { return keeper_; }
  // Users and roles: every call needs a signed-in caller once auth is
  // enabled, and a lease may be renewed, revoked or read only by the user
  // who granted it or role root (List shows a user's own). Unset: not
  // checked. Call before serving.
  void SetAuthCache(const security::AuthCache* auth) { auth_ = auth; }
  const security::AuthCache* auth() const { return auth_; }
  // OK if `caller` may renew, revoke or read lease `id` (see above).
  absl::Status MayUse(const Caller& caller, uint64_t id) const;

 private:
  const NodeId self_;
  LeaseKeeper* const keeper_;
  const ClusterMapCache* const maps_;
  KvBackend* const backend_;
  const absl::Duration deadline_;
  const security::AuthCache* auth_ = nullptr;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_API_LEASE_SERVICE_H_
