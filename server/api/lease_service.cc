#include "server/api/lease_service.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proto/grpc_status.h"
#include "proto/status_macros.h"
#include "server/api/kv_service.h"

namespace tessera::server {
namespace {

// Renews one lease at a time: reads a request, renews, writes the answer,
// reads the next.
class KeepAliveStream final
    : public grpc::ServerBidiReactor<v1::LeaseKeepAliveRequest, v1::LeaseKeepAliveResponse> {
 public:
  KeepAliveStream(const LeaseService* service, Caller caller)
      : service_(service), caller_(std::move(caller)) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return Finish(grpc::Status::OK);  // the client closed its side
    const uint64_t id = request_.id();
    if (id == 0) {
      return Finish(service_->ToWire(absl::InvalidArgumentError("lease id 0")));
    }
    if (absl::Status allowed = service_->MayUse(caller_, id); !allowed.ok()) {
      return Finish(service_->ToWire(allowed));
    }
    service_->keeper()->KeepAlive(id, absl::Now() + absl::Seconds(5),
                                  [this, id](absl::StatusOr<int64_t> ttl) {
                                    if (!ttl.ok() && !absl::IsNotFound(ttl.status())) {
                                      return Finish(service_->ToWire(ttl.status()));
                                    }
                                    response_.set_id(id);
                                    response_.set_ttl_seconds(ttl.ok() ? *ttl : 0);
                                    StartWrite(&response_);
                                  });
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke"));
    StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  const LeaseService* const service_;
  const Caller caller_;  // identified when the stream opened
  v1::LeaseKeepAliveRequest request_;
  v1::LeaseKeepAliveResponse response_;
};

// A KeepAlive stream refused when it opens.
class RefusedKeepAlive final
    : public grpc::ServerBidiReactor<v1::LeaseKeepAliveRequest, v1::LeaseKeepAliveResponse> {
 public:
  explicit RefusedKeepAlive(grpc::Status why) { Finish(std::move(why)); }
  void OnDone() override { delete this; }
};

}  // namespace

absl::Status LeaseService::MayUse(const Caller& caller, uint64_t id) const {
  TESSERA_RETURN_IF_ERROR(caller.CheckSignedIn());
  if (caller.IsRoot()) return absl::OkStatus();
  absl::StatusOr<std::string> owner = keeper_->Owner(id);
  if (!owner.ok()) return absl::IsNotFound(owner.status()) ? absl::OkStatus() : owner.status();
  if (*owner != caller.who().user) {
    return absl::PermissionDeniedError(absl::StrCat("lease ", id, " belongs to another user"));
  }
  return absl::OkStatus();
}

LeaseService::LeaseService(NodeId self, LeaseKeeper* keeper, const ClusterMapCache* maps,
                           KvBackend* backend, absl::Duration deadline)
    : self_(self), keeper_(keeper), maps_(maps), backend_(backend), deadline_(deadline) {}

absl::Status WithMetaLeaderHint(absl::Status status, NodeId self, const KvBackend& backend,
                                const ClusterMapCache& maps) {
  if (status.code() != absl::StatusCode::kUnavailable || GetErrorDetail(status).has_value()) {
    return status;
  }
  absl::Status hinted = NodeUnavailableError(std::string(status.message()),
                                             v1::ErrorDetail::NotLeader::REASON_NOT_LEADER);
  v1::ErrorDetail detail = *GetErrorDetail(hinted);
  v1::ErrorDetail::NotLeader* not_leader = detail.mutable_not_leader();
  std::optional<ShardStatus> meta = backend.StatusOf(kMetaShard);
  std::shared_ptr<const ClusterMap> map = maps.Current();
  if (meta.has_value() && meta->leader != 0 && meta->leader != self) {
    not_leader->set_leader_node(meta->leader);
    if (map != nullptr) {
      if (const MemberInfo* m = map->FindMember(meta->leader)) {
        not_leader->set_leader_address(m->client_address);
      }
    }
  }
  SetErrorDetail(hinted, detail);
  return hinted;
}

grpc::Status LeaseService::ToWire(absl::Status status) const {
  return ToGrpcStatus(WithMetaLeaderHint(std::move(status), self_, *backend_, *maps_));
}

absl::Time LeaseService::Deadline(const grpc::CallbackServerContext* context) const {
  const absl::Time cap = absl::Now() + deadline_;
  const std::chrono::system_clock::time_point deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return cap;
  return std::min(absl::FromChrono(deadline), cap);
}

grpc::ServerUnaryReactor* LeaseService::Grant(grpc::CallbackServerContext* context,
                                              const v1::LeaseGrantRequest* request,
                                              v1::LeaseGrantResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = Caller::Identify(auth_, *context);
  absl::Status allowed = caller.ok() ? caller->CheckSignedIn() : caller.status();
  if (!allowed.ok()) {
    reactor->Finish(ToWire(allowed));
    return reactor;
  }
  keeper_->Grant(
      request->ttl_seconds(), Deadline(context),
      [this, reactor, response](absl::StatusOr<v1::LeaseGrantResponse> granted) {
        if (granted.ok()) *response = *std::move(granted);
        reactor->Finish(granted.ok() ? grpc::Status::OK : ToWire(granted.status()));
      },
      caller->who().member ? "" : caller->who().user);
  return reactor;
}

grpc::ServerUnaryReactor* LeaseService::Revoke(grpc::CallbackServerContext* context,
                                               const v1::LeaseRevokeRequest* request,
                                               v1::LeaseRevokeResponse* /*response*/) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (request->id() == 0) {
    reactor->Finish(ToWire(absl::InvalidArgumentError("lease id 0")));
    return reactor;
  }
  absl::StatusOr<Caller> caller = Caller::Identify(auth_, *context);
  absl::Status allowed = caller.ok() ? MayUse(*caller, request->id()) : caller.status();
  if (!allowed.ok()) {
    reactor->Finish(ToWire(allowed));
    return reactor;
  }
  keeper_->Revoke(request->id(), Deadline(context),
                  [this, reactor](absl::Status done) { reactor->Finish(ToWire(done)); });
  return reactor;
}

grpc::ServerBidiReactor<v1::LeaseKeepAliveRequest, v1::LeaseKeepAliveResponse>*
LeaseService::KeepAlive(grpc::CallbackServerContext* context) {
  absl::StatusOr<Caller> caller = Caller::Identify(auth_, *context);
  if (!caller.ok()) return new RefusedKeepAlive(ToWire(caller.status()));
  return new KeepAliveStream(this, *std::move(caller));
}

grpc::ServerUnaryReactor* LeaseService::TimeToLive(grpc::CallbackServerContext* context,
                                                   const v1::LeaseTimeToLiveRequest* request,
                                                   v1::LeaseTimeToLiveResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = Caller::Identify(auth_, *context);
  absl::Status allowed = caller.ok() ? MayUse(*caller, request->id()) : caller.status();
  if (!allowed.ok()) {
    reactor->Finish(ToWire(allowed));
    return reactor;
  }
  absl::StatusOr<v1::LeaseTimeToLiveResponse> ttl = keeper_->TimeToLive(request->id());
  if (ttl.ok()) *response = *std::move(ttl);
  reactor->Finish(ToWire(ttl.status()));
  return reactor;
}

grpc::ServerUnaryReactor* LeaseService::List(grpc::CallbackServerContext* context,
                                             const v1::LeaseListRequest* /*request*/,
                                             v1::LeaseListResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = Caller::Identify(auth_, *context);
  absl::Status allowed = caller.ok() ? caller->CheckSignedIn() : caller.status();
  if (!allowed.ok()) {
    reactor->Finish(ToWire(allowed));
    return reactor;
  }
  absl::StatusOr<std::vector<uint64_t>> ids = keeper_->List(
      caller->IsRoot() ? std::nullopt : std::optional<std::string>(caller->who().user));
  if (ids.ok()) {
    // Bounded: the response stays far below the 4 MiB message limit.
    ids->resize(std::min<size_t>(ids->size(), 100000));
    response->mutable_ids()->Assign(ids->begin(), ids->end());
  }
  reactor->Finish(ToWire(ids.status()));
  return reactor;
}

}  // namespace tessera::server
