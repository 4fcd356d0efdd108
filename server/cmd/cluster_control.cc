#include "server/cmd/cluster_control.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "proto/grpc_status.h"

namespace tessera::server {

ShardStatus FromProto(const v1::ShardStatus& proto) {
  ShardStatus s;
  s.shard = proto.shard();
  s.role = proto.role();
  s.term = proto.term();
  s.leader = proto.leader();
  s.commit_index = proto.commit_index();
  s.applied_index = proto.applied_index();
  s.last_index = proto.last_index();
  s.snapshots_installed = proto.snapshots_installed();
  s.voters.assign(proto.voters().begin(), proto.voters().end());
  s.voters_outgoing.assign(proto.voters_outgoing().begin(), proto.voters_outgoing().end());
  s.learners.assign(proto.learners().begin(), proto.learners().end());
  s.range_version = proto.range_version();
  s.hash_end = proto.hash_end();
  s.approximate_bytes = proto.approximate_bytes();
  return s;
}

GrpcClusterControl::GrpcClusterControl(NodeId self, const ClusterMapCache* maps,
                                       const security::TlsCredentials* credentials,
                                       const security::TlsCredentials* client_credentials,
                                       absl::Duration deadline)
    : self_(self),
      maps_(maps),
      credentials_(credentials),
      client_credentials_(client_credentials),
      deadline_(deadline) {}

std::shared_ptr<GrpcClusterControl::Stubs> GrpcClusterControl::StubsOf(NodeId node) {
  std::shared_ptr<const ClusterMap> map = maps_->Current();
  const MemberInfo* member = map != nullptr ? map->FindMember(node) : nullptr;
  if (member == nullptr) return nullptr;
  absl::MutexLock lock(&mu_);
  std::shared_ptr<Stubs>& stubs = stubs_[node];
  if (stubs == nullptr || stubs->client_address != member->client_address ||
      stubs->peer_address != member->peer_address) {
    auto fresh = std::make_shared<Stubs>();
    fresh->client_address = member->client_address;
    fresh->peer_address = member->peer_address;
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    std::shared_ptr<grpc::Channel> client =
        grpc::CreateCustomChannel(member->client_address, client_credentials_->channel(), args);
    fresh->cluster = v1::Cluster::NewStub(client);
    fresh->lease = v1::Lease::NewStub(client);
    grpc::ChannelArguments peer_args = args;
    credentials_->ConfigureChannelTo(node, &peer_args);
    fresh->peer = peerpb::Peer::NewStub(
        grpc::CreateCustomChannel(member->peer_address, credentials_->channel(), peer_args));
    stubs = std::move(fresh);
  }
  return stubs;
}

absl::StatusOr<std::vector<ShardStatus>> GrpcClusterControl::Status(NodeId node) {
  std::shared_ptr<Stubs> stubs = StubsOf(node);
  if (stubs == nullptr) return absl::NotFoundError(absl::StrCat("node ", node, " is not a member"));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline_));
  v1::NodeStatusResponse response;
  grpc::Status status = stubs->cluster->NodeStatus(&context, {}, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  std::vector<ShardStatus> out;
  out.reserve(response.shards_size());
  for (const v1::ShardStatus& s : response.shards()) out.push_back(FromProto(s));
  if (response.has_meta_shard()) {
    // Reported apart: its id does not fit the wire's uint32.
    out.push_back(FromProto(response.meta_shard()));
    out.back().shard = kMetaShard;
  }
  return out;
}

absl::Status GrpcClusterControl::Ask(NodeId node, peerpb::ReplicaChangeRequest request) {
  std::shared_ptr<Stubs> stubs = StubsOf(node);
  if (stubs == nullptr) return absl::NotFoundError(absl::StrCat("node ", node, " is not a member"));
  request.set_from_node(self_);
  request.set_to_node(node);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline_));
  peerpb::ReplicaChangeResponse response;
  return FromGrpcStatus(stubs->peer->ChangeReplica(&context, request, &response));
}

absl::Status GrpcClusterControl::ProposeConfChange(NodeId node, ShardId shard,
                                                   const raftpb::ConfChange& cc) {
  peerpb::ReplicaChangeRequest request;
  request.set_shard(shard);
  *request.mutable_conf_change() = cc;
  return Ask(node, std::move(request));
}

absl::Status GrpcClusterControl::TransferLeader(NodeId node, ShardId shard, NodeId to) {
  peerpb::ReplicaChangeRequest request;
  request.set_shard(shard);
  request.set_transfer_leader_to(to);
  return Ask(node, std::move(request));
}

absl::Status GrpcClusterControl::Split(NodeId node, ShardId shard,
                                       const serverpb::SplitShard& split) {
  peerpb::ReplicaChangeRequest request;
  request.set_shard(shard);
  *request.mutable_split() = split;
  return Ask(node, std::move(request));
}

absl::Status GrpcClusterControl::Revoke(const ShardLayout& shard,
                                        const std::vector<uint64_t>& leases) {
  // The replica that applied the last one first (likely still the leader):
  // a paused member first in the list would otherwise cost a timeout per
  // shard and round.
  std::vector<NodeId> order = shard.replicas;
  {
    absl::MutexLock lock(&mu_);
    auto it = revoked_by_.find(shard.id);
    if (it != revoked_by_.end()) {
      auto at = std::find(order.begin(), order.end(), it->second);
      if (at != order.end()) std::rotate(order.begin(), at, at + 1);
    }
  }
  absl::Status last = absl::UnavailableError(absl::StrCat("shard ", shard.id, " has no replicas"));
  for (NodeId node : order) {
    peerpb::ReplicaChangeRequest request;
    request.set_shard(shard.id);
    request.mutable_revoke_leases()->mutable_leases()->Assign(leases.begin(), leases.end());
    last = Ask(node, std::move(request));
    if (last.ok()) {
      absl::MutexLock lock(&mu_);
      revoked_by_[shard.id] = node;
      return last;
    }
  }
  return last;
}

void GrpcClusterControl::Authorize(grpc::ClientContext& context) const {
  if (auth_ == nullptr) return;
  std::shared_ptr<const security::AuthView> view = auth_->Current();
  if (view == nullptr || !view->enabled()) return;
  absl::StatusOr<std::string> token =
      view->MintToken(security::MemberCertName(self_), absl::Now() + absl::Minutes(1));
  if (token.ok()) context.AddMetadata("authorization", absl::StrCat("Bearer ", *token));
}

void GrpcClusterControl::CheckLease(NodeId node, uint64_t id, absl::Time deadline,
                                    std::function<void(absl::Status)> done) {
  std::shared_ptr<Stubs> stubs = StubsOf(node);
  if (stubs == nullptr) {
    return done(absl::UnavailableError(absl::StrCat("node ", node, " is not a member")));
  }
  struct Call {
    grpc::ClientContext context;
    v1::LeaseTimeToLiveRequest request;
    v1::LeaseTimeToLiveResponse response;
  };
  auto call = std::make_shared<Call>();
  call->context.set_deadline(absl::ToChronoTime(deadline));
  Authorize(call->context);
  call->request.set_id(id);
  stubs->lease->async()->TimeToLive(
      &call->context, &call->request, &call->response,
      [call, stubs, done = std::move(done)](grpc::Status status) { done(FromGrpcStatus(status)); });
}

absl::Status GrpcClusterControl::RemoveReplica(NodeId node, ShardId shard) {
  peerpb::ReplicaChangeRequest request;
  request.set_shard(shard);
  request.set_remove(true);
  return Ask(node, std::move(request));
}

}  // namespace tessera::server
