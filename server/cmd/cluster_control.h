// GrpcClusterControl: the scheduler's ClusterControl (server/cluster/
// scheduler.h) and the lease keeper's LeaseRevoker (lease_keeper.h) over the
// network: a member's status from its Cluster.NodeStatus (client port), its
// steps and lease revocations through Peer.ChangeReplica (peer port, with
// this node's peer credentials: only members may ask); and a lease's state
// from a member's Lease.TimeToLive (client port).
// Addresses come from the node's current cluster map. Every call has a
// deadline of `deadline`.
//
// Thread-safety: thread-safe. `maps` and `credentials` are not owned and
// must outlive it.
#ifndef TESSERA_SERVER_CMD_CLUSTER_CONTROL_H_
#define TESSERA_SERVER_CMD_CLUSTER_CONTROL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/cluster/cluster_map.h"
#include "server/cluster/lease_keeper.h"
#include "server/cluster/scheduler.h"
#include "server/security/auth.h"
#include "server/security/tls.h"
#include "tessera/kv.grpc.pb.h"
#include "tessera/peer.grpc.pb.h"

namespace tessera::server {

class GrpcClusterControl : public ClusterControl, public LeaseRevoker {
 public:
  GrpcClusterControl(NodeId self, const ClusterMapCache* maps,
                     const security::TlsCredentials* credentials,
                     const security::TlsCredentials* client_credentials,
                     absl::Duration deadline = absl::Seconds(2));

  absl::StatusOr<std::vector<ShardStatus>> Status(NodeId node) override;
  absl::Status ProposeConfChange(NodeId node, ShardId shard, const raftpb::ConfChange& cc) override;
  absl::Status TransferLeader(NodeId node, ShardId shard, NodeId to) override;
  absl::Status RemoveReplica(NodeId node, ShardId shard) override;
  absl::Status Split(NodeId node, ShardId shard, const serverpb::SplitShard& split) override;
  // Asks the shard's voters in turn until its leader applied it.
  absl::Status Revoke(const ShardLayout& shard, const std::vector<uint64_t>& leases) override;
  // Lease.TimeToLive of `id` at `node`, asynchronously: done(OK) if live,
  // else the error (UNAVAILABLE: that node does not lead the group).
  void CheckLease(NodeId node, uint64_t id, absl::Time deadline,
                  std::function<void(absl::Status)> done);
  // With auth enabled, calls to other nodes' client ports carry a token for
  // this member (security/auth.h) minted with the cluster's key. Call
  // before use; nullptr (default): none.
  void SetAuthCache(const security::AuthCache* auth) { auth_ = auth; }

 private:
  struct Stubs {
    std::string client_address;
    std::string peer_address;
    std::unique_ptr<v1::Cluster::Stub> cluster;
    std::unique_ptr<v1::Lease::Stub> lease;
    std::unique_ptr<peerpb::Peer::Stub> peer;
  };
  // The stubs of `node` at its current addresses; nullptr if not a member.
  std::shared_ptr<Stubs> StubsOf(NodeId node) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Ask(NodeId node, peerpb::ReplicaChangeRequest request);
  // Adds this member's token to a client-port call while auth is enabled.
  void Authorize(grpc::ClientContext& context) const;

  const NodeId self_;
  const ClusterMapCache* const maps_;
  const security::TlsCredentials* const credentials_;         // the peer port's
  const security::TlsCredentials* const client_credentials_;  // the client port's
  const absl::Duration deadline_;
  const security::AuthCache* auth_ = nullptr;
  absl::Mutex mu_;
  absl::flat_hash_map<NodeId, std::shared_ptr<Stubs>> stubs_ ABSL_GUARDED_BY(mu_);
  // Per shard, the replica that applied the last RevokeLeases (its leader).
  absl::flat_hash_map<ShardId, NodeId> revoked_by_ ABSL_GUARDED_BY(mu_);
};

// A ShardStatus from its wire form (Cluster.NodeStatus).
ShardStatus FromProto(const v1::ShardStatus& proto);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_CMD_CLUSTER_CONTROL_H_
