// Joining a running cluster (tessera-server --join): the cluster map comes
// from the cluster instead of --initial-cluster.
#ifndef TESSERA_SERVER_CMD_JOIN_H_
#define TESSERA_SERVER_CMD_JOIN_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/security/credentials.h"
#include "server/cluster/cluster_map.h"

namespace tessera::server {

// The cluster map served by any of `endpoints` (client host:port of
// members, Cluster.GetClusterMap), asked in turn until one answers or
// `timeout` passes. The map must name `self` (added with `tessera cluster
// add-node`, or here: if `add_self` is set and the map lacks `self`, it
// asks the members in turn to add it, Cluster.AddMember, as the CLI
// does, and reads the map again). Errors: kUnavailable (nobody answered;
// the line says whom it asked), kFailedPrecondition (`self` is not a
// member: the line says how to add it), AddMember's refusals (e.g.
// kInvalidArgument: an address another member has), FromProto's errors.
// `credentials`: those of the members' client port (security/tls.h).
absl::StatusOr<ClusterMap> FetchClusterMap(const std::vector<std::string>& endpoints, NodeId self,
                                           const MemberInfo* add_self, absl::Duration timeout,
                                           std::shared_ptr<grpc::ChannelCredentials> credentials);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_CMD_JOIN_H_
