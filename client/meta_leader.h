// Internal to the SDK: a call to the metadata group's leader (leases, auth
// changes), with the leader found and remembered as lease_leader.
#ifndef TESSERA_CLIENT_META_LEADER_H_
#define TESSERA_CLIENT_META_LEADER_H_

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "client/core.h"
#include "grpcpp/client_context.h"
#include "proto/grpc_status.h"

namespace tessera::client {

// One attempt on a node with a context.
template <typename Response>
using MetaAttempt =
    std::function<grpc::Status(Client::Core::Node*, grpc::ClientContext*, Response*)>;

// Runs `attempt` on the metadata group's leader: the one found last, then
// (at once, without a backoff) the group's members from the cluster map and
// the not-leader hints they give, until one answers other than UNAVAILABLE
// or DEADLINE_EXCEEDED or the call's deadline passes. A member that timed
// out is asked last in later rounds: a deposed leader cut off from the
// others (a hibernating group's leader notices late) answers nothing and
// would take each attempt's whole timeout, e.g. a lease renewal's. An UNAUTHENTICATED answer gets a
// fresh token (ClientOptions::user) and the node is asked again, twice at most.
template <typename Response>
absl::StatusOr<Response> OnMetaLeader(Client& client, Client::Core& core,
                                      const CallOptions& options,
                                      const MetaAttempt<Response>& attempt) {
  const absl::Time deadline = EffectiveDeadline(core.options(), options);
  absl::Status last = absl::UnavailableError("no member leads the metadata group");
  int token_refreshes = 0;
  if (core.has_credentials() && core.token().empty() && core.token_due()) {
    // Signed in before the first call (a cluster without auth gives no
    // token, and the call goes without one).
    absl::Status signed_in = core.RefreshTokenSync("");
    if (!signed_in.ok()) return signed_in;
  }
  std::vector<std::string> timed_out;
  for (int round = 0; absl::Now() < deadline; ++round) {
    std::vector<std::string> candidates;
    if (std::string known = core.lease_leader(); !known.empty()) candidates.push_back(known);
    const bool only_known = round == 0 && !candidates.empty();
    if (!only_known) {
      CallOptions map_options;
      map_options.deadline = deadline;
      absl::StatusOr<v1::ClusterMap> map = client.GetClusterMap(map_options);
      if (!map.ok()) return map.status();
      for (uint64_t node : map->meta_replicas()) {
        for (const v1::Member& m : map->members()) {
          if (m.id() == node && std::find(candidates.begin(), candidates.end(),
                                          m.client_address()) == candidates.end()) {
            candidates.push_back(m.client_address());
          }
        }
      }
      std::stable_partition(candidates.begin(), candidates.end(), [&](const std::string& c) {
        return std::find(timed_out.begin(), timed_out.end(), c) == timed_out.end();
      });
    }
    for (size_t i = 0; i < candidates.size() && i < 8 && absl::Now() < deadline; ++i) {
      Client::Core::Node* node = core.GetNode(candidates[i]);
      std::shared_ptr<grpc::ClientContext> context =
          core.NewContext(std::min(deadline, absl::Now() + core.options().attempt_timeout));
      Response response;
      absl::Status status = FromGrpcStatus(attempt(node, context.get(), &response));
      while (status.code() == absl::StatusCode::kUnauthenticated && core.has_credentials() &&
             token_refreshes++ < 2) {
        // No token yet, or an expired one: get one, then ask again.
        absl::Status refreshed = core.RefreshTokenSync(core.token());
        if (!refreshed.ok()) return refreshed;
        context = core.NewContext(std::min(deadline, absl::Now() + core.options().attempt_timeout));
        response = Response();
        status = FromGrpcStatus(attempt(node, context.get(), &response));
      }
      if (status.ok()) {
        core.set_lease_leader(candidates[i]);
        return response;
      }
      last = status;
      if (status.code() != absl::StatusCode::kUnavailable &&
          status.code() != absl::StatusCode::kDeadlineExceeded) {
        return status;
      }
      if (status.code() == absl::StatusCode::kDeadlineExceeded &&
          std::find(timed_out.begin(), timed_out.end(), candidates[i]) == timed_out.end()) {
        timed_out.push_back(candidates[i]);
      }
      std::optional<v1::ErrorDetail> detail = GetErrorDetail(status);
      if (detail.has_value() && !detail->not_leader().leader_address().empty() &&
          std::find(candidates.begin(), candidates.end(), detail->not_leader().leader_address()) ==
              candidates.end()) {
        candidates.insert(candidates.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                          detail->not_leader().leader_address());
      }
    }
    core.set_lease_leader("");
    if (only_known) continue;  // the members next, at once
    absl::SleepFor(std::min(core.Backoff(round), deadline - absl::Now()));
  }
  return last;
}

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_META_LEADER_H_
