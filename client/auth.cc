// Client's calls of tessera.v1.Auth (client.h).
#include "client/client.h"
#include "client/core.h"
#include "client/meta_leader.h"

namespace tessera::client {

absl::Status Client::ChangeAuth(const v1::AuthChangeRequest& change, const CallOptions& options) {
  return OnMetaLeader<v1::AuthChangeResponse>(
             *this, *core_, options,
             [&](Core::Node* node, grpc::ClientContext* context, v1::AuthChangeResponse* response) {
               return node->auth.Next()->Change(context, change, response);
             })
      .status();
}

absl::StatusOr<v1::AuthListResponse> Client::ListAuth(const CallOptions& options) {
  return OnMetaLeader<v1::AuthListResponse>(
      *this, *core_, options,
      [&](Core::Node* node, grpc::ClientContext* context, v1::AuthListResponse* response) {
        return node->auth.Next()->List(context, {}, response);
      });
}

std::string Client::AuthToken() const { return core_->token(); }

absl::StatusOr<v1::AuthStatusResponse> Client::AuthStatus(const CallOptions& options) {
  return OnMetaLeader<v1::AuthStatusResponse>(
      *this, *core_, options,
      [&](Core::Node* node, grpc::ClientContext* context, v1::AuthStatusResponse* response) {
        return node->auth.Next()->Status(context, {}, response);
      });
}

}  // namespace tessera::client
