#include "server/cmd/join.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/grpc_status.h"
#include "spdlog/spdlog.h"
#include "tessera/kv.grpc.pb.h"

namespace tessera::server {
namespace {

// Asks each member of `map` in turn (only the metadata group's leader
// records it; the others answer UNAVAILABLE) to add `self`, until one
// records it (or it was recorded already); the last answer otherwise.
absl::Status AddSelf(const ClusterMap& map, const MemberInfo& self, absl::Time deadline,
                     const std::shared_ptr<grpc::ChannelCredentials>& credentials) {
  v1::AddMemberRequest request;
  request.mutable_member()->set_id(self.id);
  request.mutable_member()->set_client_address(self.client_address);
  request.mutable_member()->set_peer_address(self.peer_address);
  absl::Status last = absl::UnavailableError("not asked");
  for (const MemberInfo& member : map.members()) {
    std::unique_ptr<v1::Cluster::Stub> stub =
        v1::Cluster::NewStub(grpc::CreateChannel(member.client_address, credentials));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(std::min(deadline, absl::Now() + absl::Seconds(2))));
    v1::AddMemberResponse response;
    last = FromGrpcStatus(stub->AddMember(&context, request, &response));
    if (last.ok()) {
      spdlog::info("added this node ({} / {}) to the cluster (cluster map version {})",
                   self.client_address, self.peer_address, response.map_version());
      return last;
    }
    if (last.code() == absl::StatusCode::kAlreadyExists) return absl::OkStatus();
    if (last.code() != absl::StatusCode::kUnavailable &&
        last.code() != absl::StatusCode::kDeadlineExceeded) {
      return last;
    }
  }
  return last;
}

}  // namespace

absl::StatusOr<ClusterMap> FetchClusterMap(const std::vector<std::string>& endpoints, NodeId self,
                                           const MemberInfo* add_self, absl::Duration timeout,
                                           std::shared_ptr<grpc::ChannelCredentials> credentials) {
  std::vector<std::unique_ptr<v1::Cluster::Stub>> stubs;
  for (const std::string& endpoint : endpoints) {
    stubs.push_back(v1::Cluster::NewStub(grpc::CreateChannel(endpoint, credentials)));
  }
  const absl::Time deadline = absl::Now() + timeout;
  absl::Status last = absl::UnavailableError("not asked");
  // Bounded by `timeout`: each call has a deadline of at most a second.
  while (absl::Now() < deadline) {
    for (auto& stub : stubs) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(std::min(deadline, absl::Now() + absl::Seconds(1))));
      v1::GetClusterMapResponse response;
      last = FromGrpcStatus(stub->GetClusterMap(&context, {}, &response));
      if (!last.ok()) continue;
      absl::StatusOr<ClusterMap> map = ClusterMap::FromProto(response.map());
      if (!map.ok()) return map.status();
      if (map->FindMember(self) == nullptr && add_self != nullptr) {
        // Only the metadata group's leader records it: the others refuse
        // with UNAVAILABLE, and the next member is asked.
        last = AddSelf(*map, *add_self, deadline, credentials);
        if (!last.ok() && last.code() != absl::StatusCode::kUnavailable &&
            last.code() != absl::StatusCode::kDeadlineExceeded) {
          return last;
        }
        break;  // read the map again
      }
      if (map->FindMember(self) == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(
            "node ", self, " is not a member of the cluster at ", absl::StrJoin(endpoints, ","),
            " (map version ", map->version(), "): add it first with `tessera cluster add-node ",
            self, " CLIENT_HOST:PORT PEER_HOST:PORT`"));
      }
      return map;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  return absl::UnavailableError(absl::StrCat("no member at ", absl::StrJoin(endpoints, ","),
                                             " served the cluster map within ",
                                             absl::FormatDuration(timeout), ": ", last.message()));
}

}  // namespace tessera::server
